"""One error shape for every API response, and JSON for every /api/ error.

DRF's own shape is kept: `{"detail": "..."}` for an error about the request as a
whole, `{"field": ["message", ...]}` for bad input. Views may raise a field
error with a bare string (`ValidationError({"state": "..."})`); it leaves here as
a list, so a client handles one shape.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.views import exception_handler as drf_exception_handler

from tasks_app.services import DelayTooLong


def one_of(values: Iterable[str]) -> str:
    """The message for a value outside a fixed set, naming the set readably."""
    return "Must be one of: " + ", ".join(str(v) for v in values) + "."


def field_errors(data):
    """DRF's `{"field": ["message"]}` for any error body a view produced."""
    if isinstance(data, list):
        return {"non_field_errors": data}
    if isinstance(data, dict):
        return {
            key: value if key == "detail" or isinstance(value, list | dict) else [value]
            for key, value in data.items()
        }
    return {"detail": data}


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        # Django's message names the model ("No TaskRecord matches the given
        # query."); an API client needs only to know it is not there.
        exc = NotFound()
    elif isinstance(exc, DelayTooLong):
        # any endpoint that passes a client's countdown or eta to submit()
        exc = ValidationError({exc.field: [str(exc).partition(": ")[2]]})
    response = drf_exception_handler(exc, context)
    if response is not None:
        response.data = field_errors(response.data)
    return response


def json_error(request, status: int, detail: str, fallback):
    """Django's error views for everything outside /api/, JSON inside it."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": detail}, status=status)
    return fallback()


def bad_request(request, exception, fallback):
    if isinstance(exception, RequestDataTooBig):
        # Django reads the body before any view can answer 413 itself.
        return json_error(
            request,
            413,
            "Request body too large: larger than DATA_UPLOAD_MAX_MEMORY_SIZE "
            "(6 x KNOWLEDGE_MAX_UPLOAD_BYTES + 64 KiB).",
            fallback,
        )
    return json_error(request, 400, "Bad request.", fallback)
