"""SQL statement and commit counting per process, for bench/profile_tasks.py.

`celery -A bench.counting worker` is CLAW's own app with one addition: every pool
process counts the statements it sends (by first keyword) and the transactions it
commits, and writes them to $BENCH_COUNT_DIR/<pid>.json when it exits. The
submitting process calls install() and dump() itself.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from celery import signals

from claw.celery import app  # noqa: F401  (the worker's app)

COUNTS: Counter = Counter()


def _count(execute, sql, params, many, context):
    from django.db import connection

    COUNTS[sql.split(None, 1)[0].upper()] += 1
    if not connection.in_atomic_block:
        COUNTS["(autocommit)"] += 1  # a statement outside atomic commits itself
    return execute(sql, params, many, context)


def install() -> None:
    from django.db import connection

    connection.execute_wrappers.append(_count)
    commit = connection.commit

    def counted_commit():
        COUNTS["(commit)"] += 1
        return commit()

    connection.commit = counted_commit


def dump(tag: str = "") -> None:
    folder = os.environ.get("BENCH_COUNT_DIR")
    if folder:
        path = Path(folder) / f"{tag or 'worker'}-{os.getpid()}.json"
        path.write_text(json.dumps(dict(COUNTS)))


@signals.worker_process_init.connect
def _child_started(**_):
    COUNTS.clear()
    install()


@signals.worker_process_shutdown.connect
def _child_stopping(**_):
    dump("worker")
