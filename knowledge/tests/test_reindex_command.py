"""reindex_knowledge --dry-run lists the documents the update would vectorize."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from knowledge import services
from knowledge.tests.conftest import add_ready
from tasks_app.models import TaskRecord

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_broker")]


def dry_run(kb, mode: str) -> str:
    out = StringIO()
    call_command(
        "reindex_knowledge", str(kb.pk), "--mode", mode, "--dry-run", stdout=out
    )
    return out.getvalue()


def test_a_dry_run_lists_the_documents_each_mode_would_vectorize(kb):
    unchanged = add_ready(kb, "Unchanged", "Nothing new here.")
    edited = add_ready(kb, "Edited", "Old text.")
    services.update_document(edited, content="New text.", vectorize=False)

    incremental = dry_run(kb, "incremental")
    full = dry_run(kb, "full")
    rebuild = dry_run(kb, "rebuild")

    assert "'Handbook': 1 document(s) to vectorize." in incremental
    assert f"#{edited.pk} 'Edited' (ready, changed since vectorized)" in incremental
    assert "Unchanged" not in incremental
    assert f"#{unchanged.pk} 'Unchanged' (ready)" in full and "'Edited'" in full
    assert "2 document(s) to vectorize after deleting every vector." in rebuild
    assert not TaskRecord.objects.filter(name=services.UPDATE).exists()
    unchanged.refresh_from_db()
    assert unchanged.chunk_count and unchanged.status == "ready"  # nothing touched
