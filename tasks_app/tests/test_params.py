"""The query-parameter kit every list endpoint parses with."""

import pytest
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from tasks_app.api import params
from tasks_app.api.fields import INT64_MAX


def request(**query):
    return Request(APIRequestFactory().get("/", query))


def refused(call, name):
    with pytest.raises(ValidationError) as caught:
        call()
    return name in caught.value.detail


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "²", "٣", " 1", ""])
def test_an_id_that_is_not_plain_ascii_digits_is_a_400_naming_it(value):
    assert refused(
        lambda: params.id_param(request(after=value), "after", "id"), "after"
    )


def test_an_id_is_bounded_unless_it_is_a_cursor():
    past = str(INT64_MAX + 1)
    assert refused(lambda: params.id_param(request(kb=past), "kb", "id"), "kb")
    assert params.id_param(request(kb=str(INT64_MAX)), "kb", "id") == INT64_MAX
    # a cursor past every id matches nothing; thousands of digits are no 500
    huge = params.id_param(request(after="9" * 5000), "after", "id", maximum=None)
    assert huge == INT64_MAX + 1
    assert refused(lambda: params.id_param(request(o="0"), "o", "id", minimum=1), "o")
    assert params.id_param(request(), "after", "id") is None


def test_bool_choice_and_datetime():
    assert params.bool_param(request(unread="true"), "unread") is True
    assert refused(lambda: params.bool_param(request(unread="1"), "unread"), "unread")
    assert params.choice_param(request(s="a"), "s", ["a", "b"]) == "a"
    assert refused(lambda: params.choice_param(request(s="c"), "s", ["a"]), "s")
    when = params.datetime_param(request(t="2026-01-01T08:00:00+08:00"), "t")
    assert when.isoformat() == "2026-01-01T00:00:00+00:00"
    assert refused(lambda: params.datetime_param(request(t="soon"), "t"), "t")
