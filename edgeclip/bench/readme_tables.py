"""The README's result tables, rebuilt from the committed result files (``docs/results/*.json``).

Every figure table in the README sits between two markers::

    <!-- results:NAME -->
    ...the table and a one-line source caption, generated...
    <!-- /results:NAME -->

`TABLES` maps each NAME to the result file(s) it is rendered from (a bench's JSON report, written by
`edgeclip.bench.report.write_report`: rows, command, machine, date) and to its renderer. `render_readme` replaces
the content between every pair of markers with the table rendered now; `check_readme` says which blocks differ
from what the result files give. A marker whose NAME has no renderer, a table whose result file is missing (or
records no command), and an unclosed or repeated marker are errors, never left alone. ``--strict`` also lists
the Markdown tables that sit outside any marker, i.e. figures no result file backs.

    python -m edgeclip.bench.readme_tables            # rewrite README.md from docs/results
    python -m edgeclip.bench.readme_tables --check    # exit 1 when README.md is out of date (CI)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeclip.bench.result_tables import (
    arf_claim_table,
    arf_table,
    clap_table,
    encoders_precision_table,
    encoders_table,
    kernels_select_table,
    kernels_table,
    online_memory_table,
    precision_ops_table,
    precision_table,
    pseudolabel_order_table,
    pseudolabel_table,
    session_table,
    ship_generator_table,
    ship_table,
    train_cost_table,
    train_speed_table,
    trzsl_table,
    tta_accuracy_table,
    tta_paired_table,
    tta_speed_table,
    tta_text_table,
    view_accuracy_table,
    views_accuracy_table,
    zero_shot_table,
)

log = logging.getLogger(__name__)

__all__ = [
    "RESULTS_DIR",
    "TABLES",
    "ResultsError",
    "Table",
    "check_readme",
    "load_result",
    "render_readme",
    "render_table",
    "simd_summary",
    "unbacked_tables",
]

RESULTS_DIR = Path("docs") / "results"
README = Path("README.md")
_OPEN = re.compile(r"<!-- results:(?P<name>[A-Za-z0-9_.-]+) -->")
_CLOSE = re.compile(r"<!-- /results:(?P<name>[A-Za-z0-9_.-]+) -->")


class ResultsError(ValueError):
    """The README's markers or the result files cannot give the tables (the message names what and the fix)."""


# -- result files -----------------------------------------------------------------------------------------
def load_result(results_dir: Path, stem: str) -> dict[str, Any]:
    """The result file ``results_dir/<stem>.json``, checked to be a bench report that records its command."""
    path = Path(results_dir) / f"{stem}.json"
    if not path.is_file():
        raise ResultsError(f"no result file {path}: run the bench that makes it with --out {results_dir} "
                           "(see the table's entry in edgeclip.bench.readme_tables.TABLES)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path} is not a readable JSON report: {exc}") from exc
    if not (isinstance(data, dict) and isinstance(data.get("rows"), list) and isinstance(data.get("machine"), dict)):
        raise ResultsError(f"{path} is not a bench report (it needs rows and machine)")
    if not data.get("command"):
        raise ResultsError(f"{path} records no command: produce it with the edgeclip command (which records it)")
    data["_path"] = path
    return data


def simd_summary(flags: Sequence[str] | None) -> str | None:
    """The widest vector extension in a report's ``simd`` list: "AVX-512", "AVX2, no AVX-512", "SSE4.2 only",
    "NEON (+dotprod)", "NEON + SVE"...; None when the report has no list (older reports)."""
    if not flags:
        return None
    f = set(flags)
    if "avx512f" in f:
        return "AVX-512" + (", AMX" if any(x.startswith("amx") for x in f) else "")
    if "avx2" in f:
        return "AVX2, no AVX-512"
    if "asimd" in f or "neon" in f:
        return "NEON" + (" + SVE" if "sve" in f else "") + (" (+dotprod)" if "asimddp" in f else "")
    return "SSE only" if any(x.startswith("sse") for x in f) else ", ".join(sorted(f))


def _cpu(machine: dict[str, Any]) -> str:
    model = machine.get("cpu_model") or machine.get("processor") or machine.get("machine") or "unknown CPU"
    details = [x for x in (simd_summary(machine.get("simd")),
                           f"{machine['cpu_usable']} cores usable" if machine.get("cpu_usable") else None) if x]
    return f"{model} ({'; '.join(details)})" if details else str(model)


def caption(result: dict[str, Any]) -> str:
    """``Source: docs/results/x.json: `edgeclip bench ...` on AMD EPYC (2 cores usable), 2 threads, 2025-01-01.``
    (the file is named where it is committed, `RESULTS_DIR`, wherever it was read from)."""
    m = result["machine"]
    threads = m.get("threads")
    threads_text = f", {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    date = str(m.get("timestamp") or "")[:10] or "undated"
    where = f"{RESULTS_DIR.as_posix()}/{Path(result['_path']).name}"
    return f"Source: `{where}`: `{result['command']}` on {_cpu(m)}{threads_text}, {date}."


