"""Text for people to read: excerpts that end at a word, never inside one."""

from __future__ import annotations


def shorten(text: str, limit: int) -> str:
    """text on one line, cut at a word boundary to at most limit characters
    (text without spaces, such as Chinese, is cut at the limit), with "…"."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", limit // 2, limit - 1)
    return text[: cut if cut > 0 else limit - 1].rstrip(" ,;:") + "…"


def first_line(text: str, limit: int) -> str:
    """The first non-blank line of text (an error's exception and message),
    shortened."""
    line = next((line for line in (text or "").splitlines() if line.strip()), "")
    return shorten(line, limit)
