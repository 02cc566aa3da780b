"""Where a tiny task's time goes: statements, commits and CPU seconds per task.

    python -m bench.profile_tasks [--stack claw|embedded|dcr|bare] [--n 2000]
                                  [--py-spy DIR] [--setup-sql SQL]

Runs the scenario 1 loop (services.submit of tasks_app.ping in batches, a worker
with concurrency 2) once on a fresh bench database and reports numbers that do not
depend on how busy the machine is:

- SQL statements per task, by first keyword, on the submitting side and in the
  worker's pool processes (bench/counting.py), and the transactions they commit;
- PostgreSQL's own count of committed transactions in the bench database;
- CPU seconds per task of the submitter, the worker (main process and pool
  children) and the PostgreSQL backends serving the bench database.

The environment reaches the worker: CLAW_STARTED_AFTER_SECONDS=0 profiles the
path that writes STARTED before every run (bench/NOTES.md, issue 21).

With --py-spy DIR, every pool child is sampled with `py-spy record` (collapsed
stacks, DIR/child-<pid>.txt) and the submitter too (DIR/submit.txt); the top
functions by own and total time are printed; PY_SPY_IDLE=1 samples waiting
threads too (py-spy --idle), to see where a process waits rather than works.
Not a scenario of bench.run (its name does not start with bench_).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.bench_throughput import CLAW_WORKER, claw_env
from bench.common import (
    REDIS_URL,
    ROOT,
    Worker,
    base_env,
    bench_db,
    flush_redis,
    fresh_db,
    psql,
    run_py,
)

DB = "claw_bench_profile"
TICK = os.sysconf("SC_CLK_TCK")

SUBMIT = """
import json, os, sys, time, django
django.setup()
from bench import counting
from bench.bench_throughput import submit_claw
from tasks_app.models import TaskRecord
n = int(sys.argv[1])
counting.install()
cpu0, t0 = time.process_time(), time.monotonic()
submit_claw(n)
submit_cpu, submit_wall = time.process_time() - cpu0, time.monotonic() - t0
counting.dump("submit")
counting.COUNTS.clear()
done = TaskRecord.objects.filter(state="SUCCESS")
while done.count() < n and time.monotonic() - t0 < 300:
    time.sleep(0.5)
print(json.dumps({"submit_cpu": submit_cpu, "submit_wall": submit_wall,
                  "elapsed": time.monotonic() - t0, "done": done.count()}))
"""


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (and of its reaped children), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def backend_pids(db: str) -> list[int]:
    sql = f"SELECT pid FROM pg_stat_activity WHERE datname = '{bench_db(db)}'"
    return [int(p) for p in psql(sql).split()]


def xact_commit(db: str) -> int:
    sql = f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{bench_db(db)}'"
    return int(psql(sql) or 0)


def py_spy(pid: int, out: Path, seconds: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-o", str(out), "-f", "raw",
         "-r", "200", "-d", str(seconds), "--nonblocking",
         *(["--idle"] if os.environ.get("PY_SPY_IDLE") else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def top_functions(files: list[Path], limit: int = 25) -> str:
    """Own and total share of samples per function from py-spy's collapsed stacks."""
    own, total, samples = Counter(), Counter(), 0
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            samples += n
            frames = [f.split(" (")[0] + " " + _where(f) for f in stack.split(";")]
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    if not samples:
        return "(no samples)"
    lines = [f"{samples} samples", "total%  own%  function"]
    for frame, n in total.most_common(limit):
        lines.append(
            f"{100 * n / samples:5.1f} {100 * own[frame] / samples:5.1f}  {frame}"
        )
    return "\n".join(lines)


def _where(frame: str) -> str:
    # "name (path/to/file.py:123)" -> "file.py"
    inside = frame.partition(" (")[2].rstrip(")")
    return Path(inside.rsplit(":", 1)[0]).name if inside else ""


def per_task(counts: list[dict], n: int) -> dict[str, float]:
    summed = Counter()
    for c in counts:
        summed.update(c)
    return {k: round(v / n, 2) for k, v in sorted(summed.items())}


