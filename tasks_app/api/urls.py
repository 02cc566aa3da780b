from django.urls import path
from rest_framework.routers import DefaultRouter

from tasks_app.api import views

router = DefaultRouter(trailing_slash=True)
router.register("tasks", views.TaskRecordViewSet, basename="taskrecord")

urlpatterns = [
    path("workers/", views.WorkersView.as_view(), name="workers"),
    path(
        "workers/pool/restart/", views.PoolRestartView.as_view(), name="workers-restart"
    ),
    path("workers/shutdown/", views.ShutdownView.as_view(), name="workers-shutdown"),
    *router.urls,
]
