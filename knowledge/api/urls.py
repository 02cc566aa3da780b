from django.urls import path
from rest_framework.routers import DefaultRouter

from knowledge.api import job_views, views

router = DefaultRouter(trailing_slash=True)
router.register("knowledge-bases", views.KnowledgeBaseViewSet, basename="knowledgebase")
router.register("documents", views.DocumentViewSet, basename="document")
router.register("jobs", job_views.JobViewSet, basename="writingjob")

# The spelling of the two submissions, without the trailing slash the
# rest of the API uses; the schema lists the slashed ones only.
aliases = [
    path(
        f"jobs/{name}",
        job_views.JobViewSet.as_view({"post": name}, schema=None),
        name=f"writingjob-{name}-alias",
    )
    for name in ("outline", "document")
]

urlpatterns = [*aliases, *router.urls]
