"""Scenarios 3 and 4: admin changelist, dashboard and API stats at 10k/100k/1M records.

Rows come from generate_series (bench/gen.py) into one bench database grown in
steps, with the rollups the dashboard and stats read rebuilt from them
(bench_monitoring.rebuild_rollups: no fold runs here); each page is requested
through Django's test Client as a logged-in superuser in a child process
(claw.settings, DEBUG off); p50 of N requests after one warm-up.
"""

from __future__ import annotations

from bench.bench_monitoring import rebuild_rollups
from bench.bench_throughput import claw_env
from bench.common import ARTIFACTS, page_times, row, run_py
from bench.gen import fill

DB = "claw_bench_admin"
SIZES_FULL, SIZES_QUICK = (10_000, 100_000, 1_000_000), (10_000,)
# The stats pages once more with their cache off, for what a cold request costs.
UNCACHED = {
    "dashboard (cache off)": "/admin/tasks_app/taskrecord/dashboard/",
    "API stats (cache off)": "/api/v1/tasks/stats/",
}
PAGES = {
    "changelist": "/admin/tasks_app/taskrecord/",
    "changelist state filter": "/admin/tasks_app/taskrecord/?state__exact=FAILURE",
    "changelist search": "/admin/tasks_app/taskrecord/?q=reports.export",
    "dashboard": "/admin/tasks_app/taskrecord/dashboard/",
    "API stats": "/api/v1/tasks/stats/",
}


def run(quick: bool = False) -> list[dict]:
    sizes = SIZES_QUICK if quick else SIZES_FULL
    env = claw_env(DB)
    env["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
    env["STATIC_ROOT"] = str(ARTIFACTS / "static")
    run_py(["manage.py", "collectstatic", "--noinput", "-v", "0"], env)
    results, have = {}, 0
    for size in sizes:
        fill(DB, size - have, tag=str(size))
        rebuild_rollups(env)
        have = size
        # the pages take tens of ms: 15 runs steady their median; the cold
        # ones take up to 2 s each at 1M
        results[size] = page_times(env, PAGES, 15, timeout=300)
        n = 5 if size >= 1_000_000 else 10
        cold = {**env, "CLAW_STATS_CACHE_SECONDS": "0"}
        results[size].update(page_times(cold, UNCACHED, n, timeout=300))
    rows = []
    base = results[sizes[0]]
    for label in [*PAGES, *UNCACHED]:
        scen = "3 admin list" if label.startswith("changelist") else "4 stats"
        target = "< 200 at 1M" if scen == "4 stats" else "< 150 at 1M, <= 1.5x 10k"
        if label in UNCACHED:
            target = ""  # informational: the pages above are what users get
        for size in sizes:
            r = results[size][label]
            metric = f"{label} p50 @ {size:,}"
            if r["status"] != 200:
                note = "not built yet" if r["status"] == 404 else f"HTTP {r['status']}"
                rows.append(row(scen, metric, "", "ms", target, note))
                continue
            note = f"max {r['max']:.0f} ms"
            if size == 1_000_000 and target:
                ok = r["p50"] < (200 if scen == "4 stats" else 150)
                if scen == "3 admin list" and base[label].get("p50"):
                    ratio = r["p50"] / base[label]["p50"]
                    ok = ok and ratio <= 1.5
                    note += f"; {ratio:.2f}x the 10k time"
                note = ("met; " if ok else "MISSED; ") + note
            rows.append(row(scen, metric, round(r["p50"], 1), "ms", target, note))
    return rows
