"""An outline from an uploaded Markdown file: no Markdown syntax in its
headings, key points or quotes."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge import services
from knowledge.models import Document
from knowledge.tests.test_markdown import ARTICLE, SYNTAX
from tasks_app.tests.test_api import client_for
from writing import jobs


@pytest.mark.django_db
def test_an_uploaded_markdown_file_gives_an_outline_without_markdown(
    alice, kb, no_broker
):
    response = client_for(alice).post(
        "/api/v1/documents/upload/",
        {
            "knowledge_base": kb.pk,
            "file": SimpleUploadedFile("ai.md", ARTICLE.encode()),
        },
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    assert response.json()["title"] == "人工智能概述"
    document = Document.objects.get(pk=response.json()["id"])
    services.vectorize_document(document.pk)

    job = jobs.start_outline_job(
        alice, task_prompt="人工智能的发展历史", knowledge_bases=[kb], job_id="ai"
    ).job
    jobs.generate_outline(job.pk)
    job.refresh_from_db()

    assert job.state == "succeeded", job.error
    section = job.outline["sections"][0]
    assert section["heading"] == "人工智能概述"
    quoted = [*section["key_points"], *(p["text"] for p in section["passages"])]
    assert quoted
    for text in quoted:
        for syntax in SYNTAX:
            assert syntax not in text, (syntax, text)
