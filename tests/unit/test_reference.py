import pytest

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
    ["http:///ics/eventalarm", "enp://host/ics/eventalarm", "enp:///", "enp+pool.a b:///x", "enp:///x?a=1&a=2"],
)
def test_invalid_references_are_rejected(text: str) -> None:
    with pytest.raises(InvalidReference):
        EventReference.parse(text)
