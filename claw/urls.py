from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from django.views import defaults
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasks_app.health import health

# Each app owns its API routes under /api/v1/ (<app>/api/urls.py).
api_v1 = [
    path("", include("tasks_app.api.urls")),
    path("", include("knowledge.api.urls")),
    path("", include("writing.api.urls")),
    path("", include("claw.api.urls")),
]

urlpatterns = [
    path("health", health, name="health"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]


def handler404(request, exception):
    # API clients get JSON, never Django's HTML page, for a path that matches
    # no route (such as /api/v1/tasks/0.5/).
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)
