"""Keeps `make bench` from rotting: the runner's quick mode prints a table with rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import require_service

ROOT = Path(__file__).resolve().parent.parent


def test_bench_runner_quick_mode_prints_a_table_with_measured_rows():
    require_service("PostgreSQL", "127.0.0.1", 5432)
    require_service("Redis", "127.0.0.1", 6379)
    # Its own Redis database and bench databases: a real `make bench` may be
    # running on the defaults at the same time.
    env = {
        **os.environ,
        "BENCH_REDIS_URL": "redis://127.0.0.1:6379/5",
        "BENCH_DB_SUFFIX": "_smoke",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "throughput",
         "--no-write"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # about 70 s on a quiet machine; slow or busy CI machines need more
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # bench.run stops its workers on SIGTERM
        stdout, stderr = proc.communicate(timeout=60)
        raise AssertionError("bench.run --quick timed out: " + stderr[-2000:]) from None
    assert proc.returncode == 0, stderr[-2000:]
    lines = [line for line in stdout.splitlines() if line.startswith("| 1 ")]
    assert len(lines) >= 6, stdout + stderr[-2000:]
    assert "| error |" not in stdout, stdout
    rate = float(lines[0].split("|")[3].replace(",", ""))
    assert rate > 0


def test_retrieval_quick_mode_ranks_with_every_method():
    # In-process, no database or worker; --quick embeds 24 passages with e5-small.
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "retrieval",
         "--no-write"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| error |" not in proc.stdout, proc.stdout
    recall = {
        line.split("|")[2].strip().split(":")[0]: float(line.split("|")[3])
        for line in proc.stdout.splitlines()
        if "recall@5, all" in line
    }
    assert set(recall) >= {
        "hashing",
        "bm25",
        "e5-small",
        "hybrid e5 + bm25 (floor 0.3)",
    }
    assert all(0 <= value <= 1 for value in recall.values())
    assert recall["e5-small"] > recall["hashing"]  # paraphrases and Chinese
