"""Forms behind the admin's "new task" and "edit and retry" pages."""

from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.utils import timezone
from django.utils.functional import lazy

from claw.celery import registered_tasks
from tasks_app import services


def _json_field(label: str, kind: type, initial) -> forms.CharField:
    return forms.CharField(
        label=label,
        initial=json.dumps(initial),
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        help_text=f"JSON {'list' if kind is list else 'object'}",
    )


class ArgumentsForm(forms.Form):
    args = _json_field("Positional arguments", list, [])
    kwargs = _json_field("Keyword arguments", dict, {})

    def _clean_json(self, name: str, kind: type):
        try:
            value = json.loads(
                self.cleaned_data[name] or ("[]" if kind is list else "{}")
            )
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, kind):
            raise forms.ValidationError(
                f"Must be a JSON {'list' if kind is list else 'object'}."
            )
        return value

    def clean_args(self):
        return self._clean_json("args", list)

    def clean_kwargs(self):
        return self._clean_json("kwargs", dict)


def task_choices() -> list[tuple[str, str]]:
    return [(n, n) for n in sorted(registered_tasks()) if not n.startswith("celery.")]


class NewTaskForm(ArgumentsForm):
    name = forms.ChoiceField(label="Task", choices=task_choices)
    queue = forms.ChoiceField(
        choices=[("", "(the task's own route)")]
        + [(q, q) for q in settings.CLAW_QUEUES],
        required=False,
    )
    priority = forms.IntegerField(min_value=0, max_value=9, initial=5)
    countdown = forms.FloatField(min_value=0, required=False, help_text="seconds")
    eta = forms.DateTimeField(
        required=False,
        help_text=lazy(
            lambda: (
                "YYYY-MM-DD HH:MM:SS, in the admin's time zone, "
                + timezone.get_current_timezone_name()
            ),
            str,
        )(),
    )

    field_order = ["name", "args", "kwargs", "queue", "priority", "countdown", "eta"]

    def clean(self):
        data = super().clean()
        if data.get("countdown") and data.get("eta"):
            raise forms.ValidationError("Give a countdown or an eta, not both.")
        # Refused here, with the form, rather than by services.submit as a 500.
        try:
            if data.get("countdown"):
                services.check_delay("countdown", data["countdown"])
            elif data.get("eta"):
                ahead = (data["eta"] - timezone.now()).total_seconds()
                services.check_delay("eta", ahead)
        except services.DelayTooLong as exc:
            self.add_error(exc.field, str(exc).partition(": ")[2])
        return data
