"""Repeated failed admin logins lock that username out from that address."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/?next=/admin/"


def login(client: Client, username: str, password: str):
    return client.post(LOGIN, {"username": username, "password": password})


def logged_in(client: Client) -> bool:
    return client.get("/admin/").status_code == 200


def test_five_failures_lock_the_username_even_with_the_right_password(staff):
    client = Client(REMOTE_ADDR="203.0.113.7")
    for _ in range(4):
        assert login(client, "ops", "wrong").status_code == 200  # the form again
    locked = login(client, "ops", "wrong")

    assert locked.status_code == 429
    assert login(client, "ops", "ops-pass-1").status_code == 429
    assert not logged_in(client)

    # the same name from another address still logs in: an attacker guessing at
    # "ops" cannot lock staff out everywhere
    elsewhere = Client(REMOTE_ADDR="198.51.100.2")
    assert login(elsewhere, "ops", "ops-pass-1").status_code == 302
    call_command("axes_reset")
    assert login(client, "ops", "ops-pass-1").status_code == 302
    assert logged_in(client)


def test_a_success_before_the_limit_starts_the_count_again(staff):
    client = Client(REMOTE_ADDR="203.0.113.8")
    for _ in range(4):
        login(client, "ops", "wrong")
    assert login(client, "ops", "ops-pass-1").status_code == 302
    client.logout()
    for _ in range(4):
        login(client, "ops", "wrong")
    assert login(client, "ops", "ops-pass-1").status_code == 302
