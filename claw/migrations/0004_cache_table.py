# The default cache is a database table (settings.CACHES), shared by every web and
# worker process so that API throttles hold across them. `migrate` creates it, so
# `make run`, docker-compose and tests need no separate createcachetable step;
# with CACHE_URL pointing elsewhere (Redis) the command has nothing to create.

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias)


class Migration(migrations.Migration):

    dependencies = [
        ("claw", "0003_move_platform_models"),
    ]

    operations = [
        migrations.RunPython(create_cache_table, migrations.RunPython.noop),
    ]
