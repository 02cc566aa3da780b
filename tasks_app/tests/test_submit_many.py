"""tasks_app.services.submit_many with real PostgreSQL and Redis: records and
events written in bulk, published after commit in one pipelined round, run once
each by a real worker; a rolled-back caller leaves and sends nothing;
idempotency keys per item; the same checks as submit."""

from __future__ import annotations

import base64
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tasks_app import broker_inspect, services
from tasks_app.models import TaskEvent, TaskRecord
from tests.harness import wait_for

State = TaskRecord.State
# A queue no test worker consumes: what submit_many sent stays there to be read.
PARKED = "bulk_parked"


@pytest.fixture
def user(db):
    return get_user_model().objects.create_user("alice", password="pw-12345678")


def adds(n: int, **extra) -> list[services.Submission]:
    return [services.Submission("tests.add", args=[i, 1], **extra) for i in range(n)]


def queued(queue: str) -> set[str]:
    ids = broker_inspect.queued_task_ids([queue])
    assert ids is not None, "Redis must be readable"
    return ids


@pytest.mark.worker
def test_submit_many_writes_every_record_and_event_and_each_runs_once(
    transactional_db, celery_worker
):
    with transaction.atomic():
        records = services.submit_many(adds(40))

    assert [r.args for r in records] == [[i, 1] for i in range(40)]
    ids = [r.pk for r in records]

    def finished():
        return TaskRecord.objects.filter(pk__in=ids, state=State.SUCCESS).count() == 40

    wait_for(finished, 60, interval=0.2, message="40 bulk-submitted tasks to succeed")
    events = TaskEvent.objects.filter(record_id__in=ids)
    for kind in ("queued", "started", "succeeded"):
        assert events.filter(kind=kind).count() == 40, kind
    assert events.count() == 120  # no task ran twice


@pytest.mark.django_db(transaction=True)
def test_records_and_events_are_one_statement_and_messages_go_after_commit(
    redis_broker,
):
    with (
        transaction.atomic(),
        CaptureQueriesContext(connection) as queries,
    ):
        records = services.submit_many(adds(300, queue=PARKED))
        inserts = [q for q in queries if "INSERT" in q["sql"]]
        assert len(inserts) == 1  # records and their events together
        # nothing leaves before the commit
        assert not {r.celery_id for r in records} & queued(PARKED)

    assert {r.celery_id for r in records} <= queued(PARKED)
    assert (
        TaskEvent.objects.filter(
            record_id__in=[r.pk for r in records], kind="queued"
        ).count()
        == 300
    )


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_caller_leaves_nothing_and_publishes_nothing(redis_broker):
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        records = services.submit_many(adds(20, queue=PARKED))
        raise Rollback

    assert not TaskRecord.objects.exists()
    assert not TaskEvent.objects.exists()
    assert not {r.celery_id for r in records} & queued(PARKED)


@pytest.mark.django_db
def test_idempotency_keys_are_honoured_per_item(
    user, django_capture_on_commit_callbacks
):
    first = [
        services.Submission("tests.add", args=[1, 1], owner=user, idempotency_key="a"),
        services.Submission("tests.add", args=[2, 2], owner=user),
        services.Submission("tests.add", args=[3, 3], owner=user, idempotency_key="a"),
    ]
    with (
        mock.patch.object(services, "publish_many") as publish_many,
        django_capture_on_commit_callbacks(execute=True),
    ):
        records = services.submit_many(first)
    assert records[0].pk == records[2].pk  # the same key twice: one record
    assert TaskRecord.objects.count() == 2
    assert [r.pk for r, _ in publish_many.call_args.args[0]] == [
        records[0].pk,
        records[1].pk,
    ]

    replay = [
        services.Submission("tests.add", args=[9, 9], owner=user, idempotency_key="a"),
        services.Submission("tests.add", args=[4, 4], owner=user, idempotency_key="b"),
    ]
    with (
        mock.patch.object(services, "publish_many") as publish_many,
        django_capture_on_commit_callbacks(execute=True),
    ):
        again = services.submit_many(replay)
    assert again[0].pk == records[0].pk
    assert TaskRecord.objects.count() == 3  # only "b" is new
    assert [r.pk for r, _ in publish_many.call_args.args[0]] == [again[1].pk]


