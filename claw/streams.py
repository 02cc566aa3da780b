"""A reply's text as the model writes it: GET /api/v1/messages/{id}/stream/.

Events: `passages` (the citations, once known), `delta` (each chunk as the
provider streamed it), then `done` (status, token usage, latency) or `error`;
`reset` when the reply is written again from the start (an automatic retry after
a provider error mid-reply): the client drops the text it has.
An event's id is where the client stands: "<characters received>:<passages
received, 0 or 1>", and ":end" once done or error was sent. Resuming after an id
sends exactly the rest; after ":end" the answer is 204 (an EventSource stops).

Where the text comes from: the message row (saved every AI_STREAM_SAVE_INTERVAL,
complete once the reply ends) and, on the services stack, the reply's chunks
in a bounded Redis Stream plus each chunk live (claw.conversations.stream_piece,
published from claw.replies._stream). Offsets make the three agree: a chunk is
cut to what the client has not received; a chunk past it (a gap) makes the
stream read the row and the Redis Stream again. The last word is the row's: at
the end the stream sends whatever of the final content it has not, so the text
delivered is the message's content.
"""

from __future__ import annotations

from django.db.models import Q
from django.http import Http404

from claw.api.views import MessageViewSet
from claw.conversations import delta_key
from claw.models import Conversation, Message
from tasks_app import live

FIELDS = (
    "status",
    "content",
    "passages",
    "error",
    "truncated",
    "prompt_tokens",
    "completion_tokens",
    "tokens_estimated",
    "latency_ms",
    "provider",
    "model",
    "started_at",
    "finished_at",
    "conversation_id",
)
ENDED = (Message.Status.DONE, Message.Status.FAILED)


def parse_position(value: str) -> tuple[int, bool, bool]:
    """(characters received, passages received, ended) from an event id."""
    if not value:
        return 0, False, False
    parts = value.split(":")
    if (
        len(parts) not in (2, 3)
        or not all(p.isascii() and p.isdigit() for p in parts[:2])
        or parts[1] not in ("0", "1")
        or (len(parts) == 3 and parts[2] != "end")
    ):
        raise ValueError("Must be the id of an event this stream sent, e.g. 120:1.")
    return int(parts[0]), parts[1] == "1", len(parts) == 3


class MessageSource(live.Source):
    def __init__(self, message: Message, chars: int, passages_sent: bool):
        self.id = message.pk
        self.topics = [("msg", message.pk)]
        self.chars = chars
        self.passages_sent = passages_sent
        self.finished = False
        self.run: str | None = None  # the run (started_at) the text belongs to

    def position(self, end: bool = False) -> str:
        return f"{self.chars}:{int(self.passages_sent)}" + (":end" if end else "")

    def _delta(self, text: str, at: float | None = None) -> str:
        offset = self.chars
        self.chars += len(text)
        data = {"message": self.id, "offset": offset, "text": text}
        if at is not None:
            data["at"] = at  # when the worker received the chunk (epoch seconds)
        return live.sse("delta", data, self.position())

    async def catch_up(self) -> list[str]:
        row, pieces = await live.in_thread(self._read)
        return self._replay(row, pieces)

    def _read(self) -> tuple[dict | None, list[dict]]:
        row = Message.objects.filter(pk=self.id).values(*FIELDS).first()
        # after the row: every chunk the row lacks is in the Redis Stream by now
        ended = row is None or row["status"] in ENDED
        return row, [] if ended else live.read_stream(delta_key(self.id))

    def _replay(self, row: dict | None, pieces: list[dict]) -> list[str]:
        out = []
        if row is None:
            self.finished = True
            error = {"message": self.id, "status": "deleted", "error": "Deleted."}
            return [live.sse("error", error, self.position(end=True))]
        run = live.iso(row["started_at"])
        if self.run is not None and run is not None and run != self.run:
            # The reply is being written again from the start (an automatic retry
            # after a provider error): the client drops what it has.
            self.chars, self.passages_sent = 0, False
            out.append(live.sse("reset", {"message": self.id}, self.position()))
        self.run = run or self.run
        if not self.passages_sent and row["passages"]:
            self.passages_sent = True
            data = {"message": self.id, "passages": row["passages"]}
            out.append(live.sse("passages", data, self.position()))
        text = row["content"]
        if len(text) > self.chars:
            out.append(self._delta(text[self.chars :]))
        if row["status"] in ENDED:
            self.finished = True
            out.append(self._end(row))
            return out
        for piece in sorted(pieces, key=lambda p: p["o"]):
            if piece.get("a") == self.run:
                out += self.take(piece) or []
        return out

    def _end(self, row: dict) -> str:
        data = {
            "message": self.id,
            "conversation": row["conversation_id"],
            "status": row["status"],
            "truncated": row["truncated"],
            "length": self.chars,
        }
        if row["status"] == Message.Status.FAILED:
            data["error"] = row["error"]
            return live.sse("error", data, self.position(end=True))
        data.update(
            provider=row["provider"],
            model=row["model"],
            usage={
                "prompt_tokens": row["prompt_tokens"],
                "completion_tokens": row["completion_tokens"],
                "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
                "estimated": row["tokens_estimated"],
            },
            latency_ms=row["latency_ms"],
            finished_at=live.iso(row["finished_at"]),
        )
        return live.sse("done", data, self.position(end=True))

    def take(self, item: dict) -> list[str] | None:
        if item.get("k") != "delta" or item.get("m") != self.id:
            return None  # the message changed (passages, its end): read it
        if item.get("a") != self.run:
            return None  # another run of the reply: the row says which is current
        offset, text = item["o"], item["t"]
        if offset + len(text) <= self.chars:
            return []  # sent already (replayed from the row or the Redis Stream)
        if offset > self.chars:
            return None  # a gap: the row and the Redis Stream have what is missing
        return [self._delta(text[self.chars - offset :], item.get("w"))]


async def message_stream(request, pk: int):
    message, error = await live.in_thread(
        live.drf_object, request, MessageViewSet, pk=str(pk)
    )
    if error is not None:
        return error
    try:
        chars, passages_sent, ended = parse_position(live.last_event_id(request))
    except ValueError as exc:
        return live.json_error(400, "after", str(exc))
    if ended:
        return live.ended_response()
    return live.sse_response(MessageSource(message, chars, passages_sent))


# --- the events stream: this domain's items and ?conversation= -------------------


def render_item(item: dict) -> list[str] | None:
    """A reply chunk on the events stream: no id (the events stream resumes by
    task event ids; a reply's own stream resumes its text exactly)."""
    if item.get("k") != "delta":
        return None
    data = {
        "message": item["m"],
        "conversation": item.get("c"),
        "offset": item["o"],
        "text": item["t"],
        "at": item.get("w"),
    }
    return [live.sse("delta", data)]


def conversation_scope(user, value: str) -> live.Scope:
    if not value.isascii() or not value.isdigit():
        raise ValueError("Must be a conversation id (a positive integer).")
    found = Conversation.objects.filter(pk=int(value))
    if not user.is_staff:
        found = found.filter(owner=user)
    conversation = found.first()
    if conversation is None:
        raise Http404
    tasks = Message.objects.filter(conversation=conversation).exclude(task=None)
    return live.Scope(
        records=Q(pk__in=tasks.values("task_id")),
        items=lambda item: item.get("c") == conversation.pk,
    )


live.register_scope("conversation", conversation_scope)
live.register_item_events(render_item)
live.document(
    "/api/v1/messages/{id}/stream/",
    summary="Follow a reply as it is written (Server-Sent Events)",
    tag="messages",
    parameters=[
        {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    ],
)
