"""Triton implementations of the kernels, one file per kernel, imported only when a tensor lives on CUDA.

The functions here take the same tensors as their PyTorch references beside them in `edgeclip.kernels`.
On a machine without CUDA they still run under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the test suite checks their arithmetic everywhere.
"""
