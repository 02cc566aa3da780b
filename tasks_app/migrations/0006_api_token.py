# API tokens stored as hashes. The plain-text keys of DRF's authtoken table become
# hashed ApiToken rows (same keys, so clients keep working, now expiring after
# API_TOKEN_DAYS from this migration) and the plain-text rows are deleted.

import hashlib
from datetime import timedelta

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def hash_legacy_tokens(apps, schema_editor):
    from django.utils import timezone

    Token = apps.get_model("authtoken", "Token")
    ApiToken = apps.get_model("tasks_app", "ApiToken")
    days = getattr(settings, "API_TOKEN_DAYS", 90)
    expires = timezone.now() + timedelta(days=days) if days else None
    for token in Token.objects.all():
        ApiToken.objects.create(
            user_id=token.user_id,
            name="migrated from the plain-text token table",
            digest=hashlib.sha256(token.key.encode()).hexdigest(),
            prefix=token.key[:8],
            expires_at=expires,
        )
    Token.objects.all().delete()


class Migration(migrations.Migration):

    dependencies = [
        ('tasks_app', '0005_taskevent_queued_celery_id'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('authtoken', '0004_alter_tokenproxy_options'),
    ]

    operations = [
        migrations.CreateModel(
            name='ApiToken',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(blank=True, max_length=100)),
                ('digest', models.CharField(editable=False, max_length=64, unique=True)),
                ('prefix', models.CharField(editable=False, max_length=8)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('expires_at', models.DateTimeField(blank=True, null=True)),
                ('revoked_at', models.DateTimeField(blank=True, null=True)),
                ('last_used_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='api_tokens', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'verbose_name': 'API token',
                'indexes': [models.Index(fields=['user', '-created_at'], name='tasks_app_a_user_id_87c3fa_idx')],
            },
        ),
        migrations.RunPython(hash_legacy_tokens, migrations.RunPython.noop),
    ]
