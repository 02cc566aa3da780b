"""POST /api/v1/documents/bulk/: up to 500 documents in one request, each
vectorized through submit_many; all or nothing; errors by index; ownership;
Idempotency-Key comparing the whole request."""

from __future__ import annotations

import pytest

from knowledge import services
from knowledge.models import Document
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for
from tests.harness import wait_for

URL = "/api/v1/documents/bulk/"


def body(kb, n: int = 3, **extra) -> dict:
    documents = [
        {"title": f"Note {i}", "content": f"Otters hold hands while sleeping {i}."}
        for i in range(n)
    ]
    return {"knowledge_base": kb.pk, "documents": documents, **extra}


@pytest.mark.django_db
@pytest.mark.usefixtures("no_broker")
class TestBulk:
    def test_adds_every_document_with_one_vectorize_task_each(self, kb, alice):
        response = client_for(alice).post(URL, body(kb, 3), format="json")

        assert response.status_code == 201, response.json()
        rows = response.json()["documents"]
        assert [r["title"] for r in rows] == ["Note 0", "Note 1", "Note 2"]
        documents = Document.objects.filter(knowledge_base=kb)
        assert sorted(documents.values_list("id", flat=True)) == [r["id"] for r in rows]
        for row in rows:
            task = TaskRecord.objects.get(pk=row["vectorize_task"])
            assert task.name == services.VECTORIZE
            assert task.args == [row["id"]]
            assert task.object_id == row["id"]
            assert task.owner == alice

    def test_invalid_documents_are_named_by_index_and_nothing_is_written(
        self, kb, alice
    ):
        data = body(kb, 4)
        del data["documents"][1]["title"]
        data["documents"][3]["content"] = "   "

        response = client_for(alice).post(URL, data, format="json")

        assert response.status_code == 400
        errors = response.json()["documents"]
        assert set(errors) == {"1", "3"}
        assert "title" in errors["1"]
        assert "content" in errors["3"]
        assert not Document.objects.exists()
        assert not TaskRecord.objects.exists()

    def test_more_than_500_is_refused_naming_the_field(self, kb, alice):
        response = client_for(alice).post(URL, body(kb, 501), format="json")

        assert response.status_code == 400
        assert "documents" in response.json()
        assert not Document.objects.exists()

    def test_500_is_accepted(self, kb, alice):
        response = client_for(alice).post(URL, body(kb, 500), format="json")

        assert response.status_code == 201
        assert Document.objects.count() == 500
        assert TaskRecord.objects.filter(name=services.VECTORIZE).count() == 500

    def test_another_users_knowledge_base_is_a_404_and_nothing_is_written(
        self, kb, bob
    ):
        response = client_for(bob).post(URL, body(kb), format="json")

        assert response.status_code == 404
        assert "knowledge_base" in response.json()
        assert not Document.objects.exists()
        assert not TaskRecord.objects.exists()

    def test_staff_may_add_to_anyones_knowledge_base(self, kb, staff):
        response = client_for(staff).post(URL, body(kb), format="json")

        assert response.status_code == 201
        assert Document.objects.filter(knowledge_base=kb).count() == 3

    def test_anonymous_is_a_401(self, kb):
        assert client_for(None).post(URL, body(kb), format="json").status_code == 401
        assert not Document.objects.exists()

    def test_the_same_key_and_body_replays_and_another_body_is_a_409(self, kb, alice):
        api = client_for(alice)
        headers = {"HTTP_IDEMPOTENCY_KEY": "bulk-1"}

        first = api.post(URL, body(kb, 3), format="json", **headers)
        again = api.post(URL, body(kb, 3), format="json", **headers)
        other = api.post(URL, body(kb, 2), format="json", **headers)

        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert other.status_code == 409
        assert Document.objects.count() == 3
        assert TaskRecord.objects.count() == 3

    def test_a_key_used_by_another_endpoint_is_a_409(self, kb, alice):
        api = client_for(alice)
        headers = {"HTTP_IDEMPOTENCY_KEY": "k-1"}
        update = api.post(
            f"/api/v1/knowledge-bases/{kb.pk}/update/", {}, format="json", **headers
        )
        assert update.status_code == 202

        response = api.post(URL, body(kb), format="json", **headers)

        assert response.status_code == 409
        assert not Document.objects.exists()


@pytest.mark.worker
def test_bulk_documents_are_vectorized_by_a_worker(
    transactional_db, celery_worker, alice
):
    kb = services.create_knowledge_base(alice, name="Bulk")
    response = client_for(alice).post(URL, body(kb, 5), format="json")
    assert response.status_code == 201

    def ready():
        statuses = set(Document.objects.filter(knowledge_base=kb).values_list(
            "status", flat=True))  # fmt: skip
        return statuses == {Document.Status.READY}

    wait_for(ready, 90, interval=0.3, message="5 bulk documents to be vectorized")
    assert Document.objects.filter(knowledge_base=kb, chunk_count__gt=0).count() == 5
