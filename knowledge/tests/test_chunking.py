"""Chunking is pure: no database."""

from __future__ import annotations

import pytest

from knowledge.chunking import chunk_text, sentence_spans

CHINESE = (
    "机器学习是人工智能的一个分支。它让计算机从数据中学习规律！"
    "深度学习使用多层神经网络？向量检索把文本变成向量；再按余弦相似度排序。"
)
ENGLISH = (
    "Vector search turns text into numbers. Similar passages get similar "
    "vectors! Does it work for questions? It does; the cosine decides. "
    "Version 3.14 is not a sentence end."
)


def texts(text: str) -> list[str]:
    return [text[start:end] for start, end in sentence_spans(text)]


def test_chinese_sentences_end_at_full_width_punctuation():
    assert texts(CHINESE) == [
        "机器学习是人工智能的一个分支。",
        "它让计算机从数据中学习规律！",
        "深度学习使用多层神经网络？",
        "向量检索把文本变成向量；",
        "再按余弦相似度排序。",
    ]


def test_english_sentences_end_before_whitespace_only():
    assert texts(ENGLISH) == [
        "Vector search turns text into numbers.",
        "Similar passages get similar vectors!",
        "Does it work for questions?",
        "It does;",
        "the cosine decides.",
        "Version 3.14 is not a sentence end.",
    ]


def test_line_breaks_end_sentences_and_closing_quotes_stay_attached():
    assert texts("他说：“你好。”然后走了\n第二行") == [
        "他说：“你好。”",
        "然后走了",
        "第二行",
    ]


@pytest.mark.parametrize("text", [CHINESE * 4, ENGLISH * 4, (CHINESE + ENGLISH) * 3])
def test_chunks_are_spans_of_the_text_within_size_and_cover_it(text):
    chunks = chunk_text(text, size=120, overlap=30)

    assert [c.position for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert len(chunk.text) <= 120
    # every sentence is inside some chunk
    for start, end in sentence_spans(text):
        assert any(c.start <= start and end <= c.end for c in chunks)


def test_neighbouring_chunks_overlap_by_whole_sentences():
    chunks = chunk_text(CHINESE * 3, size=60, overlap=20)

    assert len(chunks) > 2
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start < before.end  # overlap
        assert before.end - after.start <= 20
        assert after.start > before.start  # progress


def test_a_sentence_longer_than_size_is_cut_into_overlapping_windows():
    long_word_run = "alpha beta gamma delta " * 20  # one sentence, 460 characters
    chunks = chunk_text(long_word_run, size=100, overlap=20)

    assert all(len(c.text) <= 100 for c in chunks)
    assert all(not c.text.endswith(("alph", "bet", "gamm", "delt")) for c in chunks)
    assert chunks[-1].end == len(long_word_run.rstrip())

    unbroken = "字" * 250
    windows = chunk_text(unbroken, size=100, overlap=10)
    assert [(c.start, c.end) for c in windows] == [(0, 100), (90, 190), (180, 250)]


def test_blank_text_has_no_chunks():
    assert chunk_text("  \n\n \t") == []


@pytest.mark.parametrize("size, overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes_are_refused(size, overlap):
    with pytest.raises(ValueError):
        chunk_text("text", size=size, overlap=overlap)
