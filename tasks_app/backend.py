"""django-celery-results' database backend, taught to write a result and the
ledger's SUCCESS together, to respect ledger refusals and to survive a database
restart."""

from __future__ import annotations

from celery import states
from django.db import InterfaceError, OperationalError, connection, connections
from django.utils import timezone
from django_celery_results.backends.database import DatabaseBackend

from tasks_app import services, starts
from tasks_app.models import TaskRecord

# Kept from the first store of a task id; every other column takes the new value.
KEPT_ON_CONFLICT = ("task_id", "date_created")


class LedgerBackend(DatabaseBackend):
    """TaskResult rows as django-celery-results stores them, one upsert each.

    - STARTED is not stored: the ledger's task_prerun write has it, and
      _get_task_meta_for answers STARTED from there.
    - SUCCESS commits with the ledger's STARTED -> SUCCESS transition and its event
      (services.mark_succeeded), so a finished task is one write; the task_success
      receiver then has nothing left to do.
    - Other states are one INSERT ... ON CONFLICT (task_id) DO UPDATE.
    """

    def _store_result(
        self, task_id, result, status, traceback=None, request=None, **kw
    ):
        # Skipping STARTED also keeps a refused delivery (a redelivery of a
        # finished task) from overwriting the result stored by the run that did it.
        if status == states.STARTED:
            return result
        upsert = self._upsert(task_id, result, status, traceback, request)
        if status == states.SUCCESS:
            services.mark_succeeded(task_id, also=upsert)
            if request is not None:
                request.claw_succeeded = True  # read by the task_success receiver
        else:
            with connection.cursor() as cursor:
                cursor.execute(*upsert)
        return result

    def _upsert(self, task_id, result, status, traceback, request) -> tuple:
        """INSERT ... ON CONFLICT of the row DatabaseBackend._store_result writes.

        date_started is the ledger's started_at of the attempt, read in the same
        statement (this backend stores no STARTED row to take it from), or the
        run's start when the ledger's STARTED is not written yet (starts).
        """
        content_type, content_encoding, result = self.encode_content(result)
        meta = {
            **self._get_meta_from_request(request),
            "children": self.current_task_children(request),
        }
        values = {
            "task_id": task_id,
            "status": status,
            "result": result,
            "traceback": traceback,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "meta": self.encode_content(meta)[2],
            **self._get_extended_properties(request, traceback),
            "date_created": timezone.now(),
            "date_done": timezone.now(),
        }
        model = self.TaskModel._meta
        qn = connection.ops.quote_name
        fields = [model.get_field(name) for name in values]
        columns = [qn(f.column) for f in fields]
        start = starts.pending(task_id)
        started = (
            f"(SELECT started_at FROM {qn(TaskRecord._meta.db_table)}"
            " WHERE celery_id = %s)"
            if start is None
            # a run whose STARTED is written by this very statement (starts)
            else "%s"
        )
        updates = ", ".join(
            f"{column} = EXCLUDED.{column}"
            for f, column in zip(fields, columns, strict=True)
            if f.name not in KEPT_ON_CONFLICT
        )
        sql = (
            f"INSERT INTO {qn(model.db_table)} ({', '.join(columns)}, date_started)"
            f" VALUES ({', '.join(['%s'] * len(fields))}, {started})"
            f" ON CONFLICT (task_id) DO UPDATE SET {updates},"
            " date_started = EXCLUDED.date_started"
        )
        params = [f.get_db_prep_save(values[f.name], connection) for f in fields]
        if start is None:
            return sql, [*params, task_id]
        at = TaskRecord._meta.get_field("started_at").get_db_prep_value(
            start.at, connection
        )
        return sql, [*params, at]

    def _get_task_meta_for(self, task_id):
        meta = super()._get_task_meta_for(task_id)
        if meta.get("status") == states.PENDING and (
            TaskRecord.objects.filter(
                celery_id=task_id, state=TaskRecord.State.STARTED
            ).exists()
        ):
            meta["status"] = states.STARTED  # the ledger's, see the class docstring
        return meta

    def exception_safe_to_retry(self, exc) -> bool:
        # A restarted PostgreSQL leaves a dead connection behind. Storing a result
        # is an idempotent upsert by task id, so drop the connection and store again
        # (result_backend_always_retry) rather than fail a task whose work is done.
        if isinstance(exc, InterfaceError | OperationalError):
            for conn in connections.all(initialized_only=True):
                conn.close()
            return True
        return super().exception_safe_to_retry(exc)
