"""API building blocks every domain's serializers use: text and numbers validated
exactly as the schema states them, and references to the caller's own objects.

DRF would read "5" as 5, 1.5 as a pk of 1 and 42 as the text "42", and trim text
past its maxLength; a client sending the wrong type should hear so (the schema
fuzzing's negative cases check it).
"""

from __future__ import annotations

from django.core.validators import ProhibitNullCharactersValidator, RegexValidator
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.fields import empty
from rest_framework.relations import MANY_RELATION_KWARGS

INT64_MAX = 2**63 - 1
BLANK = " \t\n\r"  # what "blank" means for names and prompts (not Unicode spaces)


class VisibleText(RegexValidator):
    """Has a character other than space, tab, CR, LF (or NUL, which is dropped).

    The pattern is what the OpenAPI schema publishes (JSON Schema patterns match
    anywhere); the check itself is plain Python.
    """

    def __init__(self):
        super().__init__(r"[^\x00 \t\n\r]")

    def __call__(self, value):
        if not str(value).strip("\x00" + BLANK):
            raise serializers.ValidationError("Must not be blank.")


class TextField(serializers.CharField):
    """Text validated exactly as its schema says: not trimmed (trimming would let a
    value through maxLength, or make it blank, unlike the schema), strings only
    (DRF would accept a number), and NUL
    characters, which PostgreSQL cannot store, dropped after validation instead of
    refused. visible: it must have a character other than blanks."""

    def __init__(self, *, visible: bool = True, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        kwargs.setdefault("allow_blank", not visible)
        super().__init__(**kwargs)
        self.validators = [
            v
            for v in self.validators
            if not isinstance(v, ProhibitNullCharactersValidator)
        ]
        if visible:
            self.validators.append(VisibleText())

    def to_internal_value(self, data):
        if not isinstance(data, str):  # DRF would turn 42 into "42"
            self.fail("invalid")
        return super().to_internal_value(data)

    def run_validation(self, data=empty):
        value = super().run_validation(data)
        return value.replace("\x00", "") if isinstance(value, str) else value


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictManyRelatedField(serializers.ManyRelatedField):
    """A list of references that is a list: DRF takes any iterable, so an object
    ({}) would pass as no references at all."""

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list", input_type=type(data).__name__)
        return super().to_internal_value(data)


class OwnedReferenceField(serializers.PrimaryKeyRelatedField):
    """An id of one of the caller's objects. One that does not exist or is someone
    else's is a 404 naming the field, as the object's own URL would answer; it
    does not say which of the two."""

    def __init__(self, **kwargs):
        kwargs.setdefault("pk_field", StrictIntegerField(min_value=1))
        super().__init__(**kwargs)

    @classmethod
    def many_init(cls, *args, **kwargs):
        # RelatedField.many_init, with a list that must be a list
        list_kwargs = {"child_relation": cls(*args, **kwargs)}
        for key in kwargs:
            if key in MANY_RELATION_KWARGS:
                list_kwargs[key] = kwargs[key]
        return StrictManyRelatedField(**list_kwargs)

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if exc.get_codes() != ["does_not_exist"]:
                raise
            # a list item's own field name is "": name the list
            name = self.field_name or self.parent.field_name
            label = self.queryset.model._meta.verbose_name
            raise NotFound({name: f"No such {label}: {data}."}) from None
