"""outlines.outlines: outlines and documents as data (no database)."""

from __future__ import annotations

import json

import pytest

from writing import outlines


def passage(chunk_id: int, document_id: int, title: str, text: str, score=0.5):
    return {
        "chunk_id": chunk_id,
        "document_id": document_id,
        "document_title": title,
        "knowledge_base_id": 1,
        "position": chunk_id % 3,
        "text": text,
        "score": score,
    }


PASSAGES = [
    passage(11, 1, "Tea", "Green tea is steamed. It stays green.", 0.9),
    passage(21, 2, "Coffee", "Coffee beans are roasted. Roasting darkens them.", 0.8),
    passage(12, 1, "Tea", "Black tea is oxidised. Its flavour is strong.", 0.7),
    passage(31, 3, "Tea", "Tea in Japan means matcha too.", 0.6),
]


def test_an_extractive_outline_has_a_section_per_document_best_first():
    outline = outlines.extractive_outline(
        "Write a guide to tea and coffee. Keep it short.", PASSAGES, max_sections=5
    )

    assert outline["title"] == "Write a guide to tea and coffee"
    headings = [s["heading"] for s in outline["sections"]]
    assert headings == ["Tea", "Coffee", "Tea (2)"]  # same titles are numbered
    tea = outline["sections"][0]
    assert [p["chunk_id"] for p in tea["passages"]] == [11, 12]
    assert tea["key_points"] == [
        "Green tea is steamed.",
        "It stays green.",
        "Black tea is oxidised.",
    ]


def test_an_extractive_outline_is_deterministic_and_bounded():
    first = outlines.extractive_outline("Tea", PASSAGES, max_sections=2)

    assert first == outlines.extractive_outline("Tea", PASSAGES, max_sections=2)
    assert len(first["sections"]) == 2
    assert {p["chunk_id"] for s in first["sections"] for p in s["passages"]} == {
        11,
        12,
        21,
    }


def test_a_models_outline_gets_its_passages_by_number():
    answer = json.dumps(
        {
            "title": "Hot drinks",
            "sections": [
                {"heading": "Tea", "key_points": ["Steamed"], "passages": [1, 3, 1]},
                {"heading": "Coffee", "passages": [2]},
            ],
        }
    )

    outline = outlines.parse_model_outline(
        f"```json\n{answer}\n```", PASSAGES, max_sections=5
    )

    assert outline["title"] == "Hot drinks"
    assert [p["chunk_id"] for p in outline["sections"][0]["passages"]] == [11, 12]
    assert outline["sections"][1]["key_points"] == []
    assert outline["sections"][1]["passages"][0]["document_title"] == "Coffee"


@pytest.mark.parametrize(
    "answer, message",
    [
        ("Here is your outline: tea, coffee", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"title": "", "sections": []}', "title must be a non-empty string"),
        ('{"title": "T", "sections": []}', "sections must be a list of 1 to 5"),
        ('{"title": "T", "sections": [{"passages": [1]}]}', "heading"),
        (
            '{"title": "T", "sections": [{"heading": "H", "passages": [9]}]}',
            "numbers from 1 to 4",
        ),
        (
            '{"title": "T", "sections": [{"heading": "H", "passages": ["1"]}]}',
            "list of passage numbers",
        ),
        (
            '{"title": "T", "sections": [{"heading": "H", "key_points": [3]}]}',
            "key_points",
        ),
    ],
)
def test_an_invalid_model_outline_says_what_is_wrong(answer, message):
    with pytest.raises(outlines.OutlineInvalid, match=message):
        outlines.parse_model_outline(answer, PASSAGES, max_sections=5)


def test_an_extractive_section_quotes_and_cites_its_passages():
    text = outlines.extractive_section(
        {"heading": "Tea", "key_points": ["Steamed"], "passages": PASSAGES[:2]}
    )

    assert text.startswith("- Steamed\n")
    assert outlines.EXTRACTIVE_LABEL in text
    assert "> Green tea is steamed. It stays green. [1]" in text
    assert "> Coffee beans are roasted. Roasting darkens them. [2]" in text


def test_merge_renumbers_citations_over_the_document_and_lists_cited_passages():
    sections = [
        outlines.WrittenSection(
            "Tea", [PASSAGES[0], PASSAGES[2]], "Green [2] and [1]."
        ),
        outlines.WrittenSection("Missing", [PASSAGES[1]], error="LLMRejected: no"),
        outlines.WrittenSection(
            "More tea", [PASSAGES[2], PASSAGES[3]], "## More tea\nAgain [1], [7]."
        ),
    ]

    merged = outlines.merge("Drinks", sections)

    assert [r["chunk_id"] for r in merged.references] == [12, 11]
    assert [r["n"] for r in merged.references] == [1, 2]
    assert "Green [1] and [2]." in merged.content
    assert "Again [1], [7]." in merged.content  # [7] names no passage: untouched
    assert "## More tea\n\nAgain" in merged.content  # its repeated heading dropped
    assert "*This section is missing: LLMRejected: no*" in merged.content
    assert merged.missing == [1]
    assert merged.content.startswith("# Drinks\n\n## Tea\n\n")
    assert "[1] Tea, passage 1 (document 1, chunk 12)" in merged.content


def test_passages_far_below_the_best_are_not_relevant():
    scored = [passage(n, n, "T", "x", score) for n, score in enumerate([0.5, 0.2, 0.1])]

    assert [p["score"] for p in outlines.relevant(scored, ratio=0.25)] == [0.5, 0.2]
    assert len(outlines.relevant(scored, ratio=0)) == 3
    negative = [passage(1, 1, "T", "x", -0.1)]
    assert outlines.relevant(negative, ratio=0) == []
    assert outlines.relevant([], ratio=0.25) == []


def test_nul_characters_of_a_models_outline_are_dropped():
    answer = '{"title": "T\\u0000ea", "sections": [{"heading": "\\u0000H"}]}'

    outline = outlines.parse_model_outline(answer, PASSAGES, max_sections=5)

    assert (outline["title"], outline["sections"][0]["heading"]) == ("Tea", "H")
    with pytest.raises(outlines.OutlineInvalid, match="title"):
        outlines.parse_model_outline('{"title": "\\u0000"}', PASSAGES, max_sections=5)
