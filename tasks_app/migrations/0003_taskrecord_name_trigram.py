"""A trigram index for the admin's task-name search (tasks_app.admin.search_records).

PostgreSQL only: on SQLite the search scans, which is fine at the sizes the
embedded stack holds. Built CONCURRENTLY (so the migration is not atomic) because
the table may already hold millions of rows that must stay writable meanwhile. A
database role that may not create the pg_trgm extension gets no index: the search
still works, by scanning, and a warning says so.
"""

import logging

from django.db import DatabaseError, migrations

logger = logging.getLogger(__name__)
INDEX = "taskrecord_name_trgm"


def create_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    try:
        schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DatabaseError as exc:
        logger.warning("No trigram index for task-name search: %s", exc)
        return
    schema_editor.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {INDEX} ON tasks_app_taskrecord"
        " USING gin (UPPER(name) gin_trgm_ops)"
    )


def drop_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("tasks_app", "0002_staff_alert")]

    operations = [migrations.RunPython(create_index, drop_index, elidable=False)]
