from django.urls import path, re_path
from rest_framework.routers import DefaultRouter

from claw import streams
from claw.api import views

router = DefaultRouter(trailing_slash=True)
router.register("conversations", views.ConversationViewSet, basename="conversation")
router.register("messages", views.MessageViewSet, basename="message")
router.register("notifications", views.NotificationViewSet, basename="notification")

urlpatterns = [
    # Server-Sent Events (an async view; claw.streams)
    path("messages/<int:pk>/stream/", streams.message_stream, name="message-stream"),
    # Under tasks/ for clients of the old API; tasks_app's router has no route of
    # this shape (tasks/{id}/ and its named actions only), so it resolves here.
    path("tasks/ai/generate/", views.GenerateView.as_view(), name="tasks-ai-generate"),
    # ... and without the slash, which would otherwise be a 301 dropping the body
    re_path(r"^tasks/ai/generate$", views.GenerateView.as_view(schema=None)),
    *router.urls,
]
