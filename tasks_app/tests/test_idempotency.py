"""The Idempotency-Key helper shared by every submission endpoint."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, transaction
from rest_framework.exceptions import ValidationError
from rest_framework.test import APIRequestFactory

from tasks_app import services
from tasks_app.api import idempotency
from tasks_app.models import TaskRecord


def request_with(key: str | None):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return APIRequestFactory().post("/", **headers)


def test_a_missing_header_means_no_key():
    assert idempotency.key_from(request_with(None)) is None


@pytest.mark.parametrize("bad", ["", "has space", "x" * 201, "tab\there", "é"])
def test_a_malformed_key_is_a_400_naming_the_header(bad):
    with pytest.raises(ValidationError) as caught:
        idempotency.key_from(request_with(bad))

    assert "Idempotency-Key" in caught.value.detail


def test_claim_returns_the_earlier_record_of_the_same_user_only(
    db, django_user_model, django_capture_on_commit_callbacks
):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    with django_capture_on_commit_callbacks(execute=False):
        first = services.submit(
            "tests.add", args=[1, 2], owner=alice, idempotency_key="k-1"
        )

    with transaction.atomic():
        assert idempotency.claim(alice, "k-1", "tests.add") == first
        assert idempotency.claim(bob, "k-1", "tests.add") is None
        assert idempotency.claim(alice, "k-2", "tests.add") is None


def test_a_key_reused_for_another_task_is_a_conflict(
    db, django_user_model, django_capture_on_commit_callbacks
):
    alice = django_user_model.objects.create_user("alice")
    with django_capture_on_commit_callbacks(execute=False):
        services.submit("tests.add", args=[1, 2], owner=alice, idempotency_key="k")

    with transaction.atomic(), pytest.raises(idempotency.KeyReused):
        idempotency.claim(alice, "k", "tests.sleep")


def test_claim_outside_a_transaction_is_a_programming_error(
    transactional_db, django_user_model
):
    alice = django_user_model.objects.create_user("alice")

    with pytest.raises(RuntimeError):
        idempotency.claim(alice, "k", "tests.add")


def test_concurrent_requests_with_one_key_write_their_rows_once(
    transactional_db, django_user_model, monkeypatch
):
    # Two requests race: each writes a "domain row" (here a second, untracked
    # record standing in for a message) and then submits. Without the lock both
    # would pass the lookup and both domain rows would commit.
    monkeypatch.setattr(services, "publish", lambda record, payload=None: True)
    alice = django_user_model.objects.create_user("alice")
    barrier = threading.Barrier(2)
    results: list[int] = []

    def request():
        try:
            barrier.wait(timeout=5)
            with transaction.atomic():
                previous = idempotency.claim(alice, "same", "tests.add")
                if previous is not None:
                    results.append(previous.pk)
                    return
                services.submit("tests.sleep", args=[0], owner=alice)  # domain row
                record = services.submit(
                    "tests.add", args=[1, 2], owner=alice, idempotency_key="same"
                )
                results.append(record.pk)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=request) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert len(results) == 2 and results[0] == results[1]
    assert TaskRecord.objects.filter(name="tests.add").count() == 1
    assert TaskRecord.objects.filter(name="tests.sleep").count() == 1


def test_same_request_replays_only_for_the_same_target_and_arguments(
    db, django_user_model, django_capture_on_commit_callbacks
):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    with django_capture_on_commit_callbacks(execute=False):
        first = services.submit(
            "tests.add", args=[1, 2], owner=alice, target=alice, idempotency_key="k"
        )

    assert idempotency.same_request(first, alice) == first
    assert idempotency.same_request(first, alice, args=[1, 2]) == first
    with pytest.raises(idempotency.KeyReused, match=r"Idempotency-Key \(k\)"):
        idempotency.same_request(first, bob)
    with pytest.raises(idempotency.KeyReused):
        idempotency.same_request(first, alice, args=[1, 3])
