"""Faults of the broker: untrusted messages, data loss, Redis down."""

from __future__ import annotations

import os
import uuid

import pytest
from kombu import Exchange, Queue

from claw.celery import app
from tasks_app.models import TaskRecord
from tests.harness import wait_for
from tests.reliability.conftest import (
    QUEUE,
    effects,
    report,
    submit_effect,
    wait_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
State = TaskRecord.State


class Exploit:
    """Unpickling this makes a directory: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickle_message_pushed_into_a_queue_is_refused_and_runs_no_code(
    transactional_db, redis_db, fault_worker, tmp_path
):
    import pickle

    worker = fault_worker("-c", "1")
    offset = worker.log_path.stat().st_size  # logs are appended across runs

    def new_log() -> str:
        return worker.log_path.read_bytes()[offset:].decode(errors="replace")

    marker = tmp_path / "pickle-ran"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(
        ((Exploit(str(marker)),), {}, {"callbacks": None, "errbacks": None})
    )
    exchange = Exchange(QUEUE, type="direct")
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange=exchange,
            routing_key=QUEUE,
            declare=[Queue(QUEUE, exchange, routing_key=QUEUE)],
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={
                "lang": "py",
                "task": "tests.effect",
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
            },
        )
    # A normal task behind it proves the worker went past the pickle message.
    after = submit_effect("after-pickle")
    wait_final([after], 30)
    wait_for(
        lambda: (
            "pickle" in worker.tail(200).lower()
            or "disallowed" in worker.tail(200).lower()
        ),
        10,
        message="the worker to log the refusal",
    )

    refusal = [
        line
        for line in new_log().splitlines()
        if "untrusted content of type pickle" in line
    ]
    report("pickle message", code_ran=marker.exists(), refusal=refusal[:1])
    assert not marker.exists()
    assert effects() == {"after-pickle": 1}
    assert not TaskRecord.objects.filter(celery_id=task_id, state=State.SUCCESS)
