"""Outlines and documents as data: building, checking, merging. Pure: no Django.

A passage is a dict with the fields of a search hit (chunk_id, document_id,
document_title, position, text, score) plus knowledge_base_id. An outline is
{"title", "sections": [{"heading", "key_points": [...], "passages": [...]}]}.
Section texts cite their own passages as [1], [2], ...; merge() renumbers the
citations over the whole document and lists the cited passages as references.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from knowledge.services import sentence_spans

TITLE_MAX = 300
HEADING_MAX = 300
KEY_POINTS_MAX = 10
KEY_POINT_MAX = 1000
PASSAGES_MAX = 20  # supporting passages of one section
KEY_POINTS_PER_SECTION = 3  # of an extractive outline
KEY_POINT_CHARS = 240  # an extractive key point longer than this is cut
CITATION = re.compile(r"\[(\d{1,3})\]")
EXTRACTIVE_LABEL = "Quoted from the knowledge base (extractive, not generated):"


class OutlineInvalid(ValueError):
    """The model's answer is not an outline; the message says what is wrong."""


@dataclass
class WrittenSection:
    heading: str
    passages: list[dict]
    content: str = ""
    error: str = ""  # set when the section is missing from the document


@dataclass
class Merged:
    content: str
    references: list[dict]
    missing: list[int] = field(default_factory=list)


# --- outlines ----------------------------------------------------------------


