"""search(): exact cosine top-k over a knowledge base, cached per version."""

from __future__ import annotations

import numpy as np
import pytest

from knowledge import search, services
from knowledge.models import KnowledgeBase
from knowledge.search import SearchHit, top_k
from knowledge.tests.conftest import add_ready

pytestmark = pytest.mark.django_db

DOCS = {
    "cats": "Cats are small domestic felines. They sleep most of the day and purr.",
    "rockets": "Rockets burn liquid oxygen and kerosene to reach orbit around Earth.",
    "茶": "中国茶文化历史悠久。绿茶和红茶是最常见的两种茶叶。",
    "高铁": "高速铁路连接了中国的主要城市。列车时速可达三百五十公里。",
}


@pytest.fixture
def library(kb):
    return {title: add_ready(kb, title, text) for title, text in DOCS.items()}


def test_an_empty_knowledge_base_returns_nothing(kb):
    assert search.search(kb, "anything") == []


@pytest.mark.parametrize(
    "query, expected",
    [
        ("why do cats purr", "cats"),
        ("kerosene rocket orbit", "rockets"),
        ("绿茶和红茶", "茶"),
        ("高速列车时速", "高铁"),
    ],
)
def test_the_most_similar_document_comes_first(kb, library, query, expected):
    hits = search.search(kb, query, k=3)

    assert hits[0].document_title == expected
    assert hits[0].document_id == library[expected].pk
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert isinstance(hits[0], SearchHit)
    assert 0 < hits[0].score <= 1.0001


def test_hits_carry_the_chunk_text_and_position(kb, library):
    hit = search.search(kb, "purr", k=1)[0]
    chunk = library["cats"].chunks.get(position=hit.position)

    assert hit.chunk_id == chunk.pk
    assert hit.text == chunk.text


def test_filters_restrict_the_search_to_some_documents(kb, library):
    only = [library["rockets"].pk]
    hits = search.search(kb, "cats purr", k=5, filters={"document_ids": only})

    assert {h.document_id for h in hits} == set(only)


def test_an_unknown_filter_is_an_error(kb, library):
    with pytest.raises(ValueError):
        search.search(kb, "cats", filters={"colour": "red"})


def test_other_knowledge_bases_are_not_searched(kb, library, bob):
    other = services.create_knowledge_base(bob, name="Other")
    add_ready(other, "dogs", "Dogs bark at the postman and fetch sticks.")

    assert {h.document_title for h in search.search(kb, "dogs bark", k=10)} <= set(DOCS)


def test_the_matrix_is_cached_until_the_version_changes(
    kb, library, django_assert_max_num_queries
):
    search.search(kb, "cats")
    with django_assert_max_num_queries(2):  # the version, then the hit rows
        search.search(kb, "cats")

    add_ready(kb, "dogs", "Dogs bark at the postman and fetch sticks.")
    kb.refresh_from_db()

    # the stale instance still finds the new document: the version is read fresh
    stale = KnowledgeBase.objects.get(pk=kb.pk)
    assert search.search(stale, "dogs bark postman", k=1)[0].document_title == "dogs"


def test_top_k_orders_best_first_and_breaks_ties_by_row():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.3], dtype=np.float32)

    assert list(top_k(scores, 3)) == [1, 3, 2]
    assert list(top_k(scores, 10)) == [1, 3, 2, 4, 0]
    assert list(top_k(scores[:0], 3)) == []


def test_the_cache_keeps_to_its_memory_budget_dropping_the_oldest(
    kb, library, bob, settings
):
    other = services.create_knowledge_base(bob, name="Other")
    add_ready(other, "dogs", "Dogs bark at the postman and fetch sticks.")
    settings.KNOWLEDGE_SEARCH_CACHE_MB = 0  # only the latest matrix stays

    search.search(kb, "cats")
    search.search(other, "dogs")

    assert list(search._cache) == [other.pk]
    settings.KNOWLEDGE_SEARCH_CACHE_MB = 1
    search.search(kb, "cats")
    assert list(search._cache) == [other.pk, kb.pk]
