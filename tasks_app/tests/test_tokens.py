"""API tokens: only a hash stored, expiry, revocation, last use, legacy keys migrated."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from tasks_app import tokens
from tasks_app.models import ApiToken


def get(key: str):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/v1/tasks/")


@pytest.mark.django_db
def test_a_key_authenticates_but_the_database_holds_only_its_hash(alice):
    token, key = tokens.issue(alice)

    assert get(key).status_code == 200
    stored = ApiToken.objects.filter(pk=token.pk).values().get()
    assert key not in [str(value) for value in stored.values()]
    assert stored["digest"] == tokens.digest(key) and stored["prefix"] == key[:8]
    assert stored["last_used_at"] is not None
    assert token.expires_at > timezone.now() + timedelta(days=89)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "change, reason",
    [
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, "Token expired."),
        ({"revoked_at": timezone.now()}, "Token revoked."),
    ],
)
def test_an_expired_or_revoked_token_is_a_401_saying_which(alice, change, reason):
    token, key = tokens.issue(alice)
    ApiToken.objects.filter(pk=token.pk).update(**change)

    answer = get(key)

    assert answer.status_code == 401 and answer.json() == {"detail": reason}
    assert get("0" * 40).json() == {"detail": "Invalid token."}


@pytest.mark.django_db
def test_last_use_is_written_at_most_once_a_minute(alice):
    token, key = tokens.issue(alice)
    get(key)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    get(key)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(hours=1))
    get(key)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


@pytest.mark.django_db
def test_the_admin_shows_a_new_key_once_and_revokes_with_change_permission(
    client, staff, alice
):
    client.force_login(staff)
    add = "/admin/tasks_app/apitoken/add/"
    assert client.get(add).status_code == 403  # staff without add_apitoken
    staff.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_apitoken", "change_apitoken", "view_apitoken"]
        )
    )
    answer = client.post(
        add,
        {"user": alice.pk, "name": "ci", "expires_at_0": "2099-01-01", "expires_at_1": "00:00:00"},
        follow=True,
    )  # fmt: skip

    shown = [str(m) for m in answer.context["messages"]]
    key = next(m for m in shown if "shown only now" in m).split()[-1]
    assert get(key).status_code == 200
    token = ApiToken.objects.get(name="ci")
    assert token.user == alice and token.digest == tokens.digest(key)

    client.post(
        "/admin/tasks_app/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert get(key).status_code == 401


@pytest.mark.django_db(transaction=True)
def test_plain_text_tokens_from_before_are_hashed_and_keep_working(alice):
    before = [
        ("tasks_app", "0005_taskevent_queued_celery_id"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        old.get_model("authtoken", "Token").objects.create(
            key="a" * 40, user_id=alice.pk
        )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert get("a" * 40).status_code == 200
    assert ApiToken.objects.get(user=alice).expires_at is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM authtoken_token")
        assert cursor.fetchone() == (0,)
