# RateLimitWindow and AlertClaim moved here from the claw app with the rate
# limit and the staff-alert claim. The tables (claw_ratelimitwindow,
# claw_alertclaim) and their rows stay: Django's state only.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('claw', '0003_move_platform_models'),
        ('tasks_app', '0003_taskrecord_name_trigram'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='RateLimitWindow',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=200, unique=True)),
                        ('window', models.BigIntegerField(help_text='Index of the current window.')),
                        ('count', models.PositiveIntegerField(default=0)),
                    ],
                    options={
                        'db_table': 'claw_ratelimitwindow',
                    },
                ),
                migrations.CreateModel(
                    name='AlertClaim',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('key', models.CharField(max_length=64, unique=True)),
                        ('sent_at', models.DateTimeField()),
                    ],
                    options={
                        'db_table': 'claw_alertclaim',
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
