import re
from unittest import mock
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.ens import reference as reference_module
from common.ens.reference import EventReference, InvalidReference


def test_alarm_reference_round_trips_with_escaping() -> None:
    ref = EventReference.alarm("event", "jac", "a&b=c@example.com", "", "1")
    text = str(ref)
    assert text == "enp:///ics/eventalarm?calid=jac&uid=a%26b%3Dc@example.com&rid=&aid=1"
    assert EventReference.parse(text) == ref


def test_todo_reference_uses_todoalarm() -> None:
    assert str(EventReference.alarm("todo", "c", "u", "20261123T100000Z", "2")).startswith("enp:///ics/todoalarm?")


@pytest.mark.parametrize(
    ("subscription", "matches"),
    [
        ("enp:///ics/eventalarm", True),
        ("enp:///ics/eventalarm?calid=jac", True),
        ("enp:///ics/eventalarm?calid=jac&aid=1", True),
        ("enp:///ics/eventalarm?calid=bob", False),
        ("enp:///ics/eventalarm?calid=jac&extra=1", False),
        ("enp:///ics/todoalarm?calid=jac", False),
        ("enp+pool.mail:///ics/eventalarm?calid=jac", True),
    ],
)
def test_subscription_matches_when_its_parameters_are_a_subset(subscription: str, matches: bool) -> None:
    ref = EventReference.alarm("event", "jac", "u1", "", "1")
    assert EventReference.parse(subscription).matches(ref) is matches


def test_pool_is_parsed_from_the_scheme() -> None:
    sub = EventReference.parse("enp+pool.notifyd:///ics/eventalarm?calid=jac")
    assert sub.pool == "notifyd"
    assert sub.queue_suffix() == "pool.notifyd.ics.eventalarm?calid=jac"
    assert str(sub) == "enp+pool.notifyd:///ics/eventalarm?calid=jac"


@pytest.mark.parametrize(
    "text",
    [
        "http:///ics/eventalarm",
        "enp://host/ics/eventalarm",
        "enp:///",
        "enp+pool.a b:///x",
        "enp:///x?a=1&a=2",
        "enp:///ics/eventalarm??",
        "enp:///ics/eventalarm?a",
        "enp:///ics/eventalarm?a=1&&b=2",
    ],
)
def test_invalid_references_are_rejected(text: str) -> None:
    with pytest.raises(InvalidReference):
        EventReference.parse(text)


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_reference_is_written_as_urllib_quotes_it_and_reads_back(calid: str, uid: str) -> None:
    # The text skips quote() for values that need none: the same text either way.
    reference = EventReference("/ics/eventalarm", (("calid", calid), ("uid", uid)))
    expected = f"enp:///ics/eventalarm?calid={quote(calid, safe='@:,;')}&uid={quote(uid, safe='@:,;')}"
    assert str(reference) == expected
    assert EventReference.parse(str(reference)) == reference


def test_a_plus_in_a_calendar_id_survives_the_round_trip() -> None:
    # '+' was written as is and read back as a space by the query parser.
    reference = EventReference.alarm("event", "bob+work@example.com", "u", "", "1")
    assert "calid=bob%2Bwork@example.com" in str(reference)
    assert EventReference.parse(str(reference)).get("calid") == "bob+work@example.com"


def _parsed_by_urllib(text: str) -> EventReference | str:
    with mock.patch.object(reference_module, "_PLAIN_REFERENCE", re.compile("(?!)")):
        return _parsed(text)


def _parsed(text: str) -> EventReference | str:
    try:
        return EventReference.parse(text)
    except InvalidReference:
        return "invalid"


@given(st.text(alphabet="enp+ol.:/?&=%2#\t\n é-_~@,;ab", max_size=30), st.booleans())
def test_a_plain_reference_reads_as_urllib_reads_it(tail: str, prefixed: bool) -> None:
    # parse() reads the common, unquoted form itself: it must agree with urllib on everything.
    text = ("enp:///ics/eventalarm?" if prefixed else "") + tail
    assert _parsed(text) == _parsed_by_urllib(text)
