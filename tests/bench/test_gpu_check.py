"""edgeclip/bench/gpu_check.sh without a GPU: it parses, every edgeclip command it runs exists in the CLI, and
its steps are time-limited, logged and counted (stand-in programs play Python and nvidia-smi)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeclip.cli import build_parser

SCRIPT = Path(__file__).resolve().parents[2] / "edgeclip" / "bench" / "gpu_check.sh"
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None or shutil.which("timeout") is None, reason="needs bash and timeout")


def _dry_run(tmp_path: Path) -> list[list[str]]:
    env = {**os.environ, "EDGECLIP_GPU_CHECK_DRY_RUN": "1", "OUT": str(tmp_path / "out")}
    proc = subprocess.run([BASH or "bash", str(SCRIPT)], capture_output=True, text=True, env=env, check=True)
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


@needs_bash
def test_script_parses() -> None:
    subprocess.run([BASH or "bash", "-n", str(SCRIPT)], check=True)
    assert os.access(SCRIPT, os.X_OK)


@needs_bash
def test_every_edgeclip_command_exists_in_the_cli(tmp_path: Path) -> None:
    commands = _dry_run(tmp_path)
    edgeclip = [c[c.index("edgeclip.cli") + 1:] for c in commands if "edgeclip.cli" in c]
    assert [c[:2] for c in edgeclip] == [["bench", "kernels"], ["bench", "tta"]]
    parser = build_parser()
    kernels, tta = (parser.parse_args(args) for args in edgeclip)  # exits (fails the test) on an unknown flag
    assert kernels.device == "cuda" and kernels.frames == [(1080, 1920), (480, 640)]
    assert kernels.classes == [10, 100, 1000] and kernels.out == str(tmp_path / "out")
    assert (tta.part, tta.device, tta.backend, tta.model, tta.classes) == (["speed"], "cuda", "torch", "ViT-B-16",
                                                                          [1000])
    assert tta.speed_images == 3 and tta.out == str(tmp_path / "out") and not tta.cache.startswith(str(tmp_path))
    pytest_cmd = next(c for c in commands if "pytest" in c)
    assert pytest_cmd[pytest_cmd.index("-m", pytest_cmd.index("pytest")) + 1] == "gpu"
    assert ["nvidia-smi"] in commands


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


@needs_bash
def test_steps_are_limited_logged_and_counted(tmp_path: Path) -> None:
    """A failing step and a hanging one do not stop the rest; the script then exits 1 and says which failed."""
    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "nvidia-smi", "echo 'NVIDIA H200 (stand-in)'\n")
    python = _stub(tmp_path / "python", f"""echo "$*" >> {shlex.quote(str(calls))}
case "$*" in
  "-m pytest "*) exit 3 ;;
  *"edgeclip.cli bench kernels "*) exec sleep 30 ;;
esac
cat > /dev/null
exit 0
""")
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(python),
           "OUT": str(out), "EDGECLIP_GPU_CHECK_LIMITS": "10 10 1 10"}
    proc = subprocess.run([BASH or "bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    ran = calls.read_text().splitlines()
    assert len(ran) == 4 and "bench tta --part speed" in ran[-1]  # the step after the hang still ran
    assert "FAILED: pytest-gpu (exit 3)" in proc.stdout
    assert "FAILED: bench-kernels (exit 124, timed out)" in proc.stdout
    log = (out / "gpu_check.log").read_text()
    assert "NVIDIA H200 (stand-in)" in log and "=== bench-tta-speed: exit 0" in log
