# The cluster-wide rate limit (tasks_app.ratelimit) and the staff-alert claim
# (tasks_app.alerts) moved to the platform with their models. The tables stay
# (tasks_app's models name them with db_table): only Django's state changes.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('claw', '0002_conversations'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name='RateLimitWindow'),
                migrations.DeleteModel(name='AlertClaim'),
            ],
            database_operations=[],
        ),
    ]
