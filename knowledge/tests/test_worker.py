"""The knowledge tasks with the real session worker (PostgreSQL + Redis)."""

from __future__ import annotations

import pytest

from knowledge import search, services
from knowledge.models import Document
from tasks_app.models import TaskRecord
from tests.harness import wait_for

pytestmark = [pytest.mark.worker]
State = TaskRecord.State


def wait_final(record: TaskRecord, timeout: float = 60) -> TaskRecord:
    def final():
        record.refresh_from_db()
        return record.is_final

    wait_for(final, timeout, message=f"{record} to finish")
    return record


def test_an_added_document_is_vectorized_by_a_worker_and_found(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Handbook")
    document = services.add_document(
        kb, title="Tea", content="绿茶和红茶是最常见的两种茶叶。Green tea is popular."
    )
    record = TaskRecord.objects.get(name=services.VECTORIZE)

    wait_final(record)

    document.refresh_from_db()
    assert record.state == State.SUCCESS, record.error
    assert document.status == Document.Status.READY
    assert search.search(kb, "红茶", k=1)[0].document_id == document.pk
