"""A small stand-in for the ``tensorrt`` module (TensorRT 10 Python API), for tests on machines without it.

It records every builder and execution call in ``module.CALLS`` and really runs: a "plan" is the parsed ONNX
file's bytes behind a header (the version and the optimisation profile), and ``execute_async_v3`` runs that
graph through onnxruntime on the CPU, reading inputs from and writing outputs to the raw addresses given to
``set_tensor_address`` (CPU torch tensors' ``data_ptr()``). So shapes, addresses, dtypes, profile bounds and
chunking are exercised for real; only the GPU kernels are not. ``module.OUTPUT_NOISE`` adds Gaussian noise to
every output, to make the parity gate fail on purpose. The API surface follows TensorRT 10.x (10.3 by
default); ``make_fake_tensorrt("11.0.0")`` drops ``BuilderFlag.FP16/INT8`` as TensorRT 11 does.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FAKETRT1"

_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT64": np.int64, "INT32": np.int32}
_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 7: "INT64", 6: "INT32"}


def make_fake_tensorrt(version: str = "10.3.0") -> types.ModuleType:
    """A fresh fake ``tensorrt`` module with its own ``CALLS`` list."""
    m = types.ModuleType("tensorrt")
    m.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # find_spec() callers (torch._dynamo) need one
    m.__version__ = version
    m.CALLS = []
    m.OUTPUT_NOISE = 0.0
    calls: list[tuple[Any, ...]] = m.CALLS
    major = int(version.split(".")[0])

    class Severity(enum.IntEnum):
        ERROR = 1
        WARNING = 2
        INFO = 3

    class Logger:
        ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

        def __init__(self, severity: Severity = Severity.WARNING) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 0

    flags = {"TF32": 1}
    if major < 11:
        flags.update(FP16=2, INT8=3)
    BuilderFlag = enum.IntEnum("BuilderFlag", flags)

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class TensorIOMode(enum.IntEnum):
        INPUT = 1
        OUTPUT = 2

    DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "INT64": 8})

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.onnx: bytes | None = None

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors: list[str] = []

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            data = Path(path).read_bytes()
            import onnx

            try:
                onnx.checker.check_model(onnx.load_from_string(data))
            except Exception as exc:  # the fake reports any problem as a parser error
                self.errors.append(f"fake parser: {exc}")
                return False
            self.network.onnx = data
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> memoryview:
            return memoryview(self.blob + b"t")

    class BuilderConfig:
        def __init__(self) -> None:
            self.profiles: list[OptimizationProfile] = []
            self.flags = {BuilderFlag.TF32}
            self.cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag))
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            calls.append(("clear_flag", flag))
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            calls.append(("add_optimization_profile",))
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            calls.append(("create_timing_cache", len(blob)))
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", ignore_mismatch))
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.cache is not None
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            calls.append(("Builder",))

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> memoryview | None:
            calls.append(("build_serialized_network",))
            if network.onnx is None or len(config.profiles) != 1:
                return None
            header = json.dumps({"version": version, "profile": config.profiles[0].shapes,
                                 "strongly_typed": bool(network.flags & 1),
                                 "flags": sorted(int(f) for f in config.flags)}).encode()
            return memoryview(MAGIC + len(header).to_bytes(8, "little") + header + network.onnx)

    class Engine:
        def __init__(self, header: dict[str, Any], onnx_bytes: bytes) -> None:
            import onnxruntime as ort

            self.header = header
            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.names = [i.name for i in self.session.get_inputs()] + [o.name for o in self.session.get_outputs()]
            self.n_inputs = len(self.session.get_inputs())
            import onnx

            graph = onnx.load_from_string(onnx_bytes).graph
            self.types = {v.name: _ONNX_TYPES[v.type.tensor_type.elem_type] for v in [*graph.input, *graph.output]}
            self.out_dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}

        @property
        def num_io_tensors(self) -> int:
            return len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return TensorIOMode.INPUT if self.names.index(name) < self.n_inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(DataType, self.types[name])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [tuple(s) for s in self.header["profile"][name]]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: Any) -> bool:
            calls.append(("set_input_shape", name, tuple(shape)))
            lo, _, hi = self.engine.header["profile"][name]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
            if ok:
                self.shapes[name] = tuple(int(s) for s in shape)
            return ok

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            first = self.shapes[self.engine.names[0]]
            return (first[0], *self.engine.out_dims[name][1:])

        def set_tensor_address(self, name: str, address: int) -> bool:
            calls.append(("set_tensor_address", name, int(address)))
            self.addresses[name] = int(address)
            return True

        def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
            dtype = np.dtype(_NP[self.engine.types[name]])
            n = int(np.prod(shape)) * dtype.itemsize
            buf = (ctypes.c_char * n).from_address(self.addresses[name])
            return np.frombuffer(buf, dtype=dtype).reshape(shape)

        def execute_async_v3(self, stream_handle: int) -> bool:
            calls.append(("execute_async_v3", int(stream_handle)))
            inputs = self.engine.names[: self.engine.n_inputs]
            feeds = {n: self._array(n, self.shapes[n]).copy() for n in inputs}
            outs = self.engine.session.run(None, feeds)
            for name, value in zip(self.engine.names[self.engine.n_inputs:], outs, strict=True):
                if m.OUTPUT_NOISE:
                    value = value + np.random.default_rng(0).normal(0, m.OUTPUT_NOISE, value.shape)
                target = self._array(name, self.get_tensor_shape(name))
                target[...] = value.astype(target.dtype)
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            data = bytes(plan)
            if not data.startswith(MAGIC):
                return None
            size = int.from_bytes(data[8:16], "little")
            header = json.loads(data[16 : 16 + size])
            if header["version"] != version:
                return None  # a plan from another TensorRT version does not deserialise
            return Engine(header, data[16 + size :])

    for obj in (Logger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, TensorIOMode, DataType,
                OnnxParser, Builder, Runtime):
        setattr(m, obj.__name__, obj)
    return m
