import pytest
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def test_issue_token_prints_the_same_token_until_rotated(django_user_model, capsys):
    user = django_user_model.objects.create_user("carol", password="carol-pass-1")
    call_command("issue_token", "carol")
    first = Token.objects.get(user=user).key
    assert first in capsys.readouterr().out
    call_command("issue_token", "carol")
    assert Token.objects.get(user=user).key == first
    call_command("issue_token", "carol", "--rotate")
    assert Token.objects.get(user=user).key != first


def test_issue_token_for_an_unknown_user_fails():
    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("issue_token", "nobody")
