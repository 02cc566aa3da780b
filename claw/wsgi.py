import os

from django.core.wsgi import get_wsgi_application
from django.urls import reverse

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claw.settings")
application = get_wsgi_application()
# Import every URLconf and view now, at worker start (reversing a name fills
# the whole resolver), rather than in whichever request comes first: about
# 0.8 s that a first /api/v1/workers/ or /health would otherwise wait.
reverse("health")
