"""What the CPU is and which SIMD extensions it has, read from ``/proc/cpuinfo`` (Linux, x86 and Arm).

Two users: the native view kernel keys its compiled library by the CPU's instruction-set flags (a library
built with ``-march=native`` on one CPU must never be loaded on another), and every bench report names the
CPU model and its SIMD flags, since a CPU timing means little without them.

On x86 the model is the ``model name`` line. Arm kernels often print no model name: the ``CPU implementer``
and ``CPU part`` codes are decoded instead (``0x41``/``0xd42`` is the Cortex-A78AE of Jetson Orin), and
``lscpu`` is asked as a last resort.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import shutil
import subprocess
from pathlib import Path

__all__ = ["ARM_SIMD", "X86_SIMD", "cpu_model", "isa_signature", "parse_cpuinfo", "simd_flags"]

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")

X86_SIMD: tuple[str, ...] = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
)
"""x86 flags (as /proc/cpuinfo spells them) a report lists, in this order; every ``amx_*`` flag follows."""

ARM_SIMD: tuple[str, ...] = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "fphp", "sve", "sve2", "sme")
"""Arm features (/proc/cpuinfo ``Features``) a report lists, in this order."""

# (implementer, part) -> name, as lscpu decodes them; the cores edgeclip's targets carry and their neighbours
_ARM_PARTS: dict[tuple[int, int], str] = {
    (0x41, 0xD03): "Cortex-A53", (0x41, 0xD04): "Cortex-A35", (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57", (0x41, 0xD08): "Cortex-A72", (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75", (0x41, 0xD0B): "Cortex-A76", (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77", (0x41, 0xD40): "Neoverse-V1", (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE", (0x41, 0xD44): "Cortex-X1", (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710", (0x41, 0xD48): "Cortex-X2", (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C", (0x41, 0xD4F): "Neoverse-V2", (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720", (0x4E, 0x004): "NVIDIA Carmel",
}
_ARM_VENDORS: dict[int, str] = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x48: "HiSilicon", 0x4E: "NVIDIA",
                                0x51: "Qualcomm", 0x61: "Apple", 0xC0: "Ampere"}


def parse_cpuinfo(text: str) -> dict[str, list[str]]:
    """Every ``key : value`` of a /proc/cpuinfo text, values of all processors in order (keys lower-case)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    return fields


def _read(text: str | None) -> str:
    if text is not None:
        return text
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _arm_name(implementer: str, part: str) -> str | None:
    try:
        imp, prt = int(implementer, 16), int(part, 16)
    except ValueError:
        return None
    name = _ARM_PARTS.get((imp, prt))
    if name is not None:
        return name
    return f"{_ARM_VENDORS.get(imp, f'implementer {imp:#x}')} part {prt:#05x}"


@functools.cache
def _lscpu_model() -> str:
    exe = shutil.which("lscpu")
    if exe is None:
        return ""
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    names = parse_cpuinfo(out).get("model name", [])
    return " + ".join(dict.fromkeys(n for n in names if n and n != "-"))


def cpu_model(text: str | None = None) -> str:
    """The CPU's model: ``model name`` (x86, some Arm kernels), else the decoded Arm ``CPU part`` of every kind
    of core (``"Cortex-A78AE"``, ``"Cortex-A55 + Cortex-A76"``), else lscpu's model name (only when reading
    this machine's /proc/cpuinfo), else ''."""
    fields = parse_cpuinfo(_read(text))
    names = [n for n in fields.get("model name", []) if n]
    if names:
        return " + ".join(dict.fromkeys(names))
    implementers, parts = fields.get("cpu implementer", []), fields.get("cpu part", [])
    decoded = [_arm_name(i, p) for i, p in zip(implementers, parts, strict=False)]
    if any(decoded):
        return " + ".join(dict.fromkeys(d for d in decoded if d))
    return _lscpu_model() if text is None else ""


def _all_flags(fields: dict[str, list[str]]) -> list[str]:
    """The flags of the first processor (x86 ``flags``, Arm ``features``)."""
    for key in ("flags", "features"):
        if fields.get(key):
            return fields[key][0].split()
    return []


def simd_flags(text: str | None = None) -> list[str]:
    """The SIMD-relevant flags this CPU reports (see `X86_SIMD`, `ARM_SIMD`; ``amx_*`` after the x86 ones)."""
    have = set(_all_flags(parse_cpuinfo(_read(text))))
    listed = [f for f in (*X86_SIMD, *ARM_SIMD) if f in have]
    return listed + sorted(f for f in have if f.startswith("amx"))


@functools.cache
def isa_signature() -> str:
    """A short hash of what a natively compiled library depends on: the architecture, the CPU model and every
    instruction-set flag it reports (all of them, not only `simd_flags`)."""
    fields = parse_cpuinfo(_read(None))
    parts = [platform.machine(), cpu_model(), " ".join(sorted(_all_flags(fields)))]
    if not fields:
        parts.append(platform.processor())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
