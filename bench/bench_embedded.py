"""Scenario 7: the tiny-task loop on the embedded stack (SQLite + filesystem broker).

CLAW_VAR_DIR is a fresh temporary folder; no DATABASE_URL or CELERY_BROKER_URL.
"""

from __future__ import annotations

import tempfile

from bench.bench_throughput import measure, rate_rows
from bench.common import base_env, run_py

FULL, QUICK = 1000, 100


def run(quick: bool = False) -> list[dict]:
    n = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="claw-bench-embedded-") as var:
        env = base_env(
            CLAW_VAR_DIR=var,
            DJANGO_SETTINGS_MODULE="claw.settings",
            DEBUG="false",
            HTTPS_ONLY="false",
        )
        run_py(["manage.py", "migrate", "--noinput", "-v", "0"], env)
        result = measure("embedded", n, env, "claw")
    rows = rate_rows("7 embedded", "CLAW SQLite + filesystem", result, ">= 100")
    rate = rows[0]["value"]
    rows[0]["note"] = ("met; " if rate >= 100 else "MISSED; ") + rows[0]["note"]
    return rows
