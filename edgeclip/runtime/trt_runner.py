"""The ``tensorrt`` backend: TensorRT engines run on torch tensors.

`TrtRunner` deserialises a plan and runs it with the TensorRT 10 tensor API: per call
``set_input_shape`` for every input, ``set_tensor_address`` for every input and output (torch tensors on the
device, in the dtype the engine declares), then ``execute_async_v3`` on torch's current CUDA stream, so the
engine is ordered with the torch work around it and nothing is copied through the host. A batch larger than
the engine's profile maximum runs in chunks of that maximum. One execution context serves one call at a
time: calls from several threads are serialised by a lock, and on the GPU each call's work waits (an event, not
the host) for the previous call's, as the context's scratch memory is shared across streams.

With ``cuda_graph_batch`` the runner captures one CUDA graph for that exact batch (and, for the text
encoder, sequence length) on its first call -- a plain run first, as TensorRT needs one before capture --
and replays it for later calls of the same shape: the input is copied into the captured buffer and the
output cloned out. Other shapes run normally.

`TrtImageEncoder` / `TrtTextEncoder` are the `ImageEncoder` / `TextEncoder` of this backend; the text side
cuts a causal tower's prompts to ``max(eot)+1`` tokens, as the onnxruntime backend does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import torch

from edgeclip.errors import BackendError, InputError
from edgeclip.runtime.encoders import ImageEncoder, TextEncoder
from edgeclip.runtime.io_spec import EOT_INDEX, IMAGE_EMBEDS, PIXELS, TEXT_EMBEDS, TOKEN_EMBEDS

__all__ = [
    "TrtImageEncoder",
    "TrtRunner",
    "TrtTextEncoder",
    "check_tensorrt",
    "import_tensorrt",
    "torch_dtype",
    "trt_logger",
]

log = logging.getLogger(__name__)

MIN_VERSION = (10, 3)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (checked by `check_tensorrt`), or a `BackendError` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            "TensorRT is not installed: pip install 'edgeclip[gpu,trt]' on x86 with CUDA 12; on a Jetson use "
            "JetPack 6.1+ (TensorRT 10.3) and its python3-libnvinfer package (see docs/jetson.md)") from exc
    return check_tensorrt(trt)


def check_tensorrt(trt: Any) -> Any:
    """``trt`` itself when its version is at least `MIN_VERSION`; a `BackendError` otherwise (edgeclip writes
    against the TensorRT 10 API: JetPack 6.0's TensorRT 8.6 is out of scope)."""
    version = str(getattr(trt, "__version__", "0"))
    try:
        parsed = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        parsed = (0, 0)
    if parsed < MIN_VERSION:
        raise BackendError(f"TensorRT {version} is too old: edgeclip needs TensorRT >= "
                           f"{'.'.join(map(str, MIN_VERSION))} (JetPack 6.1+); JetPack 6.0 / TensorRT 8.6 is "
                           "out of scope")
    return trt


_LOGGERS: dict[int, Any] = {}


def trt_logger(trt: Any) -> Any:
    """One ``trt.Logger`` (warnings and errors) per TensorRT module for every builder and runtime: TensorRT keeps
    the first logger it is given process-wide and warns when later objects bring another."""
    key = id(trt)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[key]


def torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType``."""
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "INT32": torch.int32, "INT64": torch.int64,
             "INT8": torch.int8, "BOOL": torch.bool, "BF16": torch.bfloat16}
    for name, tdt in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return tdt
    raise BackendError(f"the engine has a tensor of TensorRT type {dtype}, which edgeclip does not bind")


class TrtRunner:
    """One deserialised engine with its execution context (see the module docstring).

    ``device``: where tensors live; a real engine needs CUDA (the CPU is accepted only so the binding logic
    can be tested against a stand-in TensorRT module). ``stream``: torch's current stream on CUDA.
    """

    def __init__(self, plan: bytes, device: str = "cuda", *, trt: Any = None,
                 cuda_graph_batch: int | None = None) -> None:
        self.trt = import_tensorrt() if trt is None else check_tensorrt(trt)
        self.device = torch.device(device)
        self.logger = trt_logger(self.trt)
        self.runtime = self.trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialise the engine (built by another TensorRT version or "
                               "for another GPU?); rebuild it with edgeclip engine build")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode_in = self.trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode_in]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch_dtype(self.trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.max_batch = min(int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.inputs)
        self.cuda_graph_batch = cuda_graph_batch
        if cuda_graph_batch is not None and self.device.type != "cuda":
            raise BackendError("a CUDA graph needs a CUDA device")
        if cuda_graph_batch is not None and not 1 <= cuda_graph_batch <= self.max_batch:
            raise InputError(f"cuda_graph_batch must be in 1..{self.max_batch} (the engine's max batch)")
        self._graph: tuple[tuple[tuple[int, ...], ...], Any, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None
        self._graph = None
        self._lock = threading.Lock()
        self._done: torch.cuda.Event | None = None  # recorded after the last enqueue (CUDA only)

    # -- one call -----------------------------------------------------------------------------------------
    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0

    def _bind(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set shapes and addresses for ``feeds`` (already on the device in the engine's dtypes); allocate
        and bind the outputs; return them."""
        for name in self.inputs:
            t = feeds[name]
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise InputError(f"the engine does not accept {name} of shape {list(t.shape)} (its profile: "
                                 f"{[list(s) for s in self.engine.get_tensor_profile_shape(name, 0)]})")
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        return outs

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self._stream()):
            raise BackendError("TensorRT execute_async_v3 failed; see TensorRT's log above")

    def _run_once(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        shapes = tuple(tuple(feeds[n].shape) for n in self.inputs)
        if self.cuda_graph_batch is not None and shapes[0][0] == self.cuda_graph_batch:
            return self._run_graph(feeds, shapes)
        outs = self._bind(feeds)
        self._execute()
        return outs

    def _run_graph(self, feeds: Mapping[str, torch.Tensor],
                   shapes: tuple[tuple[int, ...], ...]) -> dict[str, torch.Tensor]:
        if self._graph is None or self._graph[0] != shapes:
            static_in = {n: feeds[n].clone() for n in self.inputs}
            static_out = self._bind(static_in)
            self._execute()  # TensorRT needs one enqueue after a shape change before capture
            torch.cuda.current_stream(self.device).synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._execute()
            self._graph = (shapes, graph, static_in, static_out)
            log.info("captured a CUDA graph for shapes %s", shapes)
        _, graph, static_in, static_out = self._graph
        for n in self.inputs:
            static_in[n].copy_(feeds[n])
        graph.replay()
        return {n: t.clone() for n, t in static_out.items()}

    def _after_last_call(self) -> None:
        """Order this call after the last one on the GPU: the context's scratch memory is shared, so a call
        from another thread (another current stream) must not start before the previous one has finished."""
        if self._done is not None:
            torch.cuda.current_stream(self.device).wait_event(self._done)

    def _mark_done(self) -> None:
        if self.device.type == "cuda":
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(self.device))

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run on ``feeds`` (input name -> tensor, any dtype and device: cast and moved as the engine needs);
        returns output name -> tensor on the device, in the engine's dtype. Batches over the engine's max
        batch run in chunks."""
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise InputError(f"missing engine inputs {missing}")
        ready = {n: feeds[n].to(self.device, self.dtypes[n]).contiguous() for n in self.inputs}
        total = ready[self.inputs[0]].shape[0]
        with self._lock:
            self._after_last_call()
            parts = [self._run_once({n: t[i : i + self.max_batch] for n, t in ready.items()})
                     for i in range(0, total, self.max_batch)]
            self._mark_done()
        if len(parts) == 1:
            return parts[0]
        return {n: torch.cat([p[n] for p in parts]) for n in self.outputs}


class TrtImageEncoder(ImageEncoder):
    backend = "tensorrt"

    def __init__(self, runner: TrtRunner, image_size: int) -> None:
        super().__init__(image_size, str(runner.device))
        self.runner = runner

    def _run(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.runner({PIXELS.name: pixels})[IMAGE_EMBEDS.name].float()


class TrtTextEncoder(TextEncoder):
    backend = "tensorrt"

    def __init__(self, runner: TrtRunner, width: int, context: int, embed_dim: int, causal: bool) -> None:
        super().__init__(width, context, embed_dim, str(runner.device))
        self.runner = runner
        self.causal = causal

    def _run(self, token_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        if self.causal:
            token_embeds = token_embeds[:, : int(eot_index.max()) + 1]
        elif token_embeds.shape[1] != self.context:
            raise InputError(f"this text encoder is bidirectional: it needs all {self.context} tokens, "
                             f"got {token_embeds.shape[1]}")
        out = self.runner({TOKEN_EMBEDS.name: token_embeds, EOT_INDEX.name: eot_index})
        return out[TEXT_EMBEDS.name].float()
