"""An uploaded Markdown file is titled by its first heading and reads as text:
no Markdown syntax in its passages, its outline headings, key points or quotes."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from knowledge import jobs, services
from knowledge.extract import markdown_to_text, text_from_upload
from knowledge.models import Document
from tasks_app.tests.test_api import client_for

ARTICLE = """# 人工智能概述

人工智能（**AI**）是计算机科学的一个分支，研究如何让机器模拟人类智能。
参见 [维基百科](https://zh.wikipedia.org/wiki/人工智能)。

## 发展历史

- 1956 年：*达特茅斯会议*提出了人工智能这一术语。
- 1997 年：`Deep Blue` 击败了国际象棋世界冠军。

> 机器学习是人工智能的核心。
"""
SYNTAX = ("#", "**", "](", "`", "> ", "- 1956")


def test_the_title_is_the_first_heading_and_the_syntax_is_gone():
    title, text = markdown_to_text(ARTICLE)
    assert title == "人工智能概述"
    assert text.splitlines()[0] == "人工智能概述"
    assert "人工智能（AI）是计算机科学的一个分支" in text
    assert "参见 维基百科。" in text
    assert "1956 年：达特茅斯会议提出了人工智能这一术语。" in text
    assert "Deep Blue 击败了" in text and "机器学习是人工智能的核心。" in text
    for syntax in SYNTAX:
        assert syntax not in text, syntax


@pytest.mark.parametrize(
    "markdown, title, text",
    [
        ("Title\n=====\n\nBody", "Title", "Title\n\nBody"),
        ("No heading, just text.", "", "No heading, just text."),
        ("```\n# not a heading\n```\n", "", "# not a heading"),
        ("snake_case and 2 * 3 * 4 stay", "", "snake_case and 2 * 3 * 4 stay"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "", "a b\n1 2"),
    ],
)
def test_markdown_forms(markdown, title, text):
    assert markdown_to_text(markdown) == (title, text)


def test_a_markdown_file_without_a_heading_keeps_its_file_name():
    assert text_from_upload("notes.md", b"Just text.") == ("notes", "Just text.")


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
