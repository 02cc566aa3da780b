"""Whose objects a running task may change: its record owner's only.

A task takes raw ids (a message id, a knowledge base id), and a record's
arguments can be edited (staff's edit-and-retry). So every task that acts for
an owner checks, before it changes anything, that the objects its arguments
name belong to that owner:

    ownership.ensure_owned(kb.owner_id, what=f"knowledge base {kb.pk}")

The owner is the running record's, or for a canvas member (whose record is
published by Celery, with no owner) its root's: the update or job that fanned
out. No restriction applies where no user is the owner: a record without one
(periodic or system work), a record of a staff user (staff act on anyone's
objects, as in the admin), or code called outside a worker (a view or a
shell, which check access themselves).

NotOwned is a permanent failure: no task retries it, the record ends FAILURE,
and the domains' lifecycle handlers are not called for it
(lifecycle.dispatch), since the record's arguments name another user's objects.
"""

from __future__ import annotations

from celery import current_task

from tasks_app.models import TaskRecord

_UNKNOWN = object()


class NotOwned(PermissionError):
    """A task was asked to change an object its record's owner does not own."""


def acting_owner_id(celery_id: str | None = None) -> int | None:
    """The user the task runs for: the owner of the record whose attempt is
    celery_id (default: the task running in this process), or of its root.
    None when no restriction applies: no running task, no record, a record
    without owner, or one of a staff user."""
    request = None
    if celery_id is None:
        request = getattr(current_task, "request", None)
        if request is None or getattr(request, "called_directly", True):
            return None
        cached = getattr(request, "claw_owner_id", _UNKNOWN)
        if cached is not _UNKNOWN:
            return cached
        celery_id = request.id
    owner = _record_owner_id(celery_id, getattr(request, "claw_record", None))
    if request is not None:
        request.claw_owner_id = owner  # one lookup per run
    return owner


def _record_owner_id(celery_id: str | None, record_pk=None) -> int | None:
    row = _owner_row(celery_id, record_pk)
    return None if row is None else _acting(row)


def _owner_row(celery_id: str | None, record_pk=None) -> tuple | None:
    # The current attempt's id finds the record; the claw_record header (every
    # message submit() publishes carries it) also finds it for a delivery of
    # an earlier attempt, which must not run unrestricted either.
    fields = ("owner_id", "owner__is_staff", "root__owner_id", "root__owner__is_staff")
    row = TaskRecord.objects.filter(celery_id=celery_id).values_list(*fields).first()
    if row is None and str(record_pk or "").isdigit():
        row = TaskRecord.objects.filter(pk=int(record_pk)).values_list(*fields).first()
    return row


def _acting(row: tuple) -> int | None:
    owner, staff, root_owner, root_staff = row
    if owner is None:
        owner, staff = root_owner, root_staff
    # Staff act on anyone's objects (the admin, the API for staff).
    return None if staff else owner


def ensure_owned(
    *owner_ids: int | None, what: str = "object", celery_id: str | None = None
) -> None:
    """Raise NotOwned unless every object whose owner ids are given belongs to
    the user the task runs for (acting_owner_id; nobody: no restriction).

    An object without owner (None) belongs to nobody, so to no task's owner.
    celery_id: the record acted for, where it is not the running task (an
    errback ending its chord's parent)."""
    owner = acting_owner_id(celery_id)
    if owner is None:
        return
    if any(owner_id != owner for owner_id in owner_ids):
        raise NotOwned(f"{what} does not belong to this task's owner")


def ensure_same_owner(celery_id: str, *, what: str = "task") -> None:
    """Raise NotOwned unless the record whose attempt is celery_id (the parent a
    fan-out member reports its progress to) acts for the running task's owner.
    No such record (an attempt since retried): nothing of anyone's to protect."""
    row = _owner_row(celery_id)
    if row is not None:
        ensure_owned(_acting(row), what=what)
