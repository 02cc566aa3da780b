"""The platform's Server-Sent Events streams: a task's timeline and the events
stream (tasks_app.live does the work; these are the async views).

Async views: served by the ASGI server (claw.asgi), each open stream is a
coroutine, not a thread or a process. Authentication and lookup are the REST
views' own (live.drf_object), run in a thread before any byte is sent.
"""

from __future__ import annotations

from django.http import Http404

from tasks_app import live
from tasks_app.api.views import TaskRecordViewSet


async def task_stream(request, pk: str):
    """GET /api/v1/tasks/{id}/stream/: the record's TaskEvent timeline as
    task_queued, task_started, task_progress, ... events; ends at its final
    state."""
    record, after, error = await live.open_for_events(request, TaskRecordViewSet, pk=pk)
    if error is not None:
        return error
    return await live.task_response(live.task_source(record, after))


async def events_stream(request):
    """GET /api/v1/events/stream/: everything happening to the caller's objects
    (staff: to everyone's), narrowed by a domain's parameter (?conversation=,
    ?job=)."""
    user, error = await live.in_thread(live.drf_user, request, TaskRecordViewSet)
    if error is not None:
        return error
    try:
        after = live.parse_event_id(live.last_event_id(request))
    except ValueError as exc:
        return live.json_error(400, "after", str(exc))
    given = [p for p in live.scope_params() if p in request.GET]
    if len(given) > 1:
        return live.json_error(400, given[1], f"Give one of {', '.join(given)}.")
    scope = None
    if given:
        try:
            scope = await live.in_thread(
                live.resolve_scope, user, given[0], request.GET[given[0]]
            )
        except ValueError as exc:
            return live.json_error(400, given[0], str(exc))
        except Http404:
            return live.json_error(404, "detail", "Not found.")
    source = await live.in_thread(live.EventsSource, user, scope, after)
    return live.sse_response(source)


live.document(
    "/api/v1/tasks/{id}/stream/",
    summary="Follow a task's lifecycle events (Server-Sent Events)",
    tag="tasks",
    parameters=[
        {
            "name": "id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "The record id, or a Celery id of any of its attempts.",
        }
    ],
)
live.document(
    "/api/v1/events/stream/",
    summary="Follow everything happening to your objects (Server-Sent Events)",
    tag="events",
    parameters=[
        {
            "name": "conversation",
            "in": "query",
            "required": False,
            "schema": {"type": "integer"},
            "description": "Only this conversation's replies and tasks.",
        },
        {
            "name": "job",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "Only this writing job (its job_id) and its sections.",
        },
    ],
)
