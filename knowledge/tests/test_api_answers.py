"""What the knowledge API answers: another user's documents in a search are a 404
naming the field, an upload's and a create's answer carry their vectorize task
and not the content just sent."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge import services
from knowledge.tests.conftest import add_ready
from tasks_app.tests.test_api import client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def test_search_with_another_users_document_ids_is_a_404_naming_the_field(
    alice, bob, kb
):
    mine = add_ready(kb, "Cats", "Cats purr when they are content.")
    theirs_kb = services.create_knowledge_base(bob, name="Bob's")
    theirs = add_ready(theirs_kb, "Dogs", "Dogs bark at the postman.")
    api = client_for(alice)
    url = f"/api/v1/knowledge-bases/{kb.pk}/search/"

    own = api.post(url, {"query": "cats", "document_ids": [mine.pk]}, format="json")
    foreign = api.post(
        url, {"query": "dogs", "document_ids": [mine.pk, theirs.pk]}, format="json"
    )
    missing = api.post(url, {"query": "x", "document_ids": [10**9]}, format="json")

    assert own.status_code == 200 and own.json()["results"]
    assert foreign.status_code == 404
    assert foreign.json() == {
        "document_ids": [f"No such document in this knowledge base: {theirs.pk}."]
    }
    assert missing.status_code == 404 and "document_ids" in missing.json()


def test_an_uploads_answer_includes_its_vectorize_task(alice, kb):
    api = client_for(alice)
    response = api.post(
        "/api/v1/documents/upload/",
        {"knowledge_base": kb.pk, "file": SimpleUploadedFile("a.txt", b"Hello.")},
        format="multipart",
    )
    quiet = api.post(
        "/api/v1/documents/upload/",
        {
            "knowledge_base": kb.pk,
            "file": SimpleUploadedFile("b.txt", b"Hi."),
            "vectorize": "false",
        },
        format="multipart",
    )

    assert response.status_code == 201, response.json()
    task = response.json()["vectorize_task"]
    assert task["name"] == "knowledge.vectorize_document"
    assert task["state"] == "PENDING"
    assert api.get(task["links"]["self"]).json()["id"] == task["id"]
    assert quiet.json()["vectorize_task"] is None


def test_creating_a_document_does_not_echo_its_content(alice, kb):
    content = "Long text. " * 10_000
    response = client_for(alice).post(
        "/api/v1/documents/",
        {"knowledge_base": kb.pk, "title": "T", "content": content},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert "content" not in body and len(response.content) < 3_000
    assert body["vectorize_task"]["name"] == "knowledge.vectorize_document"
    assert body["content_hash"]
