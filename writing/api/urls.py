from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from writing import jobs, streams
from writing.api import views

router = DefaultRouter(trailing_slash=True)
router.register("jobs", views.JobViewSet, basename="writingjob")

# The spelling of the two submissions, without the trailing slash the
# rest of the API uses; the schema lists the slashed ones only.
aliases = [
    path(
        f"jobs/{name}",
        views.JobViewSet.as_view({"post": name}, schema=None),
        name=f"writingjob-{name}-alias",
    )
    for name in ("outline", "document")
]

urlpatterns = [
    # Server-Sent Events (an async view; writing.streams)
    re_path(
        rf"^jobs/(?P<job_id>{jobs.URL_JOB_ID})/stream/$",
        streams.job_stream,
        name="writingjob-stream",
    ),
    *aliases,
    *router.urls,
]
