"""manage.py reindex_knowledge (moved here from tasks_app with its command)."""

from __future__ import annotations

from io import StringIO
from unittest.mock import patch

import pytest
from django.core.management import CommandError, call_command

from tasks_app.models import TaskRecord


def run(*args, **kwargs) -> str:
    out = StringIO()
    call_command(*args, stdout=out, **kwargs)
    return out.getvalue()


@pytest.mark.django_db
def test_reindex_knowledge_validates_the_mode_and_queues_update_knowledge_base():
    with pytest.raises(CommandError):
        call_command("reindex_knowledge", "1", "--mode", "sideways")
    try:
        from knowledge.models import KnowledgeBase
    except ImportError:
        KnowledgeBase = None
    if KnowledgeBase is not None:
        with pytest.raises(CommandError, match="kb: no knowledge base"):
            call_command("reindex_knowledge", "999999", "--mode", "full")
    out = run("reindex_knowledge", "999999", "--dry-run") if not KnowledgeBase else ""
    if out:
        assert (
            "Would queue knowledge.update_knowledge_base(999999, 'incremental')" in out
        )
    with patch("tasks_app.services.registered_tasks", return_value={}):
        kb = _a_knowledge_base(KnowledgeBase)
        with pytest.raises(CommandError, match="No task named"):
            call_command("reindex_knowledge", str(kb), "--mode", "rebuild")
    assert not TaskRecord.objects.exists()


def _a_knowledge_base(model) -> int:
    if model is None:
        return 1
    from django.contrib.auth import get_user_model

    fields = {f.name for f in model._meta.get_fields()}
    kwargs = {"name": "kb"} if "name" in fields else {}
    if "owner" in fields:
        kwargs["owner"] = get_user_model().objects.create(username="kb-owner")
    return model.objects.create(**kwargs).pk
