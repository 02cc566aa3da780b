from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from tasks_app.api import streams, views

router = DefaultRouter(trailing_slash=True)
router.register("tasks", views.TaskRecordViewSet, basename="taskrecord")


def task_action(action: str, method: str):
    """A TaskRecordViewSet action as its router route builds it (with the action's
    own permissions), for the old API's paths; left out of the schema."""
    method_of = getattr(views.TaskRecordViewSet, action)
    extra = method_of.kwargs if hasattr(method_of, "mapping") else {}  # an @action
    return views.TaskRecordViewSet.as_view(
        {method: action}, basename="taskrecord", **{**extra, "schema": None}
    )


# The system CLAW replaces answered these paths, with or without a trailing slash
# (a redirect to the slashed path would drop a POST's body). Thin routes onto the
# same views; README "Old API paths" maps each to its new form.
old_paths = [
    re_path(r"^tasks/status/(?P<pk>[^/]+)/?$", task_action("retrieve", "get")),
    re_path(r"^tasks/list/?$", task_action("list", "get")),
    re_path(r"^tasks/cancel/(?P<pk>[^/]+)/?$", task_action("cancel", "post")),
    re_path(r"^tasks/retry/(?P<pk>[^/]+)/?$", task_action("retry", "post")),
    re_path(r"^tasks/stats$", task_action("stats", "get")),
    re_path(r"^tasks/workers/?$", views.WorkersView.as_view(schema=None)),
    re_path(
        r"^tasks/workers/pool/restart/?$", views.PoolRestartView.as_view(schema=None)
    ),
    re_path(r"^tasks/workers/shutdown/?$", views.ShutdownView.as_view(schema=None)),
]

urlpatterns = [
    *old_paths,
    # Server-Sent Events (async views; tasks_app.live, README "Live events")
    path("tasks/<str:pk>/stream/", streams.task_stream, name="taskrecord-stream"),
    path("events/stream/", streams.events_stream, name="events-stream"),
    path("workers/", views.WorkersView.as_view(), name="workers"),
    path(
        "workers/pool/restart/", views.PoolRestartView.as_view(), name="workers-restart"
    ),
    path("workers/shutdown/", views.ShutdownView.as_view(), name="workers-shutdown"),
    *router.urls,
]