@dataclass(frozen=True)
class Table:
    """A README table: the result files (stems under the results folder) it is rendered from, its renderer, and
    the command that produces those files (for the error message when one is missing)."""

    name: str
    files: tuple[str, ...]
    render: Callable[[list[dict[str, Any]]], str]
    command: str


TABLES: dict[str, Table] = {t.name: t for t in (
    Table("micro-zero-shot", ("zero-shot-micro",), zero_shot_table,
          "python -m edgeclip.bench.zero_shot --out docs/results"),
    Table("encoders-micro", ("encoders-micro",), encoders_table,
          "edgeclip bench encoders --threads 2 --out docs/results"),
    Table("encoders-vit-b-32", ("encoders-ViT-B-32",), encoders_table,
          "edgeclip bench encoders --model ViT-B-32 --threads 2 --out docs/results"),
    Table("tta-text-stress", ("tta-text-stress",), tta_text_table,
          "edgeclip bench tta --part text-stress --threads 2 --out docs/results"),
    Table("tta-speed", ("tta-speed",), tta_speed_table,
          "edgeclip bench tta --part speed --threads 2 --classes 10,100,1000 --speed-images 2 --out docs/results"),
    Table("tta-accuracy", ("tta-accuracy",), tta_accuracy_table,
          "edgeclip bench tta --part accuracy --n 256 --n-reference 24 --threads 1 --imbalanced-shift low_contrast "
          "--out docs/results"),
    Table("tta-accuracy-paired", ("tta-accuracy",), tta_paired_table,
          "the tta-accuracy run (same file)"),
    Table("tta-text-stress-vit-b-32", ("tta-text-stress-vit-b-32",), tta_text_table,
          "edgeclip bench tta --part text-stress --text-bundle model --text-classes 10,200 --threads 1 "
          "--suffix vit-b-32 --out docs/results"),
    Table("kernels", ("kernels-native", "kernels-x86-64-v3", "kernels-x86-64-v3-torch-avx2", "kernels-x86-64-v2"),
          kernels_table, "edgeclip bench kernels --threads 2 --frames 1080x1920,480x640 --suffix native --out "
          "docs/results (and with EDGECLIP_NATIVE_MARCH=x86-64-v3 / x86-64-v2, --suffix the same; the torch-avx2 "
          "one with ATEN_CPU_CAPABILITY=avx2 too)"),
    Table("kernels-select", ("kernels-native",), kernels_select_table, "the kernels-native run (same file)"),
    Table("view-accuracy", ("view-accuracy",), view_accuracy_table,
          "edgeclip bench view-accuracy --n 256 --threads 1 --out docs/results"),
    Table("online-memory", ("online-memory",), online_memory_table,
          "edgeclip bench online-memory --threads 1 --out docs/results"),
    Table("views-accuracy", ("views-accuracy",), views_accuracy_table,
          "edgeclip bench views --threads 1 --out docs/results"),
    Table("session", ("session",), session_table, "edgeclip bench session --out docs/results"),
    Table("pseudolabel", ("pseudolabel-micro",), pseudolabel_table,
          "edgeclip bench pseudolabel --out docs/results --tune (or --tuning-record with the tuned report)"),
    Table("pseudolabel-order", ("pseudolabel-micro",), pseudolabel_order_table, "the pseudolabel run (same file)"),
    Table("trzsl", ("trzsl-micro",), trzsl_table, "edgeclip bench trzsl --out docs/results"),
    Table("ship", ("ship-micro",), ship_table, "edgeclip bench ship --out docs/results"),
    Table("ship-generator", ("ship-micro",), ship_generator_table, "the ship run (same file)"),
    Table("precision", ("precision-micro", "precision-ViT-B-32"), precision_table,
          "edgeclip bench precision --threads 2 --out docs/results (and --model ViT-B-32)"),
    Table("precision-ops", ("precision-micro", "precision-ViT-B-32"), precision_ops_table, "the precision runs "
          "(same files)"),
    Table("encoders-precision", ("encoders-micro-fp32-int8", "encoders-ViT-B-32-fp32-int8"), encoders_precision_table,
          "edgeclip bench encoders --precision fp32,int8 --threads 2 --out docs/results (and --model ViT-B-32)"),
    Table("clap", ("clap-micro",), clap_table, "edgeclip bench clap --out docs/results"),
    Table("arf", ("arf-micro",), arf_table, "edgeclip bench arf --out docs/results"),
    Table("arf-claim", ("arf-micro",), arf_claim_table, "the arf run (same file)"),
    Table("clap-sized", ("clap-micro-sized",), clap_table, "edgeclip bench clap --classes size-colour-shape "
          "--tasks 8 --name clap-micro-sized --out docs/results"),
    Table("train-cost", ("train-cost-clap-micro", "train-cost-clap-vit-b-32-c40", "train-cost-arf-micro",
                         "train-cost-arf-vit-b-32"), train_cost_table,
          "edgeclip bench train --method clap|arf --threads 1 (see each source line)"),
    Table("train-speed", ("train-speed-micro", "train-speed-vit-b-32-c100"), train_speed_table,
          "edgeclip bench train --samples 256 --rounds 5 --suffix micro --out docs/results; edgeclip bench train "
          "--model ViT-B-32 --classes 100 --samples 64 --rounds 3 --max-time 240 --suffix vit-b-32-c100 --out "
          "docs/results"),
)}


