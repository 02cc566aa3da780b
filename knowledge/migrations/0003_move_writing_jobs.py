# Writing jobs moved to the writing app. Their tables stay where they are
# (writing.models keeps the names with db_table): only Django's state changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('knowledge', '0002_writing_jobs'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='WritingSection'),
                migrations.DeleteModel(name='WritingJob'),
            ],
            database_operations=[],
        ),
    ]
