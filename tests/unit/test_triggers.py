"""Trigger computation: expected instants are worked out by hand in the comments."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from alarmd.ical import CalendarError, parse_calendar
from alarmd.triggers import PlannedAlarm, plan_alarms
from tests.calendars import utc

BERLIN = ZoneInfo("Europe/Berlin")
ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def cal(body: str) -> str:
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:t\n{body.strip()}\nEND:VCALENDAR\n"


def plan(text: str, tz: ZoneInfo | None = None, window: tuple[datetime, datetime] = ALL_TIME) -> list[PlannedAlarm]:
    parsed = parse_calendar(cal(text))
    assert not parsed.errors
    out: list[PlannedAlarm] = []
    for obj in parsed.objects:
        out += plan_alarms(
            obj, calid="c", tz=tz or ZoneInfo("UTC"), window_start=window[0], window_end=window[1], owner="o@x"
        ).alarms
    return out


def triggers(text: str, tz: ZoneInfo | None = None) -> list[str]:
    return [p.payload.trigger for p in plan(text, tz)]


def test_relative_to_start_with_tzid() -> None:
    # 10:00 Berlin in November is 09:00Z; minus 15 minutes is 08:45Z.
    assert triggers("""
BEGIN:VEVENT
UID:a
DTSTART;TZID=Europe/Berlin:20261124T100000
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
END:VALARM
END:VEVENT""") == ["2026-11-24T08:45:00Z"]


def test_related_end_uses_dtend_or_duration() -> None:
    # DTEND 11:00Z + 5 min; DURATION 2h from 10:00Z = 12:00Z, minus 10 min.
    assert triggers("""
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
DTEND:20261124T110000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER;RELATED=END:PT5M
END:VALARM
END:VEVENT
BEGIN:VEVENT
UID:b
DTSTART:20261124T100000Z
DURATION:PT2H
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER;RELATED=END:-PT10M
END:VALARM
END:VEVENT""") == ["2026-11-24T11:05:00Z", "2026-11-24T11:50:00Z"]


def test_absolute_trigger_fires_once_regardless_of_start() -> None:
    assert triggers("""
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER;VALUE=DATE-TIME:20261120T073000Z
END:VALARM
END:VEVENT""") == ["2026-11-20T07:30:00Z"]


def test_repeat_makes_one_instance_per_repetition() -> None:
    assert triggers("""
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT30M
REPEAT:2
DURATION:PT10M
END:VALARM
END:VEVENT""") == ["2026-11-24T09:30:00Z", "2026-11-24T09:40:00Z", "2026-11-24T09:50:00Z"]


def test_floating_time_is_read_in_the_calendar_zone() -> None:
    # Floating 09:00 in Berlin (CET, +01:00) is 08:00Z; 1 hour before is 07:00Z.
    text = """
BEGIN:VEVENT
UID:a
DTSTART:20261124T090000
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT1H
END:VALARM
END:VEVENT"""
    assert triggers(text, BERLIN) == ["2026-11-24T07:00:00Z"]
    assert triggers(text, ZoneInfo("America/New_York")) == ["2026-11-24T13:00:00Z"]


def test_all_day_event_starts_at_local_midnight() -> None:
    # Midnight 2026-07-01 in Berlin (CEST, +02:00) is 2026-06-30T22:00Z; minus 15 min.
    planned = plan(
        """
BEGIN:VEVENT
UID:a
DTSTART;VALUE=DATE:20260701
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
END:VALARM
END:VEVENT""",
        BERLIN,
    )
    assert [p.payload.trigger for p in planned] == ["2026-06-30T21:45:00Z"]
    assert planned[0].payload.start == "2026-07-01"
    assert planned[0].payload.end == ""  # all-day without DTEND: one day, shown as no end


def test_todo_relative_to_due() -> None:
    planned = plan("""
BEGIN:VTODO
UID:t
DUE:20261124T170000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER;RELATED=END:-PT1H
END:VALARM
END:VTODO""")
    assert [(p.component, p.payload.trigger) for p in planned] == [("todo", "2026-11-24T16:00:00Z")]
    assert str(planned[0].ref).startswith("enp:///ics/todoalarm?calid=c&uid=t&rid=&aid=1")


def test_aid_is_the_valarm_uid_or_its_index_and_email_goes_to_attendees() -> None:
    planned = plan("""
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT5M
END:VALARM
BEGIN:VALARM
UID:mail-1
ACTION:EMAIL
SUMMARY:s
DESCRIPTION:d
ATTENDEE:mailto:a@example.com
ATTENDEE:mailto:b@example.com
TRIGGER:-PT10M
END:VALARM
END:VEVENT""")
    assert [(p.aid, p.action, p.payload.recipients) for p in planned] == [
        ("mail-1", "EMAIL", ["a@example.com", "b@example.com"]),
        ("1", "DISPLAY", ["o@x"]),
    ]


def test_cancelled_components_have_no_alarms() -> None:
    assert (
        triggers("""
