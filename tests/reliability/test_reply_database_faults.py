"""A streaming AI reply while PostgreSQL restarts under it, on a private server.

The reply streams from the local scripted model server (claw/tests/conftest.py)
for about 8 s; PostgreSQL (the private cluster of test_database_faults) is
stopped for a few seconds in the middle, while the worker saves the partial
text every 0.2 s. The reply must end DONE with every streamed piece and its
record SUCCESS: the text streamed during the outage is kept, not regenerated.
"""

from __future__ import annotations

import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from claw import conversations
from claw.models import Message
from claw.tests.conftest import ScriptedServer, sse
from tasks_app.models import TaskRecord
from tests.reliability.conftest import QUEUE, report
from tests.reliability.test_database_faults import (
    NAME,
    PORT,
    PrivatePostgres,
    database,
    with_reconnect,
)

pytestmark = [pytest.mark.reliability, pytest.mark.worker]
PIECES = [f"piece{n} " for n in range(32)]
OUTAGE = 6  # seconds PostgreSQL is down, mid-stream


def message_state(pk: int):
    return with_reconnect(
        lambda: Message.objects.values_list("status", "content").get(pk=pk)
    )


def reply_record():
    return with_reconnect(
        lambda: (
            TaskRecord.objects.filter(name="claw.generate_ai_response")
            .values_list("state", "error", "attempts")
            .first()
        )
    )


def test_a_streaming_reply_rides_out_a_postgresql_restart_and_keeps_its_text(
    transactional_db, redis_db, fault_worker
):
    server = PrivatePostgres().init()
    try:
        server.load_schema_of(connection.settings_dict)
        url = f"postgres://postgres@127.0.0.1:{PORT}/{NAME}"
        with ScriptedServer() as llm, database("127.0.0.1", PORT, NAME):
            llm.script.append(sse(*PIECES, pause=0.25))
            fault_worker(
                "-c",
                "1",
                env={
                    "DATABASE_URL": url,
                    "LLM_PROVIDER": "openai",
                    "LLM_BASE_URL": llm.url + "/v1",
                    "LLM_MODEL": "test-model",
                    "AI_RATE_LIMIT": "",
                    "AI_REPLY_DEADLINE": "40",
                    "AI_STREAM_SAVE_INTERVAL": "0.2",
                },
            )
            user = get_user_model().objects.create_user("pg-reply", password="x-1")
            conversation = conversations.create_conversation(user)
            reply = conversations.post_message(
                conversation, "What is CLAW?", queue=QUEUE
            ).assistant_message
            deadline = time.monotonic() + 30
            while "piece3 " not in (message_state(reply.pk) or ("", ""))[1]:
                assert time.monotonic() < deadline, "the reply did not start streaming"
                time.sleep(0.1)

            server.stop()
            stopped_at = time.monotonic()
            time.sleep(OUTAGE)
            server.start()
            connection.close()

            status, content, record = "", "", ("", "", 0)
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline:
                status, content = message_state(reply.pk) or ("", "")
                record = reply_record() or record
                if record[0] in TaskRecord.FINAL_STATES:
                    break
                time.sleep(0.5)
            recovered = time.monotonic() - stopped_at
            requests = len(llm.requests)
    finally:
        server.remove()

    report(
        "reply during a postgresql restart",
        status=status,
        characters=len(content),
        record=record,
        model_requests=requests,
        seconds_to_done=recovered,
    )
    assert status == Message.Status.DONE
    assert content == "".join(PIECES)  # the text streamed across the outage is kept
    assert record[0] == TaskRecord.State.SUCCESS
    assert requests == 1  # not regenerated from scratch
