"""Benchmark reports: a JSON file with the machine it ran on, and a Markdown table for humans.

A results dict (as returned by `bench_encoders`) has `rows` (a list of flat dicts) and may have
`title`, `columns` (the Markdown table's columns, in order), `tables` (further tables, each
``{"title", "columns", "rows"}``, printed after the first), `notes` (lines printed under the tables),
`command` (the command line that ran the benchmark) and `config`; everything in it goes into the JSON
unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CpuSnapshot",
    "cpu_snapshot",
    "format_value",
    "invoked_command",
    "load_average",
    "machine_info",
    "markdown_table",
    "other_cpu_load",
    "write_json",
    "write_report",
    "write_text",
]


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a timing depends on: CPU, library versions, thread counts, GPU if any, and when.

    `threads` is the thread count the benchmark asked for (None: library defaults).
    """
    import numpy as np
    import torch

    import edgeclip

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_model": _cpu_model(),
        "simd": _simd_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "edgeclip": edgeclip.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "onnxruntime": None,
        "ort_providers": [],
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_avg_1m": load_average(),
    }
    try:
        import onnxruntime as ort
    except ImportError:
        pass
    else:
        info["onnxruntime"] = ort.__version__
        info["ort_providers"] = list(ort.get_available_providers())
    return info


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), None where the OS has none.

    Other work on the machine skews CPU timings badly: a thread pool as wide as the machine stalls at
    every barrier when a core is taken (a tiny ViT went from 1.4 ms to 170 ms at 2 threads beside two
    busy processes on a 2-core VM), so reports carry it.
    """
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuSnapshot:
    """Clock, machine-wide busy CPU seconds (/proc/stat, steal included) and this process's CPU seconds."""

    wall: float
    machine_busy_s: float
    own_s: float


def cpu_snapshot() -> CpuSnapshot | None:
    """A `CpuSnapshot` now; None where /proc/stat cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    busy = sum(fields[:3]) + sum(fields[5:8])
    t = os.times()
    return CpuSnapshot(time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system)


def other_cpu_load(start: CpuSnapshot | None, end: CpuSnapshot | None) -> float | None:
    """CPU cores other processes (and the hypervisor, as steal) kept busy on average between two
    snapshots: 0.0 on an idle machine whatever this process did; None when unknown or too short."""
    if start is None or end is None or end.wall - start.wall < 0.05:
        return None
    other = (end.machine_busy_s - start.machine_busy_s) - (end.own_s - start.own_s)
    return round(max(0.0, other / (end.wall - start.wall)), 2)


def _cpu_model() -> str:
    """The CPU's model (/proc/cpuinfo ``model name``, or the decoded Arm ``CPU part``, or lscpu's), else ''."""
    from edgeclip.kernels.cpu_info import cpu_model

    return cpu_model()


def _simd_flags() -> list[str]:
    """The SIMD-relevant flags of this CPU (x86 sse4_2 … avx512_*, amx_*; Arm asimd, asimddp, i8mm, sve, …)."""
    from edgeclip.kernels.cpu_info import simd_flags

    return simd_flags()


def format_value(value: Any) -> str:
    """One table cell: floats to about three significant figures, None/NaN as '–', '|' escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–" if math.isnan(value) else str(value)
        mag = abs(value)
        if mag >= 100:
            return f"{value:.0f}"
        if mag >= 10:
            return f"{value:.1f}"
        if mag >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of `rows` restricted to `columns` (a missing key is an empty cell).

    Numeric columns are right-aligned (every non-empty value is an int or float).
    """
    if not columns:
        raise ValueError("markdown_table needs at least one column")
    cells = [[format_value(r[c]) if c in r else "" for c in columns] for r in rows]
    header = [format_value(c) for c in columns]
    numeric = [
        all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
            for r in rows if r.get(c) is not None) and any(r.get(c) is not None for r in rows)
        for c in columns
    ]
    widths = [max([len(h), 3, *(len(row[i]) for row in cells)]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(out) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                             for w, num in zip(widths, numeric, strict=True)) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in cells)]) + "\n"


def _columns(results: dict[str, Any]) -> list[str]:
    if results.get("columns"):
        return list(results["columns"])
    seen: dict[str, None] = {}
    for row in results.get("rows", []):
        for k in row:
            seen.setdefault(k, None)
    return list(seen)


def render_markdown(results: dict[str, Any], name: str, machine: dict[str, Any]) -> str:
    """The Markdown page for `results`: title, machine line, table, notes."""
    title = results.get("title") or name
    m = machine
    simd = f" ({' '.join(m['simd'])})" if m.get("simd") else ""
    cpu = (f"{m.get('cpu_model') or m.get('processor') or m.get('machine')}{simd}, "
           f"{m.get('cpu_usable')}/{m.get('cpu_count')} CPUs usable")
    gpu = f", {m['cuda_device']}" if m.get("cuda_device") else ""
    libs = f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}; load {m.get('load_avg_1m')}"
    lines = [f"# {title}", "",
             f"{cpu}{gpu}; threads={m.get('threads')}; {libs}; {m.get('platform')}; {m.get('timestamp')}", ""]
    rows = results.get("rows", [])
    cols = _columns(results)
    lines.append(markdown_table(rows, cols) if rows and cols else "_no rows_\n")
    for table in results.get("tables", []):  # further tables: {"title", "columns", "rows"}
        lines += [f"## {table['title']}", ""]
        lines.append(markdown_table(table["rows"], table["columns"]) if table["rows"] else "_no rows_\n")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    if results.get("command"):
        lines += ["", f"Command: `{results['command']}`"]
    return "\n".join(lines).rstrip("\n") + "\n"


def invoked_command(argv: Sequence[str] | None = None) -> str | None:
    """The command line that started this process, as typed, when it is an edgeclip command: ``edgeclip ...``
    (the console script, or ``python -m edgeclip.cli``) or ``python -m edgeclip.<module> ...`` (a module of the
    package run as a script); None otherwise (a library call from another program, a test run). `argv` defaults
    to `sys.argv`."""
    import shlex
    import sys

    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0]:
        return None
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in COMMAND_ENV if os.environ.get(k)]
    command = _edgeclip_command(argv)
    return None if command is None else " ".join([*env, command])


#: environment variables that change what a bench measures; a report's command shows the ones that were set
COMMAND_ENV = ("EDGECLIP_NATIVE_MARCH", "EDGECLIP_NATIVE_KERNELS", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES")


def _edgeclip_command(argv: list[str]) -> str | None:
    import shlex

    script = Path(argv[0])
    if script.name == "edgeclip":
        return shlex.join(["edgeclip", *argv[1:]])
    try:
        rel = script.resolve().relative_to(Path(__file__).resolve().parents[1])
    except ValueError:
        return None
    if rel.suffix != ".py":
        return None
    module = ".".join(("edgeclip", *rel.with_suffix("").parts))
    if module in ("edgeclip.cli", "edgeclip.__main__"):
        return shlex.join(["edgeclip", *argv[1:]])
    return shlex.join(["python", "-m", module, *argv[1:]])


def write_text(path: Path, text: str) -> None:
    """Write `text` to a new file beside `path`, flush it to disk, then rename it into place.

    The temporary file is opened in exclusive mode, so it gets the usual umask permissions.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"write_report: {type(obj).__name__} is not JSON serialisable")


