"""The test settings, with AI replies routed to the streams suite's own worker
(whose model is the scripted server): the chat page posts messages through the
public API, which routes them by CELERY_TASK_ROUTES."""

from claw.test_settings import *  # noqa: F403

CELERY_TASK_ROUTES = {
    **CELERY_TASK_ROUTES,  # noqa: F405
    # tests.streams.conftest.QUEUE (not imported: it loads models before setup)
    "claw.generate_ai_response": {"queue": "live_llm"},
}