@pytest.mark.django_db
def test_a_key_taken_by_a_concurrent_request_returns_its_record(user):
    """The race submit handles with a savepoint: a record with the key commits
    between the lookup and the INSERT (ON CONFLICT DO NOTHING skips ours)."""
    other = services.submit("tests.add", args=[0, 0], owner=user, idempotency_key="k")
    with mock.patch.object(services, "_existing_records", side_effect=[{}, {
        (user.pk, "k"): other}]):  # fmt: skip
        records = services.submit_many(
            [
                services.Submission(
                    "tests.add", args=[1, 1], owner=user, idempotency_key="k"
                ),
                services.Submission("tests.add", args=[2, 2], owner=user),
            ]
        )
    assert records[0].pk == other.pk
    assert TaskRecord.objects.count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad, error",
    [
        ({"name": "tests.nope"}, services.UnknownTask),
        ({"priority": 12}, ValueError),
        ({"countdown": 10**9}, services.DelayTooLong),
    ],
)
def test_a_bad_item_is_refused_by_index_before_anything_is_written(bad, error):
    items = adds(3)
    for field, value in bad.items():
        setattr(items[1], field, value)
    with pytest.raises(error) as raised:
        services.submit_many(items)
    assert raised.value.index == 1
    assert not TaskRecord.objects.exists()


@pytest.mark.django_db
def test_many_records_keep_their_order_and_targets(user):
    """More values than PostgreSQL's 65,535 parameters of a statement: each
    column travels as one array."""
    items = [
        services.Submission("tests.add", args=[i, 0], owner=user, target=user)
        for i in range(3000)
    ]
    records = services.submit_many(items)
    assert [r.args[0] for r in records] == list(range(3000))
    assert TaskRecord.objects.filter(object_id=user.pk, owner=user).count() == 3000
    assert TaskEvent.objects.filter(kind="queued").count() == 3000


@pytest.mark.django_db(transaction=True)
def test_retry_many_publishes_every_new_attempt_after_commit(redis_broker):
    records = services.submit_many(adds(5, queue=PARKED))
    for record in records:
        TaskRecord.objects.filter(pk=record.pk).update(state=State.FAILURE)
    TaskRecord.objects.filter(pk=records[0].pk).update(state=State.SUCCESS)

    retried, refused = services.retry_many(TaskRecord.objects.order_by("pk"))

    assert [r.pk for r in retried] == [r.pk for r in records[1:]]
    assert [r.pk for r, _ in refused] == [records[0].pk]
    assert {r.celery_id for r in retried} <= queued(PARKED)
    assert all(
        r.celery_id != old.celery_id
        for r, old in zip(retried, records[1:], strict=True)
    )


@pytest.mark.django_db
def test_record_members_writes_a_fan_outs_members_in_one_statement(user):
    from claw.celery import registered_tasks

    parent = services.submit("tests.add", args=[0, 0], owner=user)
    add = registered_tasks()["tests.add"]
    members = [
        add.si(i, 1).set(queue=PARKED, headers=services.target_header(user))
        for i in range(3)
    ]

    with CaptureQueriesContext(connection) as queries:
        services.record_members(members, parent_id=parent.celery_id, group_id="g-1")

    assert len([q for q in queries if "INSERT" in q["sql"]]) == 1
    records = list(TaskRecord.objects.filter(parent=parent).order_by("pk"))
    assert [r.args for r in records] == [[0, 1], [1, 1], [2, 1]]
    for sig, record in zip(members, records, strict=True):
        assert sig.options["task_id"] == record.celery_id
        assert sig.options["headers"]["claw_record"] == record.pk
        assert (record.group_id, record.queue, record.object_id) == (
            "g-1",
            PARKED,
            user.pk,
        )
        assert record.root_id == parent.pk
        assert list(record.events.values_list("kind", flat=True)) == ["queued"]
    # Celery's publishing of the chord then writes no second record
    sig = members[0]
    services.record_published(
        {**sig.options["headers"], "id": sig.options["task_id"], "task": sig.task},
        ((0, 1), {}, {}),
        PARKED,
        {},
    )
    assert TaskRecord.objects.filter(parent=parent).count() == 3


