"""Indexes no query needs, dropped: every ledger write (an INSERT and two UPDATEs
per task, none of them HOT because state is indexed) adds an entry to each.

- TaskRecord.owner and .content_type, TaskEvent.record: their foreign-key indexes
  repeat the first column of taskrecord_owner_id, taskrecord_target and
  taskevent_record_id, which serve the same lookups.
- TaskRecord.celery_id's varchar_pattern_ops index (PostgreSQL): Django adds it to
  a unique CharField for LIKE 'prefix%'; celery_id is only ever matched whole,
  which its unique index serves.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _celery_id_like(schema_editor) -> str:
    # the name Django gave it (BaseDatabaseSchemaEditor._create_like_index_sql)
    return schema_editor._create_index_name(
        "tasks_app_taskrecord", ["celery_id"], suffix="_like"
    )


def drop_celery_id_like(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {_celery_id_like(schema_editor)}")


def create_celery_id_like(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {_celery_id_like(schema_editor)} "
            "ON tasks_app_taskrecord (celery_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("tasks_app", "0009_rollups"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name="taskevent",
            name="record",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="events",
                to="tasks_app.taskrecord",
            ),
        ),
        migrations.AlterField(
            model_name="taskrecord",
            name="content_type",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                to="contenttypes.contenttype",
            ),
        ),
        migrations.AlterField(
            model_name="taskrecord",
            name="owner",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="task_records",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(drop_celery_id_like, create_celery_id_like),
    ]
