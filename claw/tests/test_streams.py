"""The reply stream's bookkeeping (claw.streams.MessageSource) without servers:
what a client is sent for rows and chunks arriving in any order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from claw.streams import MessageSource, parse_position

RUN = datetime(2026, 1, 1, tzinfo=UTC)
RERUN = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def row(content="", status="generating", started_at=RUN, passages=()):
    return {
        "status": status,
        "content": content,
        "passages": list(passages),
        "error": "boom" if status == "failed" else "",
        "truncated": False,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "tokens_estimated": False,
        "latency_ms": 10,
        "provider": "openai",
        "model": "m",
        "started_at": started_at,
        "finished_at": None,
        "conversation_id": 1,
    }


def piece(offset, text, run=RUN):
    return {"k": "delta", "m": 7, "a": run.isoformat(), "o": offset, "t": text}


def parsed(events):
    out = []
    for block in events:
        fields = dict(line.split(": ", 1) for line in block.strip().split("\n"))
        out.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
    return out


def text_of(events):
    return "".join(d["text"] for e, d, _ in parsed(events) if e == "delta")


def source(chars=0, passages=False):
    return MessageSource(SimpleNamespace(pk=7), chars, passages)


def test_the_row_then_the_redis_stream_then_live_chunks_make_the_text_once():
    s = source()
    sent = s._replay(row("Hel"), [piece(0, "He"), piece(2, "llo")])
    sent += s.take(piece(2, "llo")) + s.take(piece(5, " world"))
    assert text_of(sent) == "Hello world"
    assert parsed(sent)[-1][2] == "11:0"


def test_a_chunk_past_the_text_sent_is_a_gap_that_only_the_row_fills():
    s = source()
    s._replay(row("Hi"), [])
    assert s.take(piece(5, "later")) is None  # read the row and Redis again
    assert s.chars == 2


def test_the_end_sends_what_the_row_has_beyond_the_chunks_then_done():
    s = source(passages=False)
    sent = s._replay(row("abc", passages=[{"n": 1}]), [piece(0, "a")])
    sent += s._replay(row("abcdef", status="done"), [])
    events = parsed(sent)
    assert [e for e, _, _ in events] == ["passages", "delta", "delta", "done"]
    assert text_of(sent) == "abcdef"
    assert events[-1][1]["usage"]["total_tokens"] == 7
    assert events[-1][2] == "6:1:end" and s.finished


def test_a_resumed_client_gets_only_the_rest():
    s = source(chars=4, passages=True)
    sent = s._replay(row("abcdefg", status="failed"), [])
    events = parsed(sent)
    assert text_of(sent) == "efg"
    assert events[-1][0] == "error" and events[-1][1]["error"] == "boom"


def test_a_rerun_of_the_reply_resets_the_client_and_ignores_old_chunks():
    s = source()
    s._replay(row("old text"), [])
    assert s.take(piece(0, "new", run=RERUN)) is None  # another run: read the row
    sent = s._replay(row("", started_at=RERUN), [piece(0, "ne", run=RERUN)])
    sent += s.take(piece(2, "w", run=RERUN))
    events = parsed(sent)
    assert events[0][0] == "reset"
    assert text_of(sent) == "new"


@pytest.mark.parametrize("value", ["x", "1", "1:2", "-1:0", "1:0:done", "１:0"])
def test_a_malformed_position_is_refused(value):
    with pytest.raises(ValueError):
        parse_position(value)


def test_positions_parse():
    assert parse_position("") == (0, False, False)
    assert parse_position("12:1") == (12, True, False)
    assert parse_position("12:0:end") == (12, False, True)