def _mixed_items(user) -> list[services.Submission]:
    """Items of several shapes (queue, priority, ETA, compression) and records whose
    columns vary in different ways (owner, target, key, arguments)."""
    big = "x" * 5000  # over CLAW_COMPRESS_ABOVE_BYTES: a gzip-compressed shape
    return [
        services.Submission("tests.add", args=[1, 2], queue=PARKED),
        services.Submission("tests.add", args=[3, 4], queue=PARKED, owner=user),
        services.Submission("tests.add", kwargs={"x": 5, "y": 6}, queue=PARKED),
        services.Submission("tests.add", args=[7, 8], queue=PARKED, priority=9),
        services.Submission("tests.add", args=[9, 0], queue=PARKED, priority=9),
        services.Submission("tests.add", args=[1, 1], queue=PARKED, countdown=600),
        services.Submission("tests.add", args=[2, 2], queue=PARKED, countdown=900),
        services.Submission("tests.add", args=[big, ""], queue=PARKED),
        services.Submission("tests.add", args=[big, "y"], queue=PARKED),
        services.Submission("tests.add", args=[5, 5], queue=PARKED, target=user),
        services.Submission(
            "tests.add", args=[6, 6], queue=PARKED, owner=user, idempotency_key="k"
        ),
        services.Submission("tests.add", args=[{"token": "s3cret"}, 1], queue=PARKED),
    ]


def _parked_messages(client) -> dict[str, dict]:
    """The messages waiting in PARKED (every priority list), by task id, decoded
    as a worker would: headers, properties and body."""
    from kombu.compression import decompress
    from kombu.serialization import loads
    from kombu.utils.encoding import bytes_to_str
    from kombu.utils.json import loads as json_loads

    found = {}
    for key in broker_inspect.redis_queue_keys([PARKED]):
        for raw in client.lrange(key, 0, -1):
            message = json_loads(bytes_to_str(raw))
            properties = message["properties"]
            body = base64.b64decode(message["body"])
            if message["headers"].get("compression"):
                body = decompress(body, message["headers"]["compression"])
            message["body"] = loads(body, message["content-type"], "utf-8")
            message["queue_key"] = key
            found[message["headers"]["id"]] = message
            assert properties["correlation_id"] == message["headers"]["id"]
    return found


# What differs between two messages of one record published twice: its delivery
# tag (kombu's, per publish) and when the ETA's countdown was turned into a time.
PER_PUBLISH = {"delivery_tag"}


def _comparable(message: dict, record: TaskRecord) -> dict:
    """A message with the record's own identity taken out, so that the message of
    one record and of its copy compare equal when Celery built them the same way."""
    headers = dict(message["headers"])
    assert headers.pop("id") == record.celery_id
    assert headers.pop("claw_record") == record.pk
    if headers["root_id"] == record.celery_id:
        headers["root_id"] = "<own id>"
    properties = {
        k: v for k, v in message["properties"].items() if k not in PER_PUBLISH
    }
    assert properties.pop("correlation_id") == record.celery_id
    rest = {k: v for k, v in message.items() if k not in ("headers", "properties")}
    return {"headers": headers, "properties": properties, **rest}


@pytest.mark.django_db(transaction=True)
def test_bulk_messages_are_the_messages_send_task_builds_one_by_one(user, redis_broker):
    """publish_many lets send_task build only the first message of each shape and
    builds the others from it (tasks_app.publishing): every one must be the
    message send_task itself builds for that record, field for field."""
    client = redis_broker
    for key in broker_inspect.redis_queue_keys([PARKED]):
        client.delete(key)
    with transaction.atomic():
        records = services.submit_many(_mixed_items(user) * 2)
    bulk = _parked_messages(client)
    assert set(bulk) == {r.celery_id for r in records}

    for key in broker_inspect.redis_queue_keys([PARKED]):
        client.delete(key)
    one_by_one = {}
    for record in records:
        # the same record sent again, by send_task alone (services.publish)
        record.refresh_from_db()
        payload = (list(record.args), dict(record.kwargs))
        if services.has_redactions(payload):
            payload = ([{"token": "s3cret"}, 1], {})
        assert services.publish(record, payload=payload)
        one_by_one[record.celery_id] = _parked_messages(client)[record.celery_id]
        for key in broker_inspect.redis_queue_keys([PARKED]):
            client.delete(key)

    for record in records:
        built = _comparable(bulk[record.celery_id], record)
        sent = _comparable(one_by_one[record.celery_id], record)
        differ = {
            (part, k): (built[part].get(k), sent[part].get(k))
            for part in ("headers", "properties")
            for k in built[part].keys() | sent[part].keys()
            if built[part].get(k) != sent[part].get(k)
        }
        assert not differ, (record.args, differ)
        assert built == sent


