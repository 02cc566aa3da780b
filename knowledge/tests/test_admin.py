"""The knowledge admin through Django's test client."""

from __future__ import annotations

import pytest
from django.urls import reverse

from knowledge import services
from knowledge.models import Document, KnowledgeBase
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


@pytest.fixture
def library(kb):
    return [
        add_ready(kb, "Cats", "Cats purr when they are content. They nap a lot."),
        add_ready(kb, "Rockets", "Rockets burn kerosene to reach orbit."),
        add_ready(kb, "茶", "绿茶和红茶是最常见的两种茶叶。"),
    ]


def test_knowledge_base_list_shows_counts_and_last_vectorized(admin_client, library):
    response = admin_client.get(reverse("admin:knowledge_knowledgebase_changelist"))

    html = response.content.decode()
    assert response.status_code == 200
    assert "hashing:v1 (384)" in html
    assert "?knowledge_base__id__exact=" in html  # documents link with the count
    assert 'class="field-chunks_">3<' in html
    assert "field-last_vectorized nowrap" in html  # a date, shown


def test_the_change_page_has_a_search_box_that_shows_ranked_results(
    admin_client, kb, library
):
    change = admin_client.get(
        reverse("admin:knowledge_knowledgebase_change", args=[kb.pk])
    ).content.decode()
    search_url = reverse("admin:knowledge_knowledgebase_search", args=[kb.pk])
    assert 'id="kb-search"' in change and search_url in change
    # above the form and its Save/Delete buttons, where an operator looks first
    assert change.index('id="kb-search"') < change.index('class="submit-row"')

    response = admin_client.get(search_url, {"q": "kerosene rockets orbit", "k": 3})

    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="search-results"' in html
    rows = html.split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert len(rows) == 3
    assert "Rockets" in rows[0]  # ranked: the best match first
    assert reverse("admin:knowledge_document_change", args=[library[1].pk]) in rows[0]


def test_the_search_page_without_a_query_shows_only_the_form(admin_client, kb):
    url = reverse("admin:knowledge_knowledgebase_search", args=[kb.pk])

    html = admin_client.get(url).content.decode()

    assert 'name="q"' in html and 'id="search-results"' not in html


def test_adding_a_knowledge_base_goes_through_the_service(admin_client, admin_user):
    response = admin_client.post(
        reverse("admin:knowledge_knowledgebase_add"),
        {
            "owner": admin_user.pk,
            "name": "From admin",
            "description": "",
            "embedding_provider": "hashing",
            "embedding_model": "",
            "embedding_dimension": 64,
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    kb = KnowledgeBase.objects.get(name="From admin")
    assert (kb.embedding_model, kb.embedding_dimension) == ("v1", 64)


def test_an_invalid_embedding_choice_is_a_form_error(admin_client, admin_user):
    response = admin_client.post(
        reverse("admin:knowledge_knowledgebase_add"),
        {
            "owner": admin_user.pk,
            "name": "Bad",
            "embedding_provider": "hashing",
            "embedding_model": "",
            "embedding_dimension": 9000,
        },
    )

    assert response.status_code == 200
    assert "dimension must be 1 to 8192" in response.content.decode()
    assert not KnowledgeBase.objects.exists()


def test_document_page_shows_status_and_its_tasks_inline(admin_client, kb):
    document = services.add_document(kb, title="Doc", content="Some text.")
    record = TaskRecord.objects.get(object_id=document.pk)

    html = admin_client.get(
        reverse("admin:knowledge_document_change", args=[document.pk])
    ).content.decode()

    assert "claw-badge" in html and "Pending" in html
    assert reverse("admin:tasks_app_taskrecord_change", args=[record.pk]) in html
    assert "knowledge.vectorize_document" in html


def test_adding_a_document_in_the_admin_queues_its_vectorize(admin_client, kb):
    response = admin_client.post(
        reverse("admin:knowledge_document_add"),
        {
            "knowledge_base": kb.pk,
            "title": "Typed in",
            "source": "",
            "content": "Written in the admin.",
            "tasks_app-taskrecord-content_type-object_id-TOTAL_FORMS": "0",
            "tasks_app-taskrecord-content_type-object_id-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    document = Document.objects.get(title="Typed in")
    assert TaskRecord.objects.get().target == document


def test_document_actions_report_what_they_queued_and_skipped(
    admin_client, kb, library
):
    empty = services.add_document(kb, title="Empty", content="x", vectorize=False)
    changelist = reverse("admin:knowledge_document_changelist")
    ids = [d.pk for d in library] + [empty.pk]

    vectorize = admin_client.post(
        changelist,
        {"action": "vectorize_selected", "_selected_action": ids},
        follow=True,
    )
    delete = admin_client.post(
        changelist,
        {"action": "delete_vectors_selected", "_selected_action": ids},
        follow=True,
    )

    assert "Queued vectorizing 4 document(s)." in vectorize.content.decode()
    assert (
        "Queued deleting the vectors of 3 document(s); skipped 1 without vectors."
        in delete.content.decode()
    )
    names = list(TaskRecord.objects.values_list("name", flat=True))
    assert names.count("knowledge.vectorize_document") == 4
    assert names.count("knowledge.delete_knowledge_vectors") == 3


def test_knowledge_base_actions_queue_updates_and_deletions(admin_client, kb, library):
    empty = services.create_knowledge_base(kb.owner, name="Empty")
    changelist = reverse("admin:knowledge_knowledgebase_changelist")

    rebuild = admin_client.post(
        changelist,
        {"action": "rebuild_selected", "_selected_action": [kb.pk, empty.pk]},
        follow=True,
    )
    delete = admin_client.post(
        changelist,
        {"action": "delete_vectors_selected", "_selected_action": [kb.pk, empty.pk]},
        follow=True,
    )

    assert "Queued a rebuild update of 2 knowledge base(s)." in rebuild.content.decode()
    assert "skipped 1 without vectors" in delete.content.decode()
    update = TaskRecord.objects.filter(name="knowledge.update_knowledge_base")
    assert sorted(update.values_list("args", flat=True)) == sorted(
        [[kb.pk, "rebuild"], [empty.pk, "rebuild"]]
    )
