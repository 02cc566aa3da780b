"""Keeps `make bench` from rotting: the runner's quick mode prints a table with rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import require_service

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runner_quick_mode_prints_a_table_with_measured_rows():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    out = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "throughput",
         "--no-write"],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("| 1 ")]
    assert len(lines) >= 6, out.stdout + out.stderr[-2000:]
    assert "| error |" not in out.stdout, out.stdout
    rate = float(lines[0].split("|")[3].replace(",", ""))
    assert rate > 0
