"""CPU model and SIMD flags from canned /proc/cpuinfo texts (x86, Jetson Orin, big.LITTLE Arm, 32-bit Arm)."""

from __future__ import annotations

import pytest

from edgeclip.bench.report import machine_info, render_markdown
from edgeclip.kernels import cpu_info
from edgeclip.kernels.cpu_info import cpu_model, isa_signature, parse_cpuinfo, simd_flags

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c avx2 avx512f avx512dq avx512cd \
avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 popcnt avx f16c avx2 avx512f avx512dq avx512cd \
avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni
"""

EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 popcnt aes avx f16c avx2 bmi1 bmi2 sha_ni
"""

ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp \
uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd42
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp \
uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd42
"""

BIG_LITTLE = """processor\t: 0
Features\t: fp asimd asimddp i8mm bf16 sve sve2
CPU implementer\t: 0x41
CPU part\t: 0xd46

processor\t: 4
Features\t: fp asimd asimddp i8mm bf16 sve sve2
CPU implementer\t: 0x41
CPU part\t: 0xd47

processor\t: 5
CPU implementer\t: 0x41
CPU part\t: 0xd47
"""

ARMV7 = """processor\t: 0
model name\t: ARMv7 Processor rev 4 (v7l)
Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt
CPU implementer\t: 0x41
CPU part\t: 0xd03
"""

UNKNOWN_ARM = """processor\t: 0
Features\t: fp asimd
CPU implementer\t: 0xc0
CPU part\t: 0xac9
"""


def test_parse_keeps_every_processor() -> None:
    fields = parse_cpuinfo(ORIN)
    assert fields["cpu part"] == ["0xd42", "0xd42"] and fields["cpu implementer"][0] == "0x41"
    assert "asimddp" in fields["features"][0].split()


@pytest.mark.parametrize(
    ("text", "model", "simd"),
    [
        (XEON, "Intel(R) Xeon(R) Platinum 8480+",
         ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
          "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile"]),
        (EPYC_AVX2, "AMD EPYC 7B13 64-Core Processor", ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c"]),
        (ORIN, "Cortex-A78AE", ["asimd", "asimdhp", "asimddp", "fphp"]),
        (BIG_LITTLE, "Cortex-A510 + Cortex-A710", ["asimd", "asimddp", "i8mm", "bf16", "sve", "sve2"]),
        (ARMV7, "ARMv7 Processor rev 4 (v7l)", ["neon"]),
        (UNKNOWN_ARM, "Ampere part 0xac9", ["asimd"]),
        ("", "", []),
    ],
)
def test_model_and_simd_flags(text: str, model: str, simd: list[str]) -> None:
    assert cpu_model(text) == model
    assert simd_flags(text) == simd


def test_this_machine_and_the_signature(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """With the CPU file read from disk: a different flag set gives a different signature."""
    fake = tmp_path / "cpuinfo"
    fake.write_text(EPYC_AVX2)
    monkeypatch.setattr(cpu_info, "CPUINFO", fake)
    isa_signature.cache_clear()
    try:
        avx2 = isa_signature()
        assert cpu_model() == "AMD EPYC 7B13 64-Core Processor" and "avx512f" not in simd_flags()
        fake.write_text(EPYC_AVX2.replace(" avx2", " avx2 avx512f"))
        isa_signature.cache_clear()
        assert isa_signature() != avx2 and len(avx2) == 16
    finally:
        isa_signature.cache_clear()


def test_machine_info_names_the_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(ORIN)
    monkeypatch.setattr(cpu_info, "CPUINFO", fake)
    info = machine_info(2)
    assert info["cpu_model"] == "Cortex-A78AE" and info["simd"] == ["asimd", "asimdhp", "asimddp", "fphp"]
    assert isinstance(info["torch_cpu_capability"], str)
    header = render_markdown({"title": "t", "rows": [{"a": 1}]}, "t", info).splitlines()[2]
    assert header.startswith("Cortex-A78AE (asimd asimdhp asimddp fphp), ")
