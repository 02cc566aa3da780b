import pytest
from django.core.management import CommandError, call_command

from tasks_app import tokens
from tasks_app.models import ApiToken

pytestmark = pytest.mark.django_db


def issued(capsys) -> str:
    return capsys.readouterr().out.split()[-1]


def test_issue_token_prints_a_key_once_and_stores_only_its_hash(
    django_user_model, capsys
):
    user = django_user_model.objects.create_user("carol", password="carol-pass-1")
    call_command("issue_token", "carol")
    first = issued(capsys)
    token = ApiToken.objects.get(user=user)
    assert token.digest == tokens.digest(first) and first not in token.digest
    assert tokens.authenticate(first).user == user
    call_command("issue_token", "carol")
    second = issued(capsys)
    assert second != first and tokens.authenticate(first).user == user
    call_command("issue_token", "carol", "--rotate", "--days", "0")
    third = issued(capsys)
    for old in (first, second):
        with pytest.raises(tokens.TokenRefused, match="revoked"):
            tokens.authenticate(old)
    assert tokens.authenticate(third).expires_at is None


def test_issue_token_for_an_unknown_user_fails():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("issue_token", "nobody")
