"""Writing jobs moved from the knowledge app to this one: a database that holds
jobs from before the move keeps them, and the task records that target them."""

from __future__ import annotations

import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tasks_app.models import TaskRecord
from writing import jobs
from writing.models import WritingJob

BEFORE = [("knowledge", "0002_writing_jobs"), ("writing", None)]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def old_state(executor: MigrationExecutor):
    return executor.loader.project_state(("knowledge", "0002_writing_jobs")).apps


def jobs_before_the_move(apps) -> int:
    """A document job as the knowledge app stored it, with its knowledge base,
    section and task record (whose target is the job's old content type)."""
    ContentType.objects.clear_cache()
    ContentType.objects.filter(app_label="writing").delete()
    old_type = apps.get_model("contenttypes", "ContentType").objects.get_or_create(
        app_label="knowledge", model="writingjob"
    )[0]
    User = apps.get_model("auth", "User")
    owner = User.objects.create(username="before")
    kb = apps.get_model("knowledge", "KnowledgeBase").objects.create(
        owner=owner, name="Old"
    )
    job = apps.get_model("knowledge", "WritingJob").objects.create(
        owner=owner, job_id="old-1", kind="document", state="succeeded",
        request_hash="h", title="Written before the move",
    )  # fmt: skip
    job.knowledge_bases.add(kb)
    apps.get_model("knowledge", "WritingSection").objects.create(
        job=job, position=0, heading="Intro", status="done", content="Text"
    )
    apps.get_model("tasks_app", "TaskRecord").objects.create(
        name="knowledge.generate_document_from_outline", celery_id="old-celery-id",
        state="SUCCESS", content_type_id=old_type.pk, object_id=job.pk,
    )  # fmt: skip
    return job.pk


@pytest.mark.django_db(transaction=True)
def test_jobs_stored_before_the_move_are_there_after_it():
    executor = migrate(BEFORE)
    try:
        job_pk = jobs_before_the_move(old_state(executor))
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
    ContentType.objects.clear_cache()

    job = WritingJob.objects.get(pk=job_pk)
    assert (job.job_id, job.title, job.owner.username) == (
        "old-1",
        "Written before the move",
        "before",
    )
    assert [kb.name for kb in job.knowledge_bases.all()] == ["Old"]
    assert [(s.heading, s.content) for s in job.sections.all()] == [("Intro", "Text")]
    # the task record still finds its job: the content type moved with the model
    record = TaskRecord.objects.get(celery_id="old-celery-id")
    assert record.target == job
    assert list(jobs.job_records(job)) == [record]
