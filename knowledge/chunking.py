"""Split text into overlapping, sentence-aligned chunks. Pure: no Django, no I/O.

Sizes are in characters, which suits Chinese (no spaces, one character is roughly
a word) and English alike. A chunk's text is always ``text[start:end]`` of the
original, so spans point back into the document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends after Chinese/Japanese terminators (no space follows them),
# after . ! ? ; followed by whitespace or the end (so "3.14" and "e.g.x" stay
# whole), or at a line break. Closing quotes and brackets stay with the sentence.
SENTENCE_END = re.compile(
    r"[。！？；…]+[”’」』）》\"')\]]*"
    r"|[.!?;]+[\"')\]”’]*(?=\s|$)"
    r"|\n"
)


@dataclass(frozen=True)
class TextChunk:
    position: int
    text: str
    start: int
    end: int


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every non-blank sentence, in order."""
    spans = []
    start = 0
    for match in SENTENCE_END.finditer(text):
        span = _trimmed(text, start, match.end())
        if span[0] < span[1]:
            spans.append(span)
        start = match.end()
    span = _trimmed(text, start, len(text))
    if span[0] < span[1]:
        spans.append(span)
    return spans


def _windows(
    text: str, start: int, end: int, size: int, overlap: int
) -> list[tuple[int, int]]:
    """Cut one sentence longer than size into overlapping windows.

    A window ends at the last space of its second half when there is one, so
    English words are not cut; Chinese has no spaces and is cut at size.
    """
    windows = []
    while True:
        cut = end if end - start <= size else start + size
        if cut < end:
            space = text.rfind(" ", start + size // 2, cut)
            if space > start:
                cut = space
        windows.append(_trimmed(text, start, cut))
        if cut >= end:
            return windows
        next_start = max(cut - overlap, start + 1)
        start, _ = _trimmed(text, next_start, end)


def chunk_text(text: str, *, size: int = 800, overlap: int = 100) -> list[TextChunk]:
    """Pack whole sentences into chunks of at most size characters.

    Each chunk after the first starts with the trailing sentences of the one
    before that fit in overlap characters, so a passage cut at a boundary is
    still found whole in one of the two.
    """
    if size < 1:
        raise ValueError("size must be at least 1")
    if not 0 <= overlap < size:
        raise ValueError("overlap must be at least 0 and smaller than size")
    pieces: list[tuple[int, int]] = []
    for start, end in sentence_spans(text):
        if end - start <= size:
            pieces.append((start, end))
        else:
            pieces.extend(_windows(text, start, end, size, overlap))
    chunks: list[TextChunk] = []
    first = 0
    while first < len(pieces):
        start = pieces[first][0]
        last = first
        while last + 1 < len(pieces) and pieces[last + 1][1] - start <= size:
            last += 1
        end = pieces[last][1]
        chunks.append(TextChunk(len(chunks), text[start:end], start, end))
        if last + 1 == len(pieces):
            break
        following = last + 1
        while following - 1 > first and end - pieces[following - 1][0] <= overlap:
            following -= 1
        first = following
    return chunks
