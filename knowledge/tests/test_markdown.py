"""An uploaded Markdown file is titled by its first heading and reads as text:
no Markdown syntax in its passages (writing/tests/test_markdown_outline.py
shows the outline made of them)."""

from __future__ import annotations

import pytest

from knowledge.extract import markdown_to_text, text_from_upload

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
