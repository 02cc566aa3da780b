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


# --- writing jobs ------------------------------------------------------------------


@pytest.fixture
def written(alice, kb, library):
    """A document job written in-process (no worker), with its task records."""
    from knowledge import jobs, sections

    outline = {
        "title": "Pets and rockets",
        "sections": [
            {
                "heading": doc.title,
                "key_points": [f"About {doc.title}"],
                "passages": [{"chunk_id": doc.chunks.get().pk}],
            }
            for doc in library[:2]
        ],
    }
    job = jobs.start_document_job(alice, outline=outline, job_id="doc-1").job
    for position in sections.plan_sections(job.pk).positions:
        sections.write_section(job.pk, position, final_attempt=True)
    sections.finish_document(job.pk, celery_id=job.task.celery_id)
    job.refresh_from_db()
    return job


def test_a_job_page_shows_its_outline_document_references_and_tasks(
    admin_client, written
):
    url = reverse("admin:knowledge_writingjob_change", args=[written.pk])

    html = admin_client.get(url).content.decode()

    assert 'class="claw-outline"' in html and "About Cats" in html
    assert 'class="claw-sections"' in html and "Rockets" in html
    assert 'class="claw-document"' in html and "# Pets and rockets" in html
    assert 'class="claw-references"' in html
    chunk = written.references[0]["chunk_id"]
    assert f"<td>{chunk}</td>" in html
    document = reverse(
        "admin:knowledge_document_change", args=[written.references[0]["document_id"]]
    )
    assert document in html
    task = reverse("admin:tasks_app_taskrecord_change", args=[written.task_id])
    assert task in html  # the job's task in the inline, linking to its timeline


def test_the_job_list_shows_state_and_progress(admin_client, written):
    html = admin_client.get(reverse("admin:knowledge_writingjob_changelist"))

    text = html.content.decode()
    assert "doc-1" in text and "Succeeded" in text and "2 of 2 sections" in text


def test_cancel_selected_jobs_reports_cancelled_and_skipped(
    admin_client, alice, kb, written
):
    from knowledge import jobs

    running = jobs.start_outline_job(
        alice, task_prompt="cats", knowledge_bases=[kb], job_id="plan"
    ).job
    url = reverse("admin:knowledge_writingjob_changelist")

    response = admin_client.post(
        url,
        {"action": "cancel_selected", "_selected_action": [running.pk, written.pk]},
        follow=True,
    )

    text = response.content.decode()
    assert "Cancelled 1 job(s); skipped 1 already finished (1 succeeded)." in text
    running.refresh_from_db()
    assert running.state == "cancelled"
    assert TaskRecord.objects.get(pk=running.task_id).state == "REVOKED"


def test_deleting_a_job_in_the_admin_cancels_its_tasks_first(admin_client, alice, kb):
    from knowledge import jobs
    from knowledge.models import WritingJob

    job = jobs.start_outline_job(
        alice, task_prompt="cats", knowledge_bases=[kb], job_id="plan"
    ).job
    url = reverse("admin:knowledge_writingjob_delete", args=[job.pk])

    response = admin_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not WritingJob.objects.exists()
    assert TaskRecord.objects.get(pk=job.task_id).state == "REVOKED"
