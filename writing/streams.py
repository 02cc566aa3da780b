"""A writing job's progress live: GET /api/v1/jobs/{job_id}/stream/.

The job's task and its sections' tasks, as their TaskEvents are written
(tasks_app.live.tree_source), each event carrying the job_id; ends with the job's
task. Also the events stream's ?job= parameter.
"""

from __future__ import annotations

import re

from django.db.models import Q
from django.http import Http404

from tasks_app import live
from writing.api.views import JobViewSet
from writing.jobs import URL_JOB_ID
from writing.models import WritingJob


async def job_stream(request, job_id: str):
    job, after, error = await live.open_for_events(request, JobViewSet, job_id=job_id)
    if error is not None:
        return error
    if job.task_id is None:  # not submitted (a job is created with its task)
        return live.json_error(409, "detail", "The job has no task to follow.")
    record = await live.in_thread(lambda: job.task)
    return await live.task_response(live.tree_source(record, after, job_id=job.job_id))


def job_scope(user, value: str) -> live.Scope:
    if not re.fullmatch(URL_JOB_ID, value):
        raise ValueError("Must be a job_id.")
    found = WritingJob.objects.filter(job_id=value)
    if not user.is_staff or found.filter(owner=user).exists():
        found = found.filter(owner=user)
    job = found.exclude(task=None).first()
    if job is None:
        raise Http404
    root = job.task_id
    return live.Scope(
        records=Q(pk=root) | Q(root_id=root) | Q(parent_id=root),
        items=lambda item: False,
    )


live.register_scope("job", job_scope)
live.document(
    "/api/v1/jobs/{job_id}/stream/",
    summary="Follow a writing job and its sections (Server-Sent Events)",
    tag="jobs",
    parameters=[
        {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
        },
        {
            "name": "owner",
            "in": "query",
            "required": False,
            "schema": {"type": "integer"},
            "description": "Staff: the owner's user id, as for GET /jobs/{job_id}/.",
        },
    ],
)
