"""The old API's outline request: POST /api/v1/jobs/outline with only job_id and
task_prompt works. Sources are optional: with none, the caller's ready knowledge
bases; context_files are inline sources; with nothing at all, a model writes from
the prompt alone and the extractive provider answers 400 saying what to add."""

from __future__ import annotations

import json

import pytest

from claw.tests.conftest import http_server, sse  # noqa: F401 - fixture
from knowledge import services
from knowledge.tests.conftest import add_ready
from tasks_app.tests.test_api import client_for
from writing import jobs
from writing.models import WritingJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]
OLD_PATH = "/api/v1/jobs/outline"  # the old API's spelling, no trailing slash
PROMPT = "请生成一份关于人工智能的技术文档大纲"


def run(job_id: str, owner) -> WritingJob:
    job = WritingJob.objects.get(owner=owner, job_id=job_id)
    jobs.generate_outline(job.pk)
    job.refresh_from_db()
    return job


def test_only_a_job_id_and_a_prompt_draws_on_the_callers_ready_knowledge_bases(
    alice, bob, kb
):
    add_ready(kb, "人工智能概述", "人工智能是计算机科学的一个分支。机器学习是其核心。")
    services.create_knowledge_base(alice, name="Empty")  # nothing ready: left out
    theirs = services.create_knowledge_base(bob, name="Bob's")
    add_ready(theirs, "Secret", "人工智能的秘密。")

    response = client_for(alice).post(
        OLD_PATH, {"job_id": "test_job_001", "task_prompt": PROMPT}, format="json"
    )

    assert response.status_code == 202, response.json()
    job = run("test_job_001", alice)
    assert list(job.knowledge_bases.all()) == [kb]
    assert job.state == "succeeded", job.error
    assert {
        p["knowledge_base_id"] for s in job.outline["sections"] for p in s["passages"]
    } == {kb.pk}


def test_context_files_are_searched_as_inline_sources(alice):
    files = {
        "ai.md": "# 人工智能\n\n人工智能（**AI**）让机器模拟人类智能。",
        "history.txt": "1956 年的达特茅斯会议提出了人工智能这一术语。",
    }
    response = client_for(alice).post(
        OLD_PATH,
        {"job_id": "ctx", "task_prompt": PROMPT, "context_files": files},
        format="json",
    )

    assert response.status_code == 202, response.json()
    job = run("ctx", alice)
    assert job.state == "succeeded", job.error
    headings = sorted(s["heading"] for s in job.outline["sections"])
    assert headings == ["history", "人工智能"]
    quoted = [p["text"] for s in job.outline["sections"] for p in s["passages"]]
    assert all("**" not in text and "#" not in text for text in quoted)
    # a repeat of the request finds the same job; the files are not stored twice
    again = client_for(alice).post(
        OLD_PATH,
        {"job_id": "ctx", "task_prompt": PROMPT, "context_files": files},
        format="json",
    )
    assert again.status_code == 200
    assert services.Document.objects.filter(knowledge_base__owner=alice).count() == 2


def test_bad_context_files_are_a_400_naming_the_field(alice):
    api = client_for(alice)
    for files in ({"a.txt": ""}, {"a.txt": 5}, ["not", "a", "mapping"]):
        response = api.post(
            OLD_PATH, {"task_prompt": PROMPT, "context_files": files}, format="json"
        )
        assert response.status_code == 400, files
        assert "context_files" in response.json()
    assert not WritingJob.objects.exists()


def test_a_nul_in_a_context_file_name_is_dropped_not_a_500(alice):
    files = {"a\x00i.md": "# 人工智能\n\n人工智能让机器模拟人类智能。"}
    response = client_for(alice).post(
        OLD_PATH,
        {"job_id": "nul", "task_prompt": PROMPT, "context_files": files},
        format="json",
    )

    assert response.status_code == 202, response.json()
    stored = services.Document.objects.filter(knowledge_base__owner=alice)
    assert [d.title for d in stored] == ["人工智能"]  # its heading


def test_with_nothing_to_draw_on_the_extractive_provider_says_what_to_add(
    alice, settings
):
    settings.LLM_PROVIDER = "extractive"
    response = client_for(alice).post(
        OLD_PATH, {"job_id": "empty", "task_prompt": PROMPT}, format="json"
    )

    assert response.status_code == 400
    message = response.json()["knowledge_base_ids"][0]
    for advice in ("/api/v1/documents/", "context_files", "LLM_PROVIDER=openai"):
        assert advice in message
    assert not WritingJob.objects.exists()


def test_with_nothing_to_draw_on_a_model_writes_from_the_prompt_alone(
    alice,
    settings,
    http_server,  # noqa: F811
):
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = http_server.url + "/v1"
    outline = {
        "title": "人工智能技术文档",
        "sections": [
            {"heading": "概述", "key_points": ["定义"], "passages": []},
            {"heading": "发展历史", "key_points": ["1956 年"], "passages": []},
        ],
    }
    http_server.script.append(sse(json.dumps(outline, ensure_ascii=False)))

    response = client_for(alice).post(
        OLD_PATH, {"job_id": "free", "task_prompt": PROMPT}, format="json"
    )

    assert response.status_code == 202, response.json()
    job = run("free", alice)
    assert job.state == "succeeded", job.error
    assert job.outline["title"] == "人工智能技术文档"
    assert [s["heading"] for s in job.outline["sections"]] == ["概述", "发展历史"]
    assert http_server.requests[0]["body"]["messages"][-1]["content"]
