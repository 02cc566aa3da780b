from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from django.views import defaults
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from tasks_app.api import errors
from tasks_app.health import health
from tasks_app.metrics import metrics_view

# Each app owns its API routes under /api/v1/ (<app>/api/urls.py).
api_v1 = [
    path("", include("tasks_app.api.urls")),
    path("", include("knowledge.api.urls")),
    path("", include("writing.api.urls")),
    path("", include("claw.api.urls")),
]

urlpatterns = [
    # The admin's "View site" leads here: where everything else is.
    path("", TemplateView.as_view(template_name="claw/index.html"), name="home"),
    path("health", health, name="health"),
    path("metrics", metrics_view, name="metrics"),
    # The chat page: plain HTML and JavaScript on the public API and its streams.
    path(
        "chat/",
        login_required(TemplateView.as_view(template_name="claw/chat.html")),
        name="chat",
    ),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="claw/login.html"),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]


# API clients get JSON, never Django's HTML pages, for errors raised before or
# outside a DRF view: a path that matches no route (such as /api/v1/tasks/0.5/),
# a body over DATA_UPLOAD_MAX_MEMORY_SIZE (413), a crash (500).
def handler400(request, exception):
    return errors.bad_request(
        request, exception, lambda: defaults.bad_request(request, exception)
    )


def handler403(request, exception):
    return errors.json_error(
        request,
        403,
        "You do not have permission to perform this action.",
        lambda: defaults.permission_denied(request, exception),
    )


def handler404(request, exception):
    return errors.json_error(
        request, 404, "Not found.", lambda: defaults.page_not_found(request, exception)
    )


def handler500(request):
    return errors.server_error(request, lambda: defaults.server_error(request))