def shorten(text: str, limit: int) -> str:
    """text on one line, cut at a word boundary to at most limit characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", limit // 2, limit - 1)
    return text[: cut if cut > 0 else limit - 1].rstrip(" ,;:") + "…"


def outline_title(task_prompt: str) -> str:
    """The first sentence of the prompt, without its final punctuation."""
    spans = sentence_spans(task_prompt)
    if not spans:
        return "Untitled"
    start, end = spans[0]
    return shorten(task_prompt[start:end].rstrip(".!?;。！？；"), 120) or "Untitled"


def first_sentences(text: str, count: int) -> list[str]:
    return [
        shorten(text[start:end], KEY_POINT_CHARS)
        for start, end in sentence_spans(text)[:count]
    ]


def relevant(passages: list[dict], *, ratio: float) -> list[dict]:
    """The passages (best first) scoring above zero and at least ratio times
    the best score: search returns k passages however unrelated the rest are."""
    if not passages:
        return []
    floor = max(passages[0]["score"] * ratio, 0.0)
    return [p for p in passages if p["score"] > floor or p["score"] == floor > 0]


def extractive_outline(
    task_prompt: str, passages: list[dict], *, max_sections: int
) -> dict:
    """An outline built from the retrieved passages alone, deterministically.

    One section per document, best-scoring document first (passages arrive best
    first); its heading is the document's title (numbered when two documents
    share one), its key points the first sentences of its passages, and its
    supporting passages are that document's passages.
    """
    groups: dict[int, list[dict]] = {}
    for passage in passages:
        document = passage["document_id"]
        if document not in groups and len(groups) >= max_sections:
            continue
        group = groups.setdefault(document, [])
        if len(group) < PASSAGES_MAX:
            group.append(passage)
    sections, seen = [], {}
    for group in groups.values():
        title = shorten(group[0]["document_title"], HEADING_MAX - 6) or "Untitled"
        seen[title] = seen.get(title, 0) + 1
        heading = title if seen[title] == 1 else f"{title} ({seen[title]})"
        points: list[str] = []
        for passage in group:
            for sentence in first_sentences(passage["text"], KEY_POINTS_PER_SECTION):
                if sentence not in points and len(points) < KEY_POINTS_PER_SECTION:
                    points.append(sentence)
        sections.append({"heading": heading, "key_points": points, "passages": group})
    return {"title": outline_title(task_prompt), "sections": sections}


def outline_messages(task_prompt: str, *, max_sections: int) -> list[dict]:
    """The chat prompt asking a model for an outline as JSON; the passages
    travel separately, numbered [1], [2], ... by the provider."""
    instructions = (
        "Plan a document as an outline. Answer with JSON only, no prose and no "
        'code fence: {"title": "...", "sections": [{"heading": "...", '
        '"key_points": ["..."], "passages": [1, 2]}]}. '
        f"Use 1 to {max_sections} sections, at most {KEY_POINTS_MAX} key points "
        "each; passages are the numbers of the passages that support a section."
    )
    return [
        {"role": "system", "content": instructions},
        {"role": "user", "content": task_prompt},
    ]


def _text(value, name: str, limit: int) -> str:
    # U+0000 (JSON "\u0000") is dropped: PostgreSQL's jsonb cannot hold it
    if isinstance(value, str):
        value = value.replace("\x00", "")
    if not isinstance(value, str) or not value.strip():
        raise OutlineInvalid(f"{name} must be a non-empty string")
    return shorten(value, limit)


def _numbers(value, name: str, count: int) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in value
    ):
        raise OutlineInvalid(f"{name} must be a list of passage numbers")
    if any(not 1 <= n <= count for n in value):
        raise OutlineInvalid(f"{name} must be numbers from 1 to {count}")
    return list(dict.fromkeys(value))[:PASSAGES_MAX]


def _json_object(text: str) -> dict:
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fence:  # models often fence JSON even when told not to
        body = fence.group(1)
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise OutlineInvalid(f"not JSON ({exc}): {shorten(text, 200)!r}") from None
    if not isinstance(data, dict):
        raise OutlineInvalid("not a JSON object")
    return data


def parse_model_outline(text: str, passages: list[dict], *, max_sections: int):
    """The outline in a model's answer, with passage numbers replaced by the
    passages; OutlineInvalid when the answer is not a valid outline."""
    data = _json_object(text)
    title = _text(data.get("title"), "title", TITLE_MAX)
    raw = data.get("sections")
    if not isinstance(raw, list) or not 1 <= len(raw) <= max_sections:
        raise OutlineInvalid(f"sections must be a list of 1 to {max_sections}")
    sections = []
    for i, item in enumerate(raw):
        name = f"sections[{i}]"
        if not isinstance(item, dict):
            raise OutlineInvalid(f"{name} must be an object")
        points = item.get("key_points", [])
        if not isinstance(points, list) or len(points) > KEY_POINTS_MAX:
            raise OutlineInvalid(f"{name}.key_points must be a list of strings")
        numbers = _numbers(item.get("passages", []), f"{name}.passages", len(passages))
        sections.append(
            {
                "heading": _text(item.get("heading"), f"{name}.heading", HEADING_MAX),
                "key_points": [
                    _text(p, f"{name}.key_points", KEY_POINT_MAX) for p in points
                ],
                "passages": [passages[n - 1] for n in numbers],
            }
        )
    return {"title": title, "sections": sections}


# --- sections ----------------------------------------------------------------


def section_messages(title: str, section: dict) -> list[dict]:
    """The chat prompt for one section; its passages travel separately."""
    points = "\n".join(f"- {point}" for point in section["key_points"])
    return [
        {
            "role": "system",
            "content": "You write one section of a longer document. Write its "
            "body only (no heading), in plain paragraphs, using the given "
            "passages and citing them as [n].",
        },
        {
            "role": "user",
            "content": f"Document: {title}\nSection: {section['heading']}\n"
            f"Key points:\n{points or '- (none given)'}",
        },
    ]


def extractive_section(section: dict) -> str:
    """The extractive provider's section: its key points, then its passages
    quoted and cited, labelled as retrieved rather than generated."""
    parts = [f"- {point}" for point in section["key_points"]]
    if section["passages"]:
        parts.append(("\n" if parts else "") + EXTRACTIVE_LABEL)
        parts += [
            f"\n> {' '.join(p['text'].split())} [{n}]"
            for n, p in enumerate(section["passages"], 1)
        ]
    return "\n".join(parts)


def _strip_heading(text: str) -> str:
    # A model may repeat the section's heading as its first line.
    lines = text.strip().splitlines()
    while lines and lines[0].lstrip().startswith("#"):
        lines.pop(0)
    return "\n".join(lines).strip()


# --- the document ------------------------------------------------------------


def merge(title: str, sections: list[WrittenSection]) -> Merged:
    """One Markdown document from its sections, with one reference list.

    Citations [n] of a section point at its own passages; they are renumbered
    in order of first citation over the document, and only cited passages
    become references. A number outside a section's passages is left as it is.
    A section with an error is marked missing in the text.
    """
    references: list[dict] = []
    numbers: dict[int, int] = {}  # chunk id -> reference number
    parts, missing = [f"# {title}"], []

    def renumber(section: WrittenSection):
        def replace(match: re.Match) -> str:
            local = int(match.group(1))
            if not 1 <= local <= len(section.passages):
                return match.group(0)
            passage = section.passages[local - 1]
            chunk_id = passage["chunk_id"]
            if chunk_id not in numbers:
                numbers[chunk_id] = len(references) + 1
                references.append({"n": numbers[chunk_id], **passage})
            return f"[{numbers[chunk_id]}]"

        return replace

    for position, section in enumerate(sections):
        parts.append(f"## {section.heading}")
        if section.error:
            missing.append(position)
            parts.append(f"*This section is missing: {shorten(section.error, 300)}*")
            continue
        parts.append(CITATION.sub(renumber(section), _strip_heading(section.content)))
    if references:
        parts.append("## References")
        parts.append("\n".join(reference_line(r) for r in references))
    return Merged("\n\n".join(parts) + "\n", references, missing)


def reference_line(reference: dict) -> str:
    return (
        f"[{reference['n']}] {reference['document_title']}, passage "
        f"{reference['position'] + 1} (document {reference['document_id']}, "
        f"chunk {reference['chunk_id']})"
    )
