"""Scenarios 3 and 4: admin changelist, dashboard and API stats at 10k/100k/1M records.

Rows come from generate_series (bench/gen.py) into one bench database grown in
steps; each page is requested through Django's test Client as a logged-in
superuser in a child process (claw.settings, DEBUG off); p50 of N requests after
one warm-up.
"""

from __future__ import annotations

import json

from bench.bench_throughput import claw_env
from bench.common import ARTIFACTS, row, run_py
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

CHILD = """
import json, statistics, sys, time, django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
pages, n = json.loads(sys.argv[1]), int(sys.argv[2])
User = get_user_model()
user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
    "bench", "bench@example.com", "bench-password")
client = Client()
client.force_login(user)
out = {}
for label, url in pages.items():
    status = client.get(url).status_code
    if status != 200:
        out[label] = {"status": status}
        continue
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.get(url)
        times.append((time.perf_counter() - t) * 1000)
    out[label] = {"status": 200, "p50": statistics.median(times), "max": max(times)}
print(json.dumps(out))
"""


def run(quick: bool = False) -> list[dict]:
    sizes = SIZES_QUICK if quick else SIZES_FULL
    env = claw_env(DB)
    env["ALLOWED_HOSTS"] = "testserver,127.0.0.1,localhost"
    env["STATIC_ROOT"] = str(ARTIFACTS / "static")
    run_py(["manage.py", "collectstatic", "--noinput", "-v", "0"], env)
    results, have = {}, 0
    for size in sizes:
        fill(DB, size - have, tag=str(size))
        have = size
        # the pages take tens of ms: 15 runs steady their median; the cold
        # ones take up to 2 s each at 1M
        out = run_py(["-c", CHILD, json.dumps(PAGES), "15"], env, timeout=300)
        results[size] = json.loads(out.strip().splitlines()[-1])
        n = 5 if size >= 1_000_000 else 10
        cold = {**env, "CLAW_STATS_CACHE_SECONDS": "0"}
        out = run_py(["-c", CHILD, json.dumps(UNCACHED), str(n)], cold, timeout=300)
        results[size].update(json.loads(out.strip().splitlines()[-1]))
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
