"""Settings errors that can wait until start-up, as system checks with ids.

A value the process cannot even be configured without (SECRET_KEY, a rate that
does not parse) still fails at import in claw/settings.py; one that is merely out
of range is reported by `manage.py check` (and migrate, runserver, runstack)
with an id each app owns: <app>.E1xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import Error, register

Rule = tuple[str, Callable[[Any], bool], str]  # setting, valid(value), what it must be


def register_setting_rules(app_label: str, rules: list[Rule]) -> None:
    """One system check for an app's settings: rule n fails as <app_label>.E1nn."""

    def check(app_configs, **kwargs) -> list:
        return [
            Error(
                f"{name} must be {must}, got {getattr(settings, name)!r}",
                id=f"{app_label}.E{100 + number}",
            )
            for number, (name, valid, must) in enumerate(rules, 1)
            if not valid(getattr(settings, name))
        ]

    register(check, "settings")


def between(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: low <= value <= high
