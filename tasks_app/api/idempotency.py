"""The Idempotency-Key header of submission endpoints.

The same key from the same user returns the first submission's task, never a
second one. Every submission view calls submit_once(), which does in one
transaction:

    key = key_from(request)
    previous = claim(owner, key, task_name)
    if previous is not None:
        return replay(previous)          # nothing written
    return submit(key)                   # domain rows, services.submit(..., key)

claim() serialises requests that carry the same (user, key), so two concurrent
retries of one request cannot both write their domain rows before one of them
loses on the record's unique constraint.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.db.models import Model
from drf_spectacular.utils import OpenApiParameter
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.throttling import ScopedRateThrottle, UserRateThrottle

from tasks_app.models import TaskRecord

HEADER = "Idempotency-Key"
# Submission actions also count against API_THROTTLE_SUBMIT (their viewset's
# throttle_scope "submit"): @action(..., **SUBMIT).
SUBMIT = {"throttle_classes": [UserRateThrottle, ScopedRateThrottle]}
# Printable ASCII without spaces, as Stripe and the IETF draft use (UUIDs fit).
KEY_PATTERN = r"^[\x21-\x7e]{1,200}$"

PARAMETER = OpenApiParameter(
    HEADER,
    str,
    OpenApiParameter.HEADER,
    required=False,
    pattern=KEY_PATTERN,
    description="Optional. Repeating a request with the same key returns the task "
    "of the first request instead of submitting a second one.",
)


class KeyReused(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This Idempotency-Key was already used for a different request."
    default_code = "idempotency_key_reused"


def key_from(request) -> str | None:
    """The request's key, or None; 400 naming the header when it is malformed."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if not re.fullmatch(KEY_PATTERN, value):
        raise ValidationError(
            {HEADER: "Must be 1 to 200 printable ASCII characters without spaces."}
        )
    return value


def claim(user, key: str | None, task_name: str) -> TaskRecord | None:
    """The record an earlier request with this key created, or None.

    Must run inside transaction.atomic(): on PostgreSQL it takes a transaction-level
    advisory lock on (user, key) that is held until commit. SQLite needs none, since
    its IMMEDIATE transactions already serialise writers.
    """
    if key is None:
        return None
    lock(user, key)
    previous = TaskRecord.objects.filter(owner=user, idempotency_key=key).first()
    if previous is not None and previous.name != task_name:
        raise KeyReused()
    return previous


def lock(user, key: str) -> None:
    """Serialise, until commit, the requests of user that carry key (claim()).

    Must run inside transaction.atomic(): on PostgreSQL it takes a
    transaction-level advisory lock on (user, key). SQLite needs none, since its
    IMMEDIATE transactions already serialise writers.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("idempotency.claim() must run inside transaction.atomic()")
    if connection.vendor == "postgresql":
        digest = hashlib.blake2b(f"{user.pk}:{key}".encode(), digest_size=8).digest()
        lock_id = int.from_bytes(digest, "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def item_prefix(key: str) -> str:
    """The start of the idempotency keys stored on the records of a request that
    submits many under one key (POST /documents/bulk/: the prefix, a digest of
    the request, the index): the request's key is hashed, so any key of up to
    200 characters leaves room for the rest."""
    return "many:" + hashlib.blake2b(key.encode(), digest_size=16).hexdigest() + ":"


def submit_once(
    request,
    task_name: str,
    submit: Callable[[str | None], Any],
    *,
    owner=None,
    replay: Callable[[TaskRecord], Any] | None = None,
) -> Any:
    """submit(key) under the request's Idempotency-Key, or, for a key used before
    by owner (default: the caller) for task_name, replay(the first request's
    record) (default: that record), with nothing written."""
    key = key_from(request)
    with transaction.atomic():
        previous = claim(owner or request.user, key, task_name)
        if previous is not None:
            return replay(previous) if replay else previous
        return submit(key)


def same_request(
    previous: TaskRecord,
    target: Model,
    *,
    args: list | None = None,
    kwargs: dict | None = None,
) -> TaskRecord:
    """previous, if the request that first used its key was for the same target
    (and, where given, the same arguments); otherwise KeyReused. claim() only
    compares the task, so a replay that sends nothing else to compare would hand
    back another object's task."""
    same = (
        previous.content_type_id == ContentType.objects.get_for_model(target).pk
        and previous.object_id == target.pk
        and (args is None or previous.args == args)
        and (kwargs is None or previous.kwargs == kwargs)
    )
    if not same:
        raise KeyReused(
            f"This {HEADER} ({previous.idempotency_key}) was already used for a "
            "different request."
        )
    return previous


def invalid(exc: Exception) -> ValidationError:
    """400 naming the field of a domain's "field: message" input error."""
    field, _, message = str(exc).partition(": ")
    return ValidationError({field: message} if message else str(exc))
