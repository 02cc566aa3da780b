"""Scenario 5: cleanup_expired() over 1M expired records (and their events).

Rows are bulk-inserted with generate_series; cleanup runs in a child process and
reports its own wall time and peak RSS (ru_maxrss).
"""

from __future__ import annotations

import json

from bench.bench_throughput import claw_env
from bench.common import row, run_py
from bench.gen import fill

FULL, QUICK = 1_000_000, 50_000
DB = "claw_bench_cleanup"

CHILD = """
import json, resource, time, django
django.setup()
from tasks_app.maintenance import cleanup_expired
t = time.monotonic()
report = cleanup_expired()
elapsed = time.monotonic() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"elapsed": elapsed, "rss_kb": rss, "report": report}))
"""


def run(quick: bool = False) -> list[dict]:
    n = QUICK if quick else FULL
    env = claw_env(DB)
    fill(DB, n, days_old=400)
    out = json.loads(run_py(["-c", CHILD], env, timeout=600).strip().splitlines()[-1])
    s = "5 cleanup"
    rep = out["report"]
    mb = out["rss_kb"] / 1024
    return [
        row(s, f"cleanup_expired {n:,} records", round(out["elapsed"], 1), "s", "",
            f"deleted {rep}; {n / out['elapsed']:.0f} records/s"),
        row(s, "cleanup peak RSS", round(mb, 1), "MB", "< 200",
            "met" if mb < 200 else "MISSED"),
    ]  # fmt: skip
