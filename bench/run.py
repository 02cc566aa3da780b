"""Run every bench/bench_*.py scenario, print one Markdown table, write RESULTS.md.

    python -m bench.run [--quick] [--only NAME ...] [--no-write]

Each module exposes ``run(quick: bool = False) -> list[dict]`` returning rows with
the keys scenario, metric, value, unit, target, note.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
COLUMNS = ("scenario", "metric", "value", "unit", "target", "note")


def discover() -> list[str]:
    return sorted(p.stem[len("bench_") :] for p in BENCH_DIR.glob("bench_*.py"))


def _cmd(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except Exception as exc:  # a missing tool is reported, not fatal
        return f"unknown ({exc.__class__.__name__})"


def machine() -> dict[str, str]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "postgres": _cmd(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show server_version"]
        ),
        "redis": _cmd(["redis-server", "--version"]),
        "load average at start": " / ".join(f"{x:.2f}" for x in load),
    }


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt(row.get(c)).replace("|", "\\|") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_module(name: str, quick: bool) -> list[dict]:
    started = time.monotonic()
    try:
        module = importlib.import_module(f"bench.bench_{name}")
        rows = list(module.run(quick=quick))
    except Exception as exc:
        traceback.print_exc()
        rows = [
            {
                "scenario": name,
                "metric": "error",
                "value": "",
                "unit": "",
                "target": "",
                "note": f"{exc.__class__.__name__}: {exc}"[:200],
            }
        ]
    elapsed = time.monotonic() - started
    print(f"# {name}: {len(rows)} rows in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return rows


def write_results(path: Path, info: dict, rows: list[dict], args, notes: str) -> None:
    head = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench.run"
        + (" --quick" if args.quick else "")
        + "`). Measurements, not tests. Targets are from issue 9.",
        "",
        "## Machine",
        "",
    ]
    head += [f"- {k}: {v}" for k, v in info.items()]
    body = ["", "## Results", "", table(rows), ""]
    if notes:
        body += ["", notes.strip(), ""]
    # `make chaos` writes its own section (bench/chaos.py): keep it
    old = path.read_text() if path.exists() else ""
    chaos = old.partition("\n## CHAOS\n")[2]
    if chaos:
        body += ["## CHAOS", chaos.rstrip(), ""]
    path.write_text("\n".join(head + body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="do not write RESULTS")
    parser.add_argument("--output", default=str(BENCH_DIR / "RESULTS.md"))
    args = parser.parse_args(argv)
    # SIGTERM (a timeout, Ctrl-C from a supervisor) unwinds like an exception, so
    # every scenario's `with Worker(...)` stops its worker instead of leaving it
    # consuming the bench Redis database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    names = discover()
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {names}")
        names = [n for n in names if n in args.only]
    info = machine()
    rows: list[dict] = []
    for name in names:
        rows.extend(run_module(name, args.quick))
    print(table(rows), flush=True)
    if not args.no_write:
        notes_file = BENCH_DIR / "NOTES.md"
        notes = notes_file.read_text() if notes_file.exists() else ""
        write_results(Path(args.output), info, rows, args, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
