"""The ASGI application: the Server-Sent Events streams as async views, every
other request through Django's WSGI handler in a thread pool (a2wsgi).

Why split: under ASGI, Django runs each sync view in one thread per process
(thread-sensitive), so the REST API (sync DRF views) would be served one request
at a time. a2wsgi runs it on CLAW_WSGI_THREADS threads instead, as a threaded
WSGI server would, while each open stream is a coroutine on the event loop and
holds no thread. `make run` serves everything from this app (gunicorn with
uvicorn workers); docker-compose runs it as the `streams` service beside the
sync gunicorn `web`, with the reverse proxy sending /api/v1/**/stream/ to it
(README "Live events").
"""

import os
import re

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "claw.settings")

from a2wsgi import WSGIMiddleware
from django.conf import settings
from django.core.asgi import get_asgi_application

django_asgi = get_asgi_application()  # sets Django up first

from claw.celery import registered_tasks  # noqa: E402
from claw.wsgi import application as django_wsgi  # noqa: E402
from tasks_app import live  # noqa: E402

# Import every tasks module now: the first requests run at once on the thread
# pool, and a lazy first import raced by another thread found no task registered
# (UnknownTask, a 500 on the first submissions after a start).
registered_tasks()

STREAM_PATH = re.compile(r"^/api/v1/(?:.+/)?stream/$")
wsgi = WSGIMiddleware(django_wsgi, workers=settings.CLAW_WSGI_THREADS)


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http" and STREAM_PATH.match(scope["path"]):
        await django_asgi(scope, receive, send)
    else:
        await wsgi(scope, receive, send)


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            live.hub().start()  # subscribed before the first stream opens
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
