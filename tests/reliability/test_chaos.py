"""The chaos run of `make chaos`, bounded: 60 s of mixed load with 3 faults.

bench/chaos.py starts its own PostgreSQL and Redis (never the shared ones), a
gunicorn, the local model server and two workers, injects the faults from a
seeded schedule (here: one of each kind but the 30 s outage, which
test_database_outage_tasks covers, in a 60 s run), lets the ledger settle and
counts. Every accepted submission must end done, each effect once, no 500.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.common import ROOT

# pytest-timeout's 300 s default (pyproject) would cut the settle below short:
# the run's own bound is the subprocess timeout, 660 s.
pytestmark = [pytest.mark.reliability, pytest.mark.timeout(720)]


def test_a_minute_of_load_with_three_faults_loses_and_doubles_nothing(tmp_path):
    env = {
        **os.environ,
        "BENCH_ARTIFACTS": str(tmp_path),
        # Long enough for the slowest recovery path: a chord member killed
        # between its SUCCESS commit and its chord part-return leaves its
        # document job waiting until the health check re-queues it, after the
        # job task's hard time limit (JOBS_DOCUMENT_TIME_LIMIT, 300 s). The wait
        # ends as soon as everything is final, so it costs only in that case.
        "CHAOS_SETTLE_SECONDS": "360",
    }
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--seconds", "60", "--faults", "3"]
        + ["--seed", "7", "--kinds", "kill_child,kill_main,redis_restart,pg_restart"]
        + ["--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=660,
    )
    lines = run.stdout.strip().splitlines()
    assert lines, run.stderr[-2000:]
    result = json.loads(lines[-1])
    print("\n" + "\n".join(lines[:-1]))

    assert len(result["faults"]) == 3, result["fault_errors"]
    assert sum(result["accepted"].values()) > 50
    assert result["lost"] == 0, result["left"]
    assert result["duplicated"] == 0, result["duplicated_by_kind"]
    assert result["not_terminal"] == 0, result["left"]
    assert result["ended_failed"] == 0, result["failed_detail"]
    assert result["answers_5xx"] == 0, result["failures"]
    assert run.returncode == 0
