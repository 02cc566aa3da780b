"""Query-parameter parsing for every list endpoint: one 400 shape, naming the parameter.

Django's lookups take a malformed or out-of-range value without complaint and
match nothing (or fail deep inside the database), so each parameter is checked
here first and a bad one is a 400 that names it. Each helper returns None when
the parameter is absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import ValidationError

from tasks_app.api.errors import one_of
from tasks_app.api.fields import INT64_MAX

_DIGITS = re.compile(r"[0-9]+")  # not \d: it takes digits int() may refuse


def id_param(
    request,
    name: str,
    message: str,
    *,
    minimum: int = 0,
    maximum: int | None = INT64_MAX,
) -> int | None:
    """A non-negative integer such as an id; `message` says what it must be.

    maximum=None takes any run of digits: for an `after` cursor a value past the
    id range simply matches nothing, which is the right answer.
    """
    value = request.query_params.get(name)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise ValidationError({name: message})
    # Past 19 digits it is beyond any id (and int() of thousands of digits fails).
    number = int(value) if len(value) <= 19 else INT64_MAX + 1
    if number < minimum or (maximum is not None and number > maximum):
        raise ValidationError({name: message})
    return number


def bool_param(request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value not in ("true", "false"):
        raise ValidationError({name: "Must be true or false."})
    return value == "true"


def choice_param(request, name: str, choices: Iterable[str]) -> str | None:
    value = request.query_params.get(name)
    choices = list(choices)
    if value is not None and value not in choices:
        raise ValidationError({name: one_of(choices)})
    return value


def datetime_param(request, name: str) -> datetime | None:
    """An ISO 8601 date-time as an aware UTC datetime."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValidationError({name: "Not an ISO 8601 date-time."})
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed)
    try:
        # In UTC: PostgreSQL refuses offsets past 15:59 that RFC 3339 allows.
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError({name: "Date-time out of range."}) from None
