"""The writing-jobs API: auth matrix, job_id and Idempotency-Key, field errors."""

from __future__ import annotations

import pytest

from knowledge import services
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord
from tasks_app.tests.test_api import client_for
from writing import jobs
from writing.models import WritingJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
OUTLINE = "/api/v1/jobs/outline/"
DOCUMENT = "/api/v1/jobs/document/"


@pytest.fixture
def api(alice):
    return client_for(alice)


@pytest.fixture
def chunk(kb):
    return add_ready(kb, "Tea", "Green tea is steamed. It stays green.").chunks.get()


def outline_body(chunk, title="Teas") -> dict:
    return {
        "title": title,
        "sections": [{"heading": "Green", "passages": [{"chunk_id": chunk.pk}]}],
    }


@pytest.fixture
def job(alice, kb):
    return jobs.start_outline_job(
        alice, task_prompt="tea", knowledge_bases=[kb], job_id="plan"
    ).job


JOB_ENDPOINTS = [
    ("get", "/api/v1/jobs/{job_id}/"),
    ("post", "/api/v1/jobs/{job_id}/cancel/"),
]


@pytest.mark.parametrize("method, url", JOB_ENDPOINTS)
def test_a_job_needs_a_login_is_hidden_from_others_and_open_to_staff(
    job, bob, staff, method, url
):
    url = url.format(job_id=job.job_id)

    assert getattr(client_for(None), method)(url).status_code == 401
    assert getattr(client_for(bob), method)(url).status_code == 404
    response = getattr(client_for(staff), method)(url)
    assert response.status_code in (200, 202), response.json()
    assert response.json()["job_id"] == "plan"


@pytest.mark.parametrize("url", [OUTLINE, DOCUMENT, "/api/v1/jobs/outline"])
def test_submissions_need_a_login(url, kb):
    response = client_for(None).post(url, {"task_prompt": "t"}, format="json")

    assert response.status_code == 401
    assert not WritingJob.objects.exists()


def test_the_list_shows_own_jobs_and_staff_see_everyone(job, bob, staff):
    assert client_for(bob).get("/api/v1/jobs/").json()["count"] == 0
    assert client_for(None).get("/api/v1/jobs/").status_code == 401
    mine = client_for(job.owner).get("/api/v1/jobs/?kind=outline&state=pending")
    assert [j["job_id"] for j in mine.json()["results"]] == ["plan"]
    assert client_for(staff).get("/api/v1/jobs/").json()["count"] == 1
    bad = client_for(staff).get("/api/v1/jobs/?state=done")
    assert bad.status_code == 400 and "state" in bad.json()


def test_an_outline_job_is_accepted_and_polled(api, kb):
    response = api.post(
        OUTLINE,
        {"job_id": "plan-1", "task_prompt": "tea", "knowledge_base_ids": [kb.pk]},
        format="json",
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["job_id"], body["kind"], body["state"]) == (
        "plan-1",
        "outline",
        "pending",
    )
    assert body["knowledge_base_ids"] == [kb.pk]
    assert body["task"]["name"] == jobs.OUTLINE_TASK
    assert body["task"]["state"] == "PENDING"
    assert [e["kind"] for e in body["events"]] == ["queued"]
    assert body["links"]["self"] == "/api/v1/jobs/plan-1/"
    polled = api.get("/api/v1/jobs/plan-1/").json()
    assert polled["progress"] == {"done": 0, "total": 2, "percent": 0}
    assert (polled["outline"], polled["document"]) == (None, None)


def test_the_paths_without_a_trailing_slash_work_too(api, kb, chunk):
    outline = api.post(
        "/api/v1/jobs/outline",
        {"task_prompt": "tea", "knowledge_base_ids": [kb.pk]},
        format="json",
    )
    document = api.post(
        "/api/v1/jobs/document", {"outline": outline_body(chunk)}, format="json"
    )

    assert (outline.status_code, document.status_code) == (202, 202)
    assert len(outline.json()["job_id"]) == 32  # generated
    assert WritingJob.objects.count() == 2


def test_the_same_job_id_twice_answers_with_the_same_job(api, kb):
    body = {"job_id": "once", "task_prompt": "tea", "knowledge_base_ids": [kb.pk]}

    first = api.post(OUTLINE, body, format="json")
    again = api.post(OUTLINE, body, format="json")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["task"]["id"] == first.json()["task"]["id"]
    assert WritingJob.objects.count() == 1 and TaskRecord.objects.count() == 1
    other = api.post(OUTLINE, {**body, "task_prompt": "coffee"}, format="json")
    assert other.status_code == 409 and "job_id" in other.json()
    as_document = api.post(
        DOCUMENT, {"job_id": "once", "outline": "once"}, format="json"
    )
    assert as_document.status_code == 409  # an outline job, still pending
    assert WritingJob.objects.count() == 1


