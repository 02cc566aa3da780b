"""gunicorn's worker class for the ASGI app (claw.asgi): uvicorn, with a bounded
graceful shutdown.

Open Server-Sent Events streams never end by themselves; uvicorn would wait for
them at shutdown until gunicorn's graceful timeout killed the worker. Five
seconds, then the streams are cut (an EventSource reconnects, with
Last-Event-ID, to another worker).
"""

from __future__ import annotations

from uvicorn_worker import UvicornWorker


class StreamsWorker(UvicornWorker):
    CONFIG_KWARGS = {
        **UvicornWorker.CONFIG_KWARGS,
        "timeout_graceful_shutdown": 5,
    }