BEGIN:VEVENT
UID:a
STATUS:CANCELLED
DTSTART:20261124T100000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT5M
END:VALARM
END:VEVENT""")
        == []
    )


def test_window_is_half_open() -> None:
    text = """
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:PT0S
REPEAT:1
DURATION:PT1H
END:VALARM
END:VEVENT"""
    window = (utc("2026-11-24T10:00:00Z"), utc("2026-11-24T11:00:00Z"))
    assert [p.payload.trigger for p in plan(text, window=window)] == ["2026-11-24T10:00:00Z"]


@pytest.mark.parametrize(
    ("alarm", "prop"),
    [
        ("ACTION:DISPLAY", "TRIGGER"),
        ("ACTION:DISPLAY\nTRIGGER;VALUE=DATE-TIME:20261120T073000", "TRIGGER"),
        ("ACTION:DISPLAY\nTRIGGER:-PT5M\nREPEAT:3", "DURATION"),
        ("ACTION:DISPLAY\nTRIGGER;RELATED=END:PT5M", "TRIGGER"),
    ],
)
def test_bad_alarms_name_the_uid_and_property(alarm: str, prop: str | None) -> None:
    text = cal(f"BEGIN:VTODO\nUID:bad-1\nDTSTART:20261124T100000Z\nBEGIN:VALARM\n{alarm}\nEND:VALARM\nEND:VTODO")
    (obj,) = parse_calendar(text).objects
    with pytest.raises(CalendarError, match="UID bad-1") as info:
        plan_alarms(obj, calid="c", tz=UTC, window_start=ALL_TIME[0], window_end=ALL_TIME[1])
    if prop:
        assert info.value.prop == prop


@pytest.mark.parametrize("text", ["", "hello", "BEGIN:VCARD\nEND:VCARD\n", b"\xff\xfeBEGIN"])
def test_not_icalendar(text: str | bytes) -> None:
    with pytest.raises(CalendarError, match="not"):
        parse_calendar(text)


def test_object_without_uid_is_reported_and_others_kept() -> None:
    parsed = parse_calendar(
        cal(
            "BEGIN:VEVENT\nDTSTART:20261124T100000Z\nEND:VEVENT\nBEGIN:VEVENT\nUID:ok\nDTSTART:20261124T100000Z\nEND:VEVENT"
        )
    )
    assert [o.uid for o in parsed.objects] == ["ok"]
    assert "no UID" in str(parsed.errors[0])


@pytest.mark.parametrize(
    ("organizer", "shown"),
    [
        ("ORGANIZER;CN=Ann Smith:mailto:ann@example.com", "Ann Smith <ann@example.com>"),
        ("ORGANIZER:mailto:ann@example.com", "ann@example.com"),
        ("ORGANIZER;CN=Ann:urn:uuid:1234", "Ann"),
        ("", ""),
    ],
)
def test_payload_carries_the_organizer(organizer: str, shown: str) -> None:
    [planned] = plan(f"""
BEGIN:VEVENT
UID:a
DTSTART:20261124T100000Z
{organizer}
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT5M
END:VALARM
END:VEVENT""")
    assert planned.payload.organizer == shown


def test_payload_carries_the_locale_given_at_enqueue() -> None:
    [obj] = parse_calendar(cal("BEGIN:VEVENT\nUID:a\nDTSTART:20261124T100000Z\n" + VALARM + "END:VEVENT")).objects
    start, end = ALL_TIME
    [planned] = plan_alarms(obj, calid="c", tz=ZoneInfo("UTC"), window_start=start, window_end=end, locale="de").alarms
    assert planned.payload.locale == "de"
    [default] = plan_alarms(obj, calid="c", tz=ZoneInfo("UTC"), window_start=start, window_end=end).alarms
    assert default.payload.locale == ""


VALARM = "BEGIN:VALARM\nACTION:DISPLAY\nTRIGGER:-PT5M\nEND:VALARM\n"