def render_table(table: Table, results_dir: Path) -> str:
    """The Markdown between `table`'s markers: the table, a blank line, one source caption per result file."""
    try:
        results = [load_result(results_dir, stem) for stem in table.files]
    except ResultsError as exc:
        raise ResultsError(f"table {table.name!r}: {exc} (command: {table.command})") from exc
    captions = [caption(r) for r in results]
    return table.render(results) + "\n" + "\n".join(captions) + "\n"


# -- the README ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Block:
    name: str
    start: int  # offset of the first character after the opening marker's line
    end: int  # offset of the closing marker


def _blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    seen: set[str] = set()
    pos = 0
    while (m := _OPEN.search(text, pos)) is not None:
        name = m.group("name")
        if name in seen:
            raise ResultsError(f"README marks table {name!r} twice")
        seen.add(name)
        close = _CLOSE.search(text, m.end())
        if close is None or close.group("name") != name:
            raise ResultsError(f"README: <!-- results:{name} --> has no matching <!-- /results:{name} --> after it")
        nxt = _OPEN.search(text, m.end())
        if nxt is not None and nxt.start() < close.start():
            raise ResultsError(f"README: <!-- results:{nxt.group('name')} --> opens inside {name!r}")
        start = m.end() + 1 if text[m.end():m.end() + 1] == "\n" else m.end()
        blocks.append(_Block(name, start, close.start()))
        pos = close.end()
    ends = {b.end for b in blocks}
    for close in _CLOSE.finditer(text):
        if close.start() not in ends:
            raise ResultsError(f"README: <!-- /results:{close.group('name')} --> closes nothing")
    return blocks


def render_readme(text: str, results_dir: Path, tables: dict[str, Table] | None = None) -> str:
    """`text` with every marked block replaced by its table rendered from `results_dir`.

    Raises:
        ResultsError: a marker names no table in `tables` (default `TABLES`), a result file is missing, or
            the markers are malformed; every problem is named at once.
    """
    tables = TABLES if tables is None else tables
    errors: list[str] = []
    out, pos = [], 0
    for block in _blocks(text):
        table = tables.get(block.name)
        if table is None:
            errors.append(f"README marks table {block.name!r}, which edgeclip.bench.readme_tables.TABLES does not "
                          f"know (known: {', '.join(tables)})")
            continue
        try:
            body = render_table(table, results_dir)
        except ResultsError as exc:
            errors.append(str(exc))
            continue
        out += [text[pos:block.start], body]
        pos = block.end
    if errors:
        raise ResultsError("; ".join(errors))
    out.append(text[pos:])
    return "".join(out)


def check_readme(text: str, results_dir: Path, tables: dict[str, Table] | None = None) -> list[str]:
    """The names of the marked tables whose content differs from what `results_dir` gives (empty: up to date).
    Raises `ResultsError` as `render_readme` does."""
    want = render_readme(text, results_dir, tables)
    have_blocks = {b.name: text[b.start:b.end] for b in _blocks(text)}
    want_blocks = {b.name: want[b.start:b.end] for b in _blocks(want)}
    return [name for name in have_blocks if have_blocks[name] != want_blocks.get(name)]


def unbacked_tables(text: str) -> list[str]:
    """Markdown tables outside every marked block: ``"line N (under '## Heading')"`` for each."""
    inside = [(b.start, b.end) for b in _blocks(text)]
    out = []
    heading = "(top)"
    offset = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        is_head = line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|\s*$", lines[i + 1])
        if is_head and not any(a <= offset < b for a, b in inside):
            out.append(f"line {i + 1} (under '{heading}'): {line.strip()[:60]}")
        offset += len(line) + 1
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check``, verify) the README's result tables; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m edgeclip.bench.readme_tables",
                                description="rebuild the README's result tables from docs/results/*.json")
    p.add_argument("--readme", type=Path, default=README, help="the README (default README.md)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="the result files (default docs/results)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is out of date")
    p.add_argument("--strict", action="store_true", help="also fail on Markdown tables outside any marker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    text = args.readme.read_text(encoding="utf-8")
    try:
        if args.check:
            stale = check_readme(text, args.results)
            for name in stale:
                log.error("%s: table %r is out of date; run python -m edgeclip.bench.readme_tables", args.readme, name)
        else:
            new = render_readme(text, args.results)
            stale = []
            if new != text:
                _write(args.readme, new)
                log.info("rewrote the result tables of %s", args.readme)
    except ResultsError as exc:
        log.error("%s", exc)
        return 2
    loose = unbacked_tables(text) if args.strict else []
    for where in loose:
        log.error("%s: table at %s is not backed by a result file (no results marker)", args.readme, where)
    return 1 if stale or loose else 0


if __name__ == "__main__":
    raise SystemExit(main())