@pytest.mark.django_db
def test_bulk_rows_are_the_rows_submit_writes_one_by_one(user):
    """insert_records sends a column once when every record shares its value and
    as an array otherwise: each row must be what submit() writes for its item."""
    items = _mixed_items(user)
    for item in items:
        item.idempotency_key = item.idempotency_key and item.idempotency_key + "-1"
    bulk = services.submit_many(items)
    for item in items:
        item.idempotency_key = item.idempotency_key and item.idempotency_key[:-2]
    single = [services.submit(**vars(item)) for item in items]

    ignored = {"id", "celery_id", "created_at", "updated_at", "eta", "idempotency_key"}

    def row(record):
        values = TaskRecord.objects.filter(pk=record.pk).values().get()
        return {k: v for k, v in values.items() if k not in ignored}

    for one, other in zip(bulk, single, strict=True):
        assert row(one) == row(other)
    eta_gaps = [
        abs((a.eta - b.eta).total_seconds())
        for a, b in zip(bulk, single, strict=True)
        if a.eta
    ]
    assert len(eta_gaps) == 2 and max(eta_gaps) < 30
    # equal in Python, not in JSON: each keeps its own
    mixed = services.submit_many(
        [services.Submission("tests.add", args=a, kwargs=k, queue=q)
         for a, k, q in (([1], {"x": 1.0}, "default"), ([True], {"x": 1}, PARKED))]
    )  # fmt: skip
    stored = TaskRecord.objects.filter(pk__in=[r.pk for r in mixed]).order_by("pk")
    assert [(r.args, r.kwargs, r.queue) for r in stored] == [
        ([1], {"x": 1.0}, "default"),
        ([True], {"x": 1}, PARKED),
    ]
    assert [type(r.args[0]) for r in stored] == [int, bool]
    assert [type(r.kwargs["x"]) for r in stored] == [float, int]
    events = TaskEvent.objects.filter(record__in=mixed, kind="queued")
    assert sorted(e.data["queue"] for e in events) == sorted(["default", PARKED])
    # all shared but celery_id: a batch of identical items is one array
    same = services.submit_many(adds(3))
    assert len({r.celery_id for r in same}) == 3
    assert [row(r) for r in same] == [row(services.submit("tests.add", args=[i, 1]))
                                      for i in range(3)]  # fmt: skip


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sent_events, send_task_calls", [(False, 2), (True, 5)])
def test_send_task_builds_one_message_per_shape_unless_sent_events_are_on(
    redis_broker, sent_events, send_task_calls
):
    """Two shapes (two priorities) among five messages: send_task builds the
    first of each; with task-sent events on, each message needs its own event,
    so every one goes through send_task."""
    from claw.celery import app

    items = adds(3, queue=PARKED) + adds(2, queue=PARKED, priority=9)
    before = app.conf.task_send_sent_event
    app.conf.task_send_sent_event = sent_events
    try:
        with (
            mock.patch.object(app, "send_task", wraps=app.send_task) as send_task,
            transaction.atomic(),
        ):
            records = services.submit_many(items)
    finally:
        app.conf.task_send_sent_event = before
    assert send_task.call_count == send_task_calls
    assert {r.celery_id for r in records} <= queued(PARKED)


@pytest.mark.django_db(transaction=True)
def test_single_submits_of_one_commit_all_reach_redis_but_a_rolled_back_ones(
    redis_broker,
):
    """submit() in a real transaction: its messages go out together after the
    commit (services._PublishOnCommit); one from a rolled-back savepoint never."""

    class Rollback(Exception):
        pass

    with transaction.atomic():
        kept = [
            services.submit("tests.add", args=[i, 1], queue=PARKED) for i in range(5)
        ]
        with pytest.raises(Rollback), transaction.atomic():
            dropped = services.submit("tests.add", args=[9, 9], queue=PARKED)
            raise Rollback
        kept.append(services.submit("tests.add", args=[5, 1], queue=PARKED))
        assert not {r.celery_id for r in kept} & queued(PARKED)

    assert {r.celery_id for r in kept} <= queued(PARKED)
    assert dropped.celery_id not in queued(PARKED)
    assert TaskRecord.objects.count() == 6