def _finite(obj: Any) -> Any:
    """NaN and Inf become None (strict JSON has neither)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(results: dict[str, Any], out_dir: Path, name: str, *, command: str | None = None) -> dict[str, Path]:
    """Write `out_dir/name.json` (results plus `machine` and `command`) and `out_dir/name.md`, each atomically.

    The machine info is `results["machine"]` when the benchmark recorded it, else taken now (with
    `results["config"]["threads"]` when present). `command` is the command line that ran the benchmark as typed
    (``edgeclip bench ...``); without it `results["command"]` is kept, else `invoked_command()` (None for a
    library call). Returns `{"json": path, "md": path}`.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"report name must be a plain file stem, got {name!r}")
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = results.get("machine") or machine_info((results.get("config") or {}).get("threads"))
    command = command if command is not None else results.get("command") or invoked_command()
    results = {**results, "command": command}
    payload = {"name": name, **results, "machine": machine}
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    write_json(paths["json"], payload)
    write_text(paths["md"], render_markdown(results, name, machine))
    return paths


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as strict JSON (NaN and Inf as null; paths, numpy scalars and ``to_dict`` objects
    converted), atomically."""
    payload = _finite(json.loads(json.dumps(payload, default=_json_default)))
    write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


BUSY_CORES = 0.25
"""Above this many cores kept busy by other processes during a case, a report warns that timings are unreliable."""


def add_busy_note(rows: Sequence[dict[str, Any]], notes: list[str],
                  effect: str = "absolute times are inflated, and ratios can shift") -> None:
    """Append a note (and log a warning) when other processes kept the machine busy during any row's case."""
    busy = max((r.get("other_load") or 0.0 for r in rows), default=0.0)
    if busy > BUSY_CORES:
        notes.append(f"other processes kept up to {busy:.2f} CPU cores busy during a case (other_load; "
                     f"0 = idle machine): {effect}.")
        logging.getLogger(__name__).warning(
            "benchmark ran beside other work (up to %.2f cores busy); timings are unreliable", busy)


def positive_ints(name: str, values: Sequence[int]) -> list[int]:
    """`values` as ints, each at least 1 (ValueError naming `name` otherwise)."""
    out = [int(v) for v in values]
    if any(v < 1 for v in out):
        raise ValueError(f"{name} must be >= 1, got {out}")
    return out