def run(stack: str, n: int, spy_dir: Path | None, setup_sql: str = "") -> dict:
    count_dir = Path(tempfile.mkdtemp(prefix="claw-bench-counts-"))
    app, extra, submit_args = "bench.counting", (), ["-c", SUBMIT, str(n)]
    if stack == "embedded":
        var = tempfile.mkdtemp(prefix="claw-bench-profile-")
        env = base_env(
            CLAW_VAR_DIR=var,
            DJANGO_SETTINGS_MODULE="claw.settings",
            DEBUG="false",
            HTTPS_ONLY="false",
        )
        run_py(["manage.py", "migrate", "--noinput", "-v", "0"], env)
    elif stack == "claw":
        flush_redis()
        env = claw_env(DB)
        extra = CLAW_WORKER
        if setup_sql:  # an experiment, e.g. "DROP INDEX taskrecord_name_trgm"
            psql(setup_sql, DB)
    else:  # the baselines, submitted by bench_throughput's own child
        flush_redis()
        env = base_env(BENCH_REDIS_URL=REDIS_URL)
        app = f"bench.{stack}_app"
        submit_args = ["-m", "bench.bench_throughput", stack, str(n)]
        if stack == "dcr":
            env.update(
                BENCH_DATABASE_URL=fresh_db(DB),
                DJANGO_SETTINGS_MODULE="bench.dcr_settings",
            )
            run_py(["-m", "django", "migrate", "--noinput", "-v", "0"], env)
    env["BENCH_COUNT_DIR"] = str(count_dir)
    on_postgres = stack in ("claw", "dcr")
    with Worker(app, env, f"profile-{stack}", extra=extra) as worker:
        worker.wait_ready()
        time.sleep(1)  # pool children finish importing
        children = child_pids(worker.proc.pid)
        spies = []
        if spy_dir:
            spy_dir.mkdir(parents=True, exist_ok=True)
            seconds = max(10, n // 25)
            spies = [py_spy(p, spy_dir / f"child-{p}.txt", seconds) for p in children]
            spies.append(py_spy(worker.proc.pid, spy_dir / "main.txt", seconds))
        commits0 = xact_commit(DB) if on_postgres else 0
        main_cpu0 = cpu_seconds(worker.proc.pid)
        worker_cpu0 = cpu_seconds(worker.proc.pid, children=True) + sum(
            cpu_seconds(p) for p in children
        )
        submit = subprocess.Popen(
            [sys.executable, *submit_args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        if spy_dir:
            time.sleep(0.5)
            spies.append(py_spy(submit.pid, spy_dir / "submit.txt", 10))
        backends = backend_pids(DB) if on_postgres else []
        pg_cpu0 = {p: cpu_seconds(p) for p in backends}
        out, _ = submit.communicate(timeout=400)
        result = json.loads(out.strip().splitlines()[-1])
        children_now = child_pids(worker.proc.pid)
        main_cpu = cpu_seconds(worker.proc.pid) - main_cpu0
        worker_cpu = (
            cpu_seconds(worker.proc.pid, children=True)
            + sum(cpu_seconds(p) for p in children_now)
            - worker_cpu0
        )
        # Backends that connected after the start are counted from zero.
        pg_cpu = sum(
            cpu_seconds(p) - pg_cpu0.get(p, 0.0)
            for p in (backend_pids(DB) if on_postgres else [])
        )
        for spy in spies:
            spy.wait(timeout=120)
    commits = xact_commit(DB) - commits0 if on_postgres else None
    result.setdefault("submit_cpu", result.get("cpu", 0.0))
    submit_counts = [json.loads(p.read_text()) for p in count_dir.glob("submit-*")]
    worker_counts = [json.loads(p.read_text()) for p in count_dir.glob("worker-*")]
    report = {
        "stack": stack,
        "n": n,
        **result,
        "tasks_per_s": round(result["done"] / result["elapsed"], 1),
        "submit_statements_per_task": per_task(submit_counts, n),
        "worker_statements_per_task": per_task(worker_counts, n),
        "postgres_commits_per_task": round(commits / n, 2) if commits else None,
        "cpu_ms_per_task": {
            "submitter": round(1000 * result["submit_cpu"] / n, 3),
            "worker": round(1000 * worker_cpu / n, 3),
            "worker main process (part of worker)": round(1000 * main_cpu / n, 3),
            "postgres backends": round(1000 * pg_cpu / n, 3),
        },
    }
    if spy_dir:
        report["py_spy_workers"] = top_functions(sorted(spy_dir.glob("child-*.txt")))
        report["py_spy_submit"] = top_functions([spy_dir / "submit.txt"])
        report["py_spy_worker_main"] = top_functions([spy_dir / "main.txt"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--stack", choices=("claw", "embedded", "dcr", "bare"), default="claw"
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--py-spy", type=Path, dest="spy_dir")
    parser.add_argument("--setup-sql", default="", help="run on the fresh database")
    args = parser.parse_args()
    report = run(args.stack, args.n, args.spy_dir, args.setup_sql)
    for key in ("py_spy_workers", "py_spy_worker_main", "py_spy_submit"):
        text = report.pop(key, None)
        if text:
            print(f"--- {key}\n{text}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
