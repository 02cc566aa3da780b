"""The knowledge API: ownership, documents from JSON and files, submissions, search."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge import services
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def api(alice):
    return client_for(alice)


@pytest.fixture
def doc(kb):
    return add_ready(kb, "Cats", "Cats purr when they are content. They nap a lot.")


OBJECT_ENDPOINTS = [
    ("get", "/api/v1/knowledge-bases/{kb}/"),
    ("patch", "/api/v1/knowledge-bases/{kb}/"),
    ("delete", "/api/v1/knowledge-bases/{kb}/"),
    ("post", "/api/v1/knowledge-bases/{kb}/update/"),
    ("delete", "/api/v1/knowledge-bases/{kb}/vectors/"),
    ("post", "/api/v1/knowledge-bases/{kb}/search/"),
    ("get", "/api/v1/documents/{doc}/"),
    ("patch", "/api/v1/documents/{doc}/"),
    ("delete", "/api/v1/documents/{doc}/"),
    ("post", "/api/v1/documents/{doc}/vectorize/"),
    ("delete", "/api/v1/documents/{doc}/vectors/"),
]


@pytest.mark.parametrize("method, url", OBJECT_ENDPOINTS)
def test_every_endpoint_needs_a_login_and_hides_other_users_objects(
    kb, doc, bob, method, url
):
    url = url.format(kb=kb.pk, doc=doc.pk)
    body = {"query": "cats"} if url.endswith("search/") else {}

    assert (
        getattr(client_for(None), method)(url, body, format="json").status_code == 401
    )
    response = getattr(client_for(bob), method)(url, body, format="json")
    assert response.status_code == 404
    assert KnowledgeBase.objects.filter(pk=kb.pk).exists()
    assert not TaskRecord.objects.exists()


def test_lists_show_own_objects_and_staff_see_everything(kb, doc, bob, staff):
    services.create_knowledge_base(bob, name="Bob's")

    mine = client_for(kb.owner).get("/api/v1/knowledge-bases/").json()["results"]
    assert [item["name"] for item in mine] == ["Handbook"]
    assert mine[0]["document_count"] == 1 and mine[0]["chunk_count"] == 1
    assert client_for(bob).get("/api/v1/documents/").json()["count"] == 0
    assert client_for(staff).get("/api/v1/knowledge-bases/").json()["count"] == 2


def test_create_a_knowledge_base_with_the_provider_default(api, alice):
    response = api.post(
        "/api/v1/knowledge-bases/",
        {"name": "Notes", "embedding_dimension": 128},
        format="json",
    )

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["embedding_provider"], body["embedding_model"]) == ("hashing", "v1")
    assert body["embedding_dimension"] == 128
    assert body["document_count"] == 0
    assert KnowledgeBase.objects.get(pk=body["id"]).owner == alice


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "x", "embedding_dimension": 0}, "embedding_dimension"),
        ({"name": "x", "embedding_provider": "word2vec"}, "embedding_provider"),
        ({"name": "x", "embedding_model": "m" * 201}, "embedding_model"),
        ({"name": " \n"}, "name"),
        ({"name": "\x00 "}, "name"),
        ({"name": 42}, "name"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_knowledge_base_input_names_the_field(api, body, field):
    response = api.post("/api/v1/knowledge-bases/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not KnowledgeBase.objects.exists()


def test_text_is_kept_as_sent_except_nul_characters(api):
    # PostgreSQL cannot store U+0000; the schema's limits apply to the text sent
    response = api.post(
        "/api/v1/knowledge-bases/",
        {"name": " a\x00b ", "description": "\x00"},
        format="json",
    )

    assert response.status_code == 201, response.json()
    kb = KnowledgeBase.objects.get()
    assert (kb.name, kb.description) == ("a\x00b".replace("\x00", ""), "")


def test_editing_a_knowledge_base_keeps_its_embedding_settings(api, kb):
    response = api.patch(
        f"/api/v1/knowledge-bases/{kb.pk}/",
        {"name": "Renamed", "embedding_dimension": 8},
        format="json",
    )

    assert response.status_code == 200
    kb.refresh_from_db()
    assert (kb.name, kb.embedding_dimension) == ("Renamed", 384)


def test_create_a_document_from_json_queues_its_vectorize_task(api, kb, alice):
    response = api.post(
        "/api/v1/documents/",
        {"knowledge_base": kb.pk, "title": "Tea", "content": "绿茶很好喝。"},
        format="json",
    )

    assert response.status_code == 201, response.json()
    document = Document.objects.get(pk=response.json()["id"])
    assert document.content == "绿茶很好喝。"
    record = TaskRecord.objects.get()
    assert (record.name, record.target, record.owner) == (
        "knowledge.vectorize_document",
        document,
        alice,
    )


@pytest.mark.parametrize("other", ["bob", "missing"])
def test_a_document_for_someone_elses_or_no_knowledge_base_is_a_404(kb, bob, other):
    kb_id = kb.pk if other == "bob" else kb.pk + 1000
    response = client_for(bob).post(
        "/api/v1/documents/",
        {"knowledge_base": kb_id, "title": "T", "content": "x"},
        format="json",
    )

    assert response.status_code == 404
    assert response.json() == {"knowledge_base": ["No such knowledge base."]}
    assert not Document.objects.exists()


def test_a_blank_document_is_a_400_naming_content(api, kb):
    response = api.post(
        "/api/v1/documents/",
        {"knowledge_base": kb.pk, "title": "T", "content": ""},
        format="json",
    )

    assert response.status_code == 400 and "content" in response.json()


def test_content_over_the_size_limit_is_413(api, kb, settings):
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 100
    response = api.post(
        "/api/v1/documents/",
        {"knowledge_base": kb.pk, "title": "T", "content": "字" * 40},  # 120 bytes
        format="json",
    )

    assert response.status_code == 413
    assert "content" in response.json()
    assert not Document.objects.exists()


def upload(api, kb, name: str, data: bytes, **extra):
    return api.post(
        "/api/v1/documents/upload/",
        {"knowledge_base": kb.pk, "file": SimpleUploadedFile(name, data), **extra},
        format="multipart",
    )


@pytest.mark.parametrize(
    "name, data, title, content",
    [
        (
            "notes.txt",
            "第一行。\nSecond line.".encode(),
            "notes",
            "第一行。\nSecond line.",
        ),
        ("readme.md", b"# Title\n\nBody *text*.", "Title", "Title\n\nBody text."),
        ("gbk.txt", "中文编码的文件。".encode("gb18030"), "gbk", "中文编码的文件。"),
        (
            "page.html",
            b"<html><head><title>My Page</title><style>p{}</style></head><body>"
            b"<h1>Heading</h1><p>First &amp; second.</p><script>x()</script></body>",
            "My Page",
            "Heading\nFirst & second.",
        ),
    ],
)
def test_upload_a_text_markdown_or_html_file(api, kb, name, data, title, content):
    response = upload(api, kb, name, data)

    assert response.status_code == 201, response.json()
    document = Document.objects.get(pk=response.json()["id"])
    assert (document.title, document.content, document.source) == (
        title,
        content,
        name,
    )
    assert TaskRecord.objects.filter(object_id=document.pk).exists()


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("empty.txt", b"", "empty"),
        ("blank.html", b"<html><script>only()</script></html>", "empty"),
        ("binary.txt", bytes(range(256)) * 8, "cannot be decoded"),
        ("report.pdf", b"%PDF-1.4", "Unsupported file type"),
    ],
)
def test_unreadable_uploads_are_a_400_naming_the_file(api, kb, name, data, reason):
    response = upload(api, kb, name, data)

    assert response.status_code == 400
    assert reason in str(response.json()["file"])
    assert not Document.objects.exists()


def test_an_upload_over_the_limit_is_413(api, kb, settings):
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 1000

    response = upload(api, kb, "big.txt", b"a" * 1001)

    assert response.status_code == 413
    assert "file" in response.json()


def test_upload_takes_a_title_and_can_skip_vectorizing(api, kb):
    response = upload(api, kb, "a.txt", b"Text.", title="Given", vectorize="false")

    assert response.status_code == 201
    assert response.json()["title"] == "Given"
    assert not TaskRecord.objects.exists()


def test_document_lists_leave_out_the_content_and_filter_strictly(api, kb, doc):
    items = api.get(f"/api/v1/documents/?knowledge_base={kb.pk}&status=ready").json()

    assert [item["id"] for item in items["results"]] == [doc.pk]
    assert "content" not in items["results"][0]
    assert "content" in api.get(f"/api/v1/documents/{doc.pk}/").json()
    assert api.get("/api/v1/documents/?status=done").status_code == 400
    assert api.get("/api/v1/documents/?knowledge_base=x").status_code == 400


def test_editing_a_documents_content_queues_a_re_vectorize(api, doc):
    response = api.patch(
        f"/api/v1/documents/{doc.pk}/",
        {"content": "Dogs bark.", "knowledge_base": 999},
        format="json",
    )

    assert response.status_code == 200, response.json()
    doc.refresh_from_db()
    assert doc.content == "Dogs bark."
    assert doc.knowledge_base_id != 999
    assert TaskRecord.objects.filter(name="knowledge.vectorize_document").count() == 1


def test_deleting_a_document_removes_its_chunks(api, doc):
    assert api.delete(f"/api/v1/documents/{doc.pk}/").status_code == 204
    assert not Document.objects.exists()


SUBMISSIONS = [
    ("post", "/api/v1/documents/{doc}/vectorize/", {}, "knowledge.vectorize_document"),
    ("delete", "/api/v1/documents/{doc}/vectors/", {}, "knowledge.delete_knowledge_vectors"),
    ("post", "/api/v1/knowledge-bases/{kb}/update/", {"mode": "full"}, "knowledge.update_knowledge_base"),
    ("delete", "/api/v1/knowledge-bases/{kb}/vectors/", {}, "knowledge.delete_knowledge_vectors"),
]  # fmt: skip


@pytest.mark.parametrize("method, url, body, name", SUBMISSIONS)
def test_submissions_answer_202_and_honour_the_idempotency_key(
    api, kb, doc, alice, method, url, body, name
):
    url = url.format(kb=kb.pk, doc=doc.pk)
    send = getattr(api, method)

    first = send(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = send(url, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    other = send(url, body, format="json")

    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["name"] == name
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    record = TaskRecord.objects.get(pk=first.json()["id"])
    assert record.owner == alice and record.target in (kb, doc)


def test_an_idempotency_key_reused_for_another_task_is_409(api, kb, doc):
    api.post(f"/api/v1/documents/{doc.pk}/vectorize/", HTTP_IDEMPOTENCY_KEY="k")

    response = api.post(
        f"/api/v1/knowledge-bases/{kb.pk}/update/", HTTP_IDEMPOTENCY_KEY="k"
    )

    assert response.status_code == 409
    assert TaskRecord.objects.count() == 1


KEY_REUSES = [
    ("post", "/api/v1/documents/{doc}/vectorize/", {}, "/api/v1/documents/{other_doc}/vectorize/", {}),
    ("delete", "/api/v1/documents/{doc}/vectors/", {}, "/api/v1/documents/{other_doc}/vectors/", {}),
    ("delete", "/api/v1/knowledge-bases/{kb}/vectors/", {}, "/api/v1/documents/{doc}/vectors/", {}),
    ("delete", "/api/v1/knowledge-bases/{kb}/vectors/", {}, "/api/v1/knowledge-bases/{other_kb}/vectors/", {}),
    ("post", "/api/v1/knowledge-bases/{kb}/update/", {}, "/api/v1/knowledge-bases/{other_kb}/update/", {}),
    ("post", "/api/v1/knowledge-bases/{kb}/update/", {}, "/api/v1/knowledge-bases/{kb}/update/", {"mode": "full"}),
]  # fmt: skip


@pytest.mark.parametrize("method, first_url, first_body, url, body", KEY_REUSES)
def test_an_idempotency_key_reused_for_another_object_or_body_is_409(
    api, alice, kb, doc, method, first_url, first_body, url, body
):
    other_kb = services.create_knowledge_base(alice, name="Other")
    other_doc = add_ready(kb, "Dogs", "Dogs bark.")
    ids = {
        "kb": kb.pk,
        "doc": doc.pk,
        "other_kb": other_kb.pk,
        "other_doc": other_doc.pk,
    }
    send = getattr(api, method)
    first = send(
        first_url.format(**ids), first_body, format="json", HTTP_IDEMPOTENCY_KEY="k-9"
    )
    assert first.status_code == 202

    reused = send(url.format(**ids), body, format="json", HTTP_IDEMPOTENCY_KEY="k-9")
    replayed = send(
        first_url.format(**ids), first_body, format="json", HTTP_IDEMPOTENCY_KEY="k-9"
    )

    assert reused.status_code == 409
    assert "Idempotency-Key (k-9)" in reused.json()["detail"]
    assert replayed.status_code == 202 and replayed.json()["id"] == first.json()["id"]
    assert TaskRecord.objects.count() == 1


def test_update_takes_incremental_by_default_and_refuses_other_modes(api, kb):
    response = api.post(f"/api/v1/knowledge-bases/{kb.pk}/update/")
    assert response.status_code == 202
    assert TaskRecord.objects.get().args == [kb.pk, "incremental"]

    bad = api.post(
        f"/api/v1/knowledge-bases/{kb.pk}/update/", {"mode": "all"}, format="json"
    )
    assert bad.status_code == 400 and "mode" in bad.json()


def test_search_returns_ranked_chunks(api, kb, doc):
    add_ready(kb, "Rockets", "Rockets burn kerosene to reach orbit.")

    response = api.post(
        f"/api/v1/knowledge-bases/{kb.pk}/search/",
        {"query": "why do cats purr", "k": 2},
        format="json",
    )

    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["document_title"] for r in results] == ["Cats", "Rockets"]
    assert results[0]["document_id"] == doc.pk
    assert results[0]["score"] > results[1]["score"]
    assert set(results[0]) == {
        "chunk_id",
        "document_id",
        "document_title",
        "position",
        "text",
        "score",
    }


def test_search_filters_by_document_and_validates_its_input(api, kb, doc):
    url = f"/api/v1/knowledge-bases/{kb.pk}/search/"
    only_it = api.post(url, {"query": "cats", "document_ids": [doc.pk]}, format="json")
    assert {hit["document_id"] for hit in only_it.json()["results"]} == {doc.pk}
    no_such = api.post(
        url, {"query": "cats", "document_ids": [doc.pk + 1]}, format="json"
    )
    assert no_such.status_code == 404 and "document_ids" in no_such.json()

    for body, field in [
        ({"query": ""}, "query"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"k": 3}, "query"),
    ]:
        response = api.post(url, body, format="json")
        assert response.status_code == 400 and field in response.json(), body


def test_search_answers_503_when_the_embedding_endpoint_is_down(api, alice, settings):
    settings.EMBEDDING_BASE_URL = "http://127.0.0.1:9/v1"  # discard port: refused
    kb = services.create_knowledge_base(
        alice, name="Remote", embedding_provider="openai", embedding_dimension=3
    )
    document = services.add_document(kb, title="T", content="x", vectorize=False)
    Chunk.objects.create(
        document=document,
        knowledge_base=kb,
        position=0,
        text="x",
        start=0,
        end=1,
        content_hash="h",
        embedding=b"\x00" * 12,
        model_name="openai:text-embedding-3-small",
        dimension=3,
    )

    response = api.post(
        f"/api/v1/knowledge-bases/{kb.pk}/search/", {"query": "x"}, format="json"
    )

    assert response.status_code == 503
    assert "unreachable" in response.json()["query"][0]
