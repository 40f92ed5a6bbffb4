"""SIGTERM during an export removes the partial bundle, as Ctrl-C does; the signal handler is put back after."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeclip.export import bundle_writer, export_bundle

TESTS = Path(__file__).resolve().parents[1]

# Exports a tiny model through the command line and stops, mid-way, after the text graph is written, until killed.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tiny_models import register_tiny_configs
    register_tiny_configs(Path(sys.argv[2]) / "configs")
    from edgeclip.export import bundle_writer
    real = bundle_writer.export_text_graph
    def slow(*args, **kwargs):
        real(*args, **kwargs)
        print("MIDWAY", flush=True)
        time.sleep(120)
    bundle_writer.export_text_graph = slow
    from edgeclip.cli import main
    sys.exit(main(["export", "--model", "test-tiny-vit", "--out", sys.argv[3], "--json"]))
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_mid_export_leaves_no_temporary_folder(tmp_path: Path) -> None:
    work, out_dir = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(TESTS), str(work), str(out_dir / "t.bundle")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the export is half done
        assert line.strip() == "MIDWAY", proc.stderr.read()
        partial = list(out_dir.iterdir())
        assert len(partial) == 1 and partial[0].name.startswith(".t.bundle.tmp-")  # the export was mid-way
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(out_dir.iterdir()) == []  # neither the partial folder nor a bundle
    assert "Traceback" not in proc.stderr.read()


def test_handler_is_installed_only_during_export_and_restored(tiny_names: list[str], tmp_path: Path,
                                                              monkeypatch) -> None:
    seen = []
    real = bundle_writer.export_text_graph

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        return real(*args, **kwargs)

    monkeypatch.setattr(bundle_writer, "export_text_graph", spy)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    export_bundle(tmp_path / "a.bundle", "test-tiny-eos")
    assert callable(seen[0]) and seen[0] not in (signal.SIG_DFL, signal.SIG_IGN)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    def app_handler(signum, frame):  # an application's own handler is left in charge
        pass

    previous = signal.signal(signal.SIGTERM, app_handler)
    try:
        export_bundle(tmp_path / "b.bundle", "test-tiny-eos")
        assert seen[1] is app_handler and signal.getsignal(signal.SIGTERM) is app_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
