from __future__ import annotations

from unittest.mock import patch

import pytest

from knowledge import search, services, vectorizing


@pytest.fixture(autouse=True)
def _fresh_search_cache():
    # Test databases reuse ids and versions after a flush; a matrix cached by an
    # earlier test must not answer for a new knowledge base with the same id.
    search.clear_cache()
    yield
    search.clear_cache()


@pytest.fixture
def no_broker():
    """Submissions write their records; nothing reaches Redis."""
    with patch("tasks_app.services.app.send_task"):
        yield


@pytest.fixture
def kb(alice):
    return services.create_knowledge_base(alice, name="Handbook")


def add_ready(kb, title: str, content: str):
    """A document vectorized synchronously (no worker)."""
    document = services.add_document(kb, title=title, content=content, vectorize=False)
    vectorizing.vectorize_document(document.pk)
    document.refresh_from_db()
    return document
