"""Sources a writing job may draw on without naming any: the caller's ready
knowledge bases, and texts sent inline ({file name: text})."""

from __future__ import annotations

import pytest

from knowledge import services
from knowledge.models import Document, KnowledgeBase
from knowledge.tests.conftest import add_ready

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def test_ready_knowledge_bases_are_the_owners_with_a_ready_document(alice, bob, kb):
    empty = services.create_knowledge_base(alice, name="Empty")
    pending = services.create_knowledge_base(alice, name="Pending")
    services.add_document(pending, title="T", content="Not yet.", vectorize=False)
    add_ready(kb, "Cats", "Cats purr.")
    theirs = services.create_knowledge_base(bob, name="Bob's")
    add_ready(theirs, "Dogs", "Dogs bark.")

    assert services.ready_knowledge_bases(alice) == [kb]
    assert empty not in services.ready_knowledge_bases(alice)


def test_context_files_become_documents_of_one_knowledge_base_once(alice):
    files = {"intro.md": "# 人工智能\n\n**AI** 是一个领域。", "notes": "Plain text."}

    first = services.add_context_files(alice, files)
    again = services.add_context_files(alice, files)

    assert [d.pk for d in first] == [d.pk for d in again]
    kb = KnowledgeBase.objects.get(owner=alice, name=services.CONTEXT_KNOWLEDGE_BASE)
    assert [(d.title, d.content, d.source) for d in first] == [
        ("人工智能", "人工智能\n\nAI 是一个领域。", "intro.md"),
        ("notes", "Plain text.", "notes"),
    ]
    assert {d.knowledge_base_id for d in first} == {kb.pk}
    services.vectorize_now(first)
    assert set(
        Document.objects.filter(knowledge_base=kb).values_list("status", flat=True)
    ) == {"ready"}
    with pytest.raises(services.InvalidInput, match="context_files"):
        services.add_context_files(alice, {"blank.txt": "   "})