def test_an_idempotency_key_replays_the_first_job(api, kb):
    body = {"task_prompt": "tea", "knowledge_base_ids": [kb.pk]}
    headers = {"HTTP_IDEMPOTENCY_KEY": "key-1"}

    first = api.post(OUTLINE, body, format="json", **headers)
    again = api.post(OUTLINE, body, format="json", **headers)

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["job_id"] == first.json()["job_id"]
    assert WritingJob.objects.count() == 1
    other = api.post(OUTLINE, {**body, "task_prompt": "x"}, format="json", **headers)
    assert other.status_code == 409 and "Idempotency-Key" in other.json()
    renamed = api.post(OUTLINE, {**body, "job_id": "new"}, format="json", **headers)
    assert renamed.status_code == 409
    bad = api.post(OUTLINE, body, format="json", HTTP_IDEMPOTENCY_KEY="a b")
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"task_prompt": "t"}, "knowledge_base_ids"),
        ({"task_prompt": "t", "knowledge_base_ids": []}, "knowledge_base_ids"),
        ({"task_prompt": " \n", "knowledge_base_ids": ["KB"]}, "task_prompt"),
        ({"task_prompt": 5, "knowledge_base_ids": ["KB"]}, "task_prompt"),
        ({"knowledge_base_ids": ["KB"]}, "task_prompt"),
        ({"task_prompt": "t", "knowledge_base_ids": ["1"]}, "knowledge_base_ids"),
        (
            {"job_id": "outline", "task_prompt": "t", "knowledge_base_ids": ["KB"]},
            "job_id",
        ),
        ({"job_id": "a/b", "task_prompt": "t", "knowledge_base_ids": ["KB"]}, "job_id"),
        ({"job_id": 7, "task_prompt": "t", "knowledge_base_ids": ["KB"]}, "job_id"),
        ({"job_id": "", "task_prompt": "t", "knowledge_base_ids": ["KB"]}, "job_id"),
    ],
)
def test_bad_outline_requests_name_the_field(api, kb, body, field):
    body = {
        key: [kb.pk if v == "KB" else v for v in value]
        if isinstance(value, list)
        else value
        for key, value in body.items()
    }

    response = api.post(OUTLINE, body, format="json")

    assert response.status_code == 400, response.json()
    assert field in response.json()
    assert not WritingJob.objects.exists() and not TaskRecord.objects.exists()


def test_someone_elses_knowledge_base_document_or_chunk_is_a_404_naming_it(
    api, bob, chunk
):
    bobs = services.create_knowledge_base(bob, name="Bob's")
    secret = add_ready(bobs, "Secret", "Bob's secret plan is here.")
    cases = [
        (
            OUTLINE,
            {"task_prompt": "t", "knowledge_base_ids": [bobs.pk]},
            "knowledge_base_ids",
        ),
        (OUTLINE, {"task_prompt": "t", "document_ids": [secret.pk]}, "document_ids"),
        (DOCUMENT, {"outline": outline_body(secret.chunks.get())}, "outline"),
        (
            DOCUMENT,
            {"outline": outline_body(chunk), "knowledge_base_id": bobs.pk},
            "knowledge_base_id",
        ),
        (DOCUMENT, {"outline": "no-such-job"}, "outline"),
    ]

    for url, body, field in cases:
        response = api.post(url, body, format="json")
        assert response.status_code == 404, (body, response.json())
        assert field in response.json()
    assert not WritingJob.objects.exists()


@pytest.mark.parametrize(
    "outline, field",
    [
        ({"title": "T", "sections": []}, "sections"),
        ({"title": "", "sections": [{"heading": "H"}]}, "title"),
        ({"title": "T", "sections": [{"heading": " "}]}, "sections"),
        (
            {
                "title": "T",
                "sections": [{"heading": "H", "passages": [{"chunk_id": "1"}]}],
            },
            "sections",
        ),
        ({"title": "T", "sections": [{"heading": "H", "key_points": [1]}]}, "sections"),
        ({"sections": [{"heading": "H"}]}, "title"),
        (42, "outline"),
    ],
)
def test_bad_inline_outlines_name_the_field(api, outline, field):
    response = api.post(DOCUMENT, {"outline": outline}, format="json")

    assert response.status_code == 400, response.json()
    errors = response.json()
    assert field in (errors if field == "outline" else errors["outline"])
    assert not WritingJob.objects.exists()


def test_a_document_job_from_an_inline_outline(api, kb, chunk):
    response = api.post(
        DOCUMENT,
        {
            "job_id": "doc",
            "outline": outline_body(chunk),
            "knowledge_base_id": kb.pk,
            "allow_missing_sections": True,
        },
        format="json",
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["kind"] == "document" and body["allow_missing_sections"] is True
    assert body["outline"]["sections"][0]["passages"][0]["text"] == chunk.text
    assert body["sections"] == [
        {
            "position": 0,
            "heading": "Green",
            "status": "pending",
            "error": "",
            "task": None,
            "task_state": None,
        }
    ]
    assert body["progress"] == {"done": 0, "total": 1, "percent": 0}
    assert WritingJob.objects.get().target_knowledge_base == kb


def test_a_document_from_an_outline_job_that_has_not_succeeded_is_a_409(api, job):
    response = api.post(DOCUMENT, {"outline": job.job_id}, format="json")

    assert response.status_code == 409
    assert "is pending" in response.json()["outline"][0]


def test_cancel_answers_202_then_409(api, job):
    response = api.post(f"/api/v1/jobs/{job.job_id}/cancel/")

    assert response.status_code == 202
    assert response.json()["state"] == "cancelled"
    assert response.json()["task"]["state"] == "REVOKED"
    assert api.post(f"/api/v1/jobs/{job.job_id}/cancel/").status_code == 409


def test_staff_name_the_owner_when_two_users_share_a_job_id(job, bob, staff):
    bobs = services.create_knowledge_base(bob, name="Bob's")
    jobs.start_outline_job(bob, task_prompt="x", knowledge_bases=[bobs], job_id="plan")
    client = client_for(staff)

    ambiguous = client.get("/api/v1/jobs/plan/")
    named = client.get(f"/api/v1/jobs/plan/?owner={bob.pk}")

    assert ambiguous.status_code == 400 and "owner" in ambiguous.json()
    assert named.status_code == 200 and named.json()["task_prompt"] == "x"
    assert client.get("/api/v1/jobs/plan/?owner=x").status_code == 400
    assert client_for(bob).get("/api/v1/jobs/plan/").json()["task_prompt"] == "x"
