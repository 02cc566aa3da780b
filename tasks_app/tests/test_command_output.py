"""What the maintenance commands say: bad options are errors naming them, help
names the variables an operator sets, output reads as sentences."""

from __future__ import annotations

import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tasks_app import dashboard
from tasks_app.models import TaskRecord

pytestmark = pytest.mark.django_db
LONG_ERROR = (
    "ValueError: the upstream embedding service refused the request because "
    "the configured model identifier does not exist anymore"
)


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("batch", ["-5", "0", "many"])
def test_cleanup_results_refuses_a_batch_below_one(batch):
    with pytest.raises(CommandError, match="--batch: must be a whole number from 1"):
        call_command("cleanup_results", "--batch", batch)


def test_cleanup_results_help_names_the_retention_variables(capsys):
    with pytest.raises(SystemExit):
        call_command("cleanup_results", "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    for name in (
        "CLAW_RETENTION_SUCCESS_DAYS",
        "CLAW_RETENTION_REVOKED_DAYS",
        "CLAW_RETENTION_FAILURE_DAYS",
        "CLAW_RETENTION_OVERRIDES",
        "CELERY_RESULT_EXPIRES_DAYS",
    ):
        assert name in help_text
    assert "CLAW_RECORD_RETENTION_DAYS" not in help_text


def test_retry_failed_says_an_unknown_task_is_unknown():
    with pytest.raises(CommandError, match="unknown task 'no.such.task'"):
        call_command("retry_failed", "--task", "no.such.task", "--since", "2026-01-01")


def test_retry_failed_samples_end_at_a_word(alice):
    record = TaskRecord.objects.create(
        name="tests.fail",
        state=TaskRecord.State.FAILURE,
        celery_id="c-sample",
        error=LONG_ERROR + "\nTraceback line",
        finished_at=timezone.now(),
    )
    out = run(
        "retry_failed", "--task", "tests.fail", "--since", "2026-01-01", "--dry-run"
    )
    line = next(line for line in out.splitlines() if f"#{record.pk}" in line)
    sample = line.split(": ", 1)[1]
    assert sample.endswith("…") and len(sample) <= 100
    kept = sample.removesuffix("…")
    assert LONG_ERROR.startswith(kept)
    assert LONG_ERROR[len(kept)] == " "  # the cut falls between two words


def test_failure_groups_cut_long_errors_at_a_word():
    error = LONG_ERROR * 3
    normalised = dashboard.normalise_error(error + "\nTraceback")
    assert normalised.endswith("…") and len(normalised) <= 200
    assert error[len(normalised) - 1] == " "


def test_requeue_stuck_dry_run_reads_as_sentences(caplog):
    with caplog.at_level(logging.INFO):
        out = run("requeue_stuck", "--dry-run")
    assert "Stuck STARTED records would be marked LOST: none" in " ".join(out.split())
    assert "()" not in out and "{" not in out
    assert not [r for r in caplog.records if "{'lost'" in r.getMessage()]
