# Writing jobs moved here from the knowledge app. The tables stay as they are
# (knowledge_writingjob, knowledge_writingsection and the job's many-to-many
# tables, named by db_table): this migration creates Django's state only, and
# moves the content types, so the task records that target a job (their
# content_type) and the admin permissions follow the models.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ('writingjob', 'writingsection')


def move_content_types(apps, schema_editor, old='knowledge', new='writing'):
    ContentType = apps.get_model('contenttypes', 'ContentType')
    for model in MOVED:
        if not ContentType.objects.filter(app_label=new, model=model).exists():
            ContentType.objects.filter(app_label=old, model=model).update(
                app_label=new
            )


def move_content_types_back(apps, schema_editor):
    move_content_types(apps, schema_editor, old='writing', new='knowledge')


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('contenttypes', '0002_remove_content_type_name'),
        ('knowledge', '0003_move_writing_jobs'),
        ('tasks_app', '0002_staff_alert'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='WritingJob',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('job_id', models.CharField(help_text="The client's id for the job, unique per owner.", max_length=100)),
                        ('kind', models.CharField(choices=[('outline', 'Outline from a query'), ('document', 'Document from an outline')], max_length=10)),
                        ('state', models.CharField(choices=[('pending', 'Pending'), ('running', 'Running'), ('succeeded', 'Succeeded'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='pending', max_length=10)),
                        ('task_prompt', models.TextField(blank=True, help_text='What to write about (outline jobs search with it).')),
                        ('outline', models.JSONField(blank=True, help_text='{title, sections: [{heading, key_points, passages}]}: the result of an outline job, the input of a document job.', null=True)),
                        ('allow_missing_sections', models.BooleanField(default=False, help_text='A failed section is left out (marked missing) instead of failing the job.')),
                        ('title', models.CharField(blank=True, max_length=300)),
                        ('content', models.TextField(blank=True, help_text='The written document.')),
                        ('references', models.JSONField(blank=True, default=list, help_text='The passages the document cites.')),
                        ('missing_sections', models.JSONField(blank=True, default=list)),
                        ('progress_done', models.PositiveIntegerField(default=0)),
                        ('progress_total', models.PositiveIntegerField(default=0)),
                        ('error', models.TextField(blank=True)),
                        ('request_hash', models.CharField(help_text='sha256 of the request: the same job_id for another request is refused.', max_length=64)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('context_documents', models.ManyToManyField(blank=True, help_text='Search only these documents (besides whole knowledge bases).', related_name='+', to='knowledge.document')),
                        ('knowledge_bases', models.ManyToManyField(blank=True, related_name='writing_jobs', to='knowledge.knowledgebase')),
                        ('outline_job', models.ForeignKey(blank=True, help_text='The outline job a document job took its outline from.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='document_jobs', to='writing.writingjob')),
                        ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='writing_jobs', to=settings.AUTH_USER_MODEL)),
                        ('result_document', models.ForeignKey(blank=True, help_text='The document added to the target knowledge base.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.document')),
                        ('target_knowledge_base', models.ForeignKey(blank=True, help_text='Where the written document is added (and vectorized).', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='knowledge.knowledgebase')),
                        ('task', models.ForeignKey(blank=True, help_text="The job's task; a document job's sections are its children.", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='tasks_app.taskrecord')),
                    ],
                    options={
                        'db_table': 'knowledge_writingjob',
                        'ordering': ['-id'],
                    },
                ),
                migrations.CreateModel(
                    name='WritingSection',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('position', models.PositiveIntegerField(help_text='0-based order in the outline.')),
                        ('heading', models.CharField(max_length=300)),
                        ('key_points', models.JSONField(blank=True, default=list)),
                        ('passages', models.JSONField(blank=True, default=list, help_text='The supporting passages, numbered [1], [2], ... in the text.')),
                        ('status', models.CharField(choices=[('pending', 'Pending'), ('writing', 'Writing'), ('done', 'Done'), ('failed', 'Failed'), ('cancelled', 'Cancelled')], default='pending', max_length=10)),
                        ('content', models.TextField(blank=True)),
                        ('error', models.TextField(blank=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('job', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='sections', to='writing.writingjob')),
                    ],
                    options={
                        'db_table': 'knowledge_writingsection',
                        'ordering': ['job_id', 'position'],
                    },
                ),
                migrations.AddIndex(
                    model_name='writingjob',
                    index=models.Index(fields=['owner', '-id'], name='writingjob_owner_id'),
                ),
                migrations.AddIndex(
                    model_name='writingjob',
                    index=models.Index(fields=['state', '-id'], name='writingjob_state_id'),
                ),
                migrations.AddConstraint(
                    model_name='writingjob',
                    constraint=models.UniqueConstraint(fields=('owner', 'job_id'), name='writingjob_owner_job_id'),
                ),
                migrations.AddConstraint(
                    model_name='writingsection',
                    constraint=models.UniqueConstraint(fields=('job', 'position'), name='writingsection_job_position'),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_types, move_content_types_back),
    ]
