"""Series planning: recurrence, overrides, acknowledgments, thinning, horizons.

Expected instants are worked out by hand in the comments (Europe/Berlin is
UTC+1 in winter and UTC+2 in summer; DST ends 2026-10-25 and starts 2027-03-28).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from alarmd.ical import CalendarError, CalendarObject, parse_calendar
from alarmd.recurrence import add_duration
from alarmd.triggers import next_alarms, plan_alarms, plan_queue
from tests.calendars import utc

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def cal(body: str) -> str:
    return f"BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:t\n{body.strip()}\nEND:VCALENDAR\n"


def one(body: str) -> CalendarObject:
    parsed = parse_calendar(cal(body))
    assert not parsed.errors, parsed.errors
    (obj,) = parsed.objects
    return obj


def instants(
    body: str, start: str, end: str, tz: ZoneInfo = BERLIN, min_interval: timedelta = timedelta(minutes=5)
) -> list[tuple[str, str, str]]:
    plan = plan_alarms(
        one(body), calid="c", tz=tz, window_start=utc(start), window_end=utc(end), min_interval=min_interval
    )
    return [(p.rid, p.aid, p.payload.trigger) for p in plan.alarms]


WEEKLY = """
BEGIN:VEVENT
UID:w
DTSTART;TZID=Europe/Berlin:20261019T090000
DTEND;TZID=Europe/Berlin:20261019T100000
RRULE:FREQ=WEEKLY
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15M
END:VALARM
END:VEVENT
"""


def test_weekly_series_keeps_local_time_across_dst_end() -> None:
    # Mondays 09:00 Berlin: Oct 19 is CEST (07:00Z), Oct 26 and Nov 2 are CET (08:00Z); alarm 15 min before.
    assert instants(WEEKLY, "2026-10-19T00:00:00Z", "2026-11-03T00:00:00Z") == [
        ("20261019T070000Z", "1", "2026-10-19T06:45:00Z"),
        ("20261026T080000Z", "1", "2026-10-26T07:45:00Z"),
        ("20261102T080000Z", "1", "2026-11-02T07:45:00Z"),
    ]


def test_override_moves_its_occurrence_and_brings_its_own_alarm() -> None:
    body = (
        WEEKLY
        + """
BEGIN:VEVENT
UID:w
RECURRENCE-ID;TZID=Europe/Berlin:20261026T090000
DTSTART;TZID=Europe/Berlin:20261027T140000
DTEND;TZID=Europe/Berlin:20261027T150000
BEGIN:VALARM
UID:moved-alarm
ACTION:EMAIL
ATTENDEE:mailto:a@example.com
TRIGGER:-PT1H
END:VALARM
END:VEVENT
BEGIN:VEVENT
UID:w
RECURRENCE-ID;TZID=Europe/Berlin:20261102T090000
DTSTART;TZID=Europe/Berlin:20261102T090000
STATUS:CANCELLED
END:VEVENT
"""
    )
    # Oct 26 moved to Tue 27th 14:00 CET = 13:00Z, its own alarm 1 h before; Nov 2 cancelled; Nov 9 as usual.
    assert instants(body, "2026-10-19T00:00:00Z", "2026-11-10T00:00:00Z") == [
        ("20261019T070000Z", "1", "2026-10-19T06:45:00Z"),
        ("20261026T080000Z", "moved-alarm", "2026-10-27T12:00:00Z"),
        ("20261109T080000Z", "1", "2026-11-09T07:45:00Z"),
    ]


def test_exdate_and_rdate() -> None:
    body = """
BEGIN:VEVENT
UID:x
DTSTART:20261201T100000Z
RRULE:FREQ=DAILY;COUNT=3
EXDATE:20261202T100000Z
RDATE:20261210T120000Z
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT10M
END:VALARM
END:VEVENT"""
    assert [t for _, _, t in instants(body, "2026-11-01T00:00:00Z", "2027-01-01T00:00:00Z")] == [
        "2026-12-01T09:50:00Z",
        "2026-12-03T09:50:00Z",
        "2026-12-10T11:50:00Z",
    ]


def test_absolute_trigger_in_a_series_fires_once() -> None:
    body = """
BEGIN:VEVENT
UID:a
DTSTART:20261201T100000Z
RRULE:FREQ=DAILY
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER;VALUE=DATE-TIME:20261130T080000Z
END:VALARM
END:VEVENT"""
    assert instants(body, "2026-11-01T00:00:00Z", "2027-01-01T00:00:00Z") == [("", "1", "2026-11-30T08:00:00Z")]


def test_rfc9074_acknowledged_and_snooze() -> None:
    body = """
BEGIN:VEVENT
UID:s
DTSTART:20261201T100000Z
RRULE:FREQ=DAILY;COUNT=3
BEGIN:VALARM
UID:orig
ACTION:DISPLAY
TRIGGER:-PT15M
ACKNOWLEDGED:20261202T094500Z
END:VALARM
BEGIN:VALARM
UID:snooze
RELATED-TO;RELTYPE=SNOOZE:orig
ACTION:DISPLAY
TRIGGER;VALUE=DATE-TIME:20261202T095000Z
END:VALARM
END:VEVENT"""
    # Dec 1 and 2 at 09:45Z are acknowledged; Dec 3 is not; the snooze fires once at 09:50Z on the 2nd.
    assert instants(body, "2026-11-01T00:00:00Z", "2027-01-01T00:00:00Z") == [
        ("", "snooze", "2026-12-02T09:50:00Z"),
        ("20261203T100000Z", "orig", "2026-12-03T09:45:00Z"),
    ]


def test_nominal_day_offset_across_dst_start() -> None:
    # Mon 2027-03-29 09:00 CEST = 07:00Z. -P1D is Sun 28th 09:00 local = 07:00Z (CEST since 01:00Z);
    # -PT1H is exact: 06:00Z. DST started in between, so the day before was only 23 hours long.
    body = """
BEGIN:VEVENT
UID:d
DTSTART;TZID=Europe/Berlin:20270329T090000
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-P1D
END:VALARM
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT1H
END:VALARM
END:VEVENT"""
    assert (
        instants(body, "2027-03-01T00:00:00Z", "2027-04-01T00:00:00Z")
        == [
            ("", "2", "2027-03-29T06:00:00Z"),
            ("", "1", "2027-03-28T07:00:00Z"),
        ][::-1]
    )


def test_add_duration_reads_a_gap_with_the_offset_before_it() -> None:
    # 2027-03-28 01:30 CET + P1D -> 2027-03-29 01:30 CEST = 23:30Z. 02:30 does not exist on 2027-03-28
    # in Berlin, so 2027-03-27 02:30 CET + P1D is read with the pre-gap offset +01: 01:30Z.
    assert add_duration(datetime(2027, 3, 28, 1, 30, tzinfo=BERLIN), timedelta(days=1)) == utc("2027-03-28T23:30:00Z")
    assert add_duration(datetime(2027, 3, 27, 2, 30, tzinfo=BERLIN), timedelta(days=1)) == utc("2027-03-28T01:30:00Z")
    assert add_duration(datetime(2027, 3, 27, 2, 30, tzinfo=BERLIN), -timedelta(hours=1)) == utc("2027-03-27T00:30:00Z")


def test_floating_and_all_day_series_are_read_in_the_calendar_zone() -> None:
    body = """
BEGIN:VEVENT
UID:f
DTSTART;VALUE=DATE:20261130
RRULE:FREQ=DAILY;COUNT=2
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-PT15H
END:VALARM
END:VEVENT"""
    # Midnight in New York is 05:00Z; 15 h earlier is 14:00Z the day before (09:00 local).
    assert instants(body, "2026-11-01T00:00:00Z", "2026-12-31T00:00:00Z", tz=NEW_YORK) == [
        ("20261130", "1", "2026-11-29T14:00:00Z"),
        ("20261201", "1", "2026-11-30T14:00:00Z"),
    ]


DENSE = """
BEGIN:VEVENT
UID:dense
DTSTART:20261201T100000Z
RRULE:FREQ=MINUTELY
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:PT0S
END:VALARM
END:VEVENT"""


def test_a_series_denser_than_the_minimum_interval_is_thinned_and_reported() -> None:
    plan = plan_alarms(
        one(DENSE), calid="c", tz=UTC, window_start=utc("2026-12-01T10:00:00Z"), window_end=utc("2026-12-01T11:00:00Z")
    )
    assert [p.trigger.strftime("%H:%M") for p in plan.alarms] == [f"10:{m:02d}" for m in range(0, 60, 5)]
    assert any("minimum interval" in w for w in plan.warnings)


def test_thinning_does_not_depend_on_the_window() -> None:
    obj = one(DENSE)

    def planned(start: str, end: str) -> set[datetime]:
        return {
            p.trigger for p in plan_alarms(obj, calid="c", tz=UTC, window_start=utc(start), window_end=utc(end)).alarms
        }

    whole = planned("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z")
    pieces = planned("2026-12-01T10:00:00Z", "2026-12-01T10:42:30Z") | planned(
        "2026-12-01T10:42:30Z", "2026-12-01T12:00:00Z"
    )
    assert whole == pieces


def test_an_absurdly_dense_series_is_bounded_in_time_and_reported() -> None:
    body = DENSE.replace("FREQ=MINUTELY", "FREQ=SECONDLY;COUNT=1000000000").replace(
        "20261201T100000Z", "20261130T100000Z"
    )
    started = time.monotonic()
    with pytest.raises(CalendarError) as info:
        plan_alarms(
            one(body),
            calid="c",
            tz=UTC,
            window_start=utc("2026-12-31T00:00:00Z"),
            window_end=utc("2027-01-07T00:00:00Z"),
        )
    assert (info.value.uid, info.value.prop) == ("dense", "RRULE")
    plain = DENSE.replace("FREQ=MINUTELY", "FREQ=SECONDLY")
    plan = plan_alarms(
        one(plain), calid="c", tz=UTC, window_start=utc("2027-06-01T00:00:00Z"), window_end=utc("2027-06-08T00:00:00Z")
    )
    assert plan.complete_until is not None
    assert plan.complete_until < utc("2027-06-08T00:00:00Z")
    assert any("occurrences" in w for w in plan.warnings)
    assert plan.alarms
    assert all(p.trigger < plan.complete_until for p in plan.alarms)
    assert time.monotonic() - started < 20


YEARLY = """
BEGIN:VEVENT
UID:birthday
DTSTART;VALUE=DATE:20000301
RRULE:FREQ=YEARLY
BEGIN:VALARM
ACTION:DISPLAY
TRIGGER:-P1D
END:VALARM
END:VEVENT"""


def test_next_alarms_reaches_past_the_horizon() -> None:
    # Next birthday after 2026-11-23 is 2027-03-01; the day before at midnight Berlin (CET) = 23:00Z on Feb 27.
    (following,) = next_alarms(one(YEARLY), calid="c", tz=BERLIN, after=utc("2026-11-23T00:00:00Z"))
    assert (following.rid, following.payload.trigger) == ("20270301", "2027-02-27T23:00:00Z")


def test_plan_queue_materialises_a_horizon_plus_the_next_instance() -> None:
    now = utc("2026-11-23T12:00:00Z")
    daily = one(WEEKLY.replace("FREQ=WEEKLY", "FREQ=DAILY"))
    plan = plan_queue(daily, calid="c", tz=BERLIN, now=now, horizon=timedelta(days=7))
    # Daily 08:45Z alarms from Nov 24 to Nov 30 fall within the 7 days; Dec 1's is the next beyond.
    assert [p.payload.trigger[:10] for p in plan.alarms] == [f"2026-11-{d}" for d in range(24, 31)] + ["2026-12-01"]
    assert plan.planned_until == now + timedelta(days=7)
    birthday = plan_queue(one(YEARLY), calid="c", tz=BERLIN, now=now, horizon=timedelta(days=7))
    assert [p.payload.trigger for p in birthday.alarms] == ["2027-02-27T23:00:00Z"]
    single = one(WEEKLY.replace("RRULE:FREQ=WEEKLY\n", "").replace("20261019", "20270601"))
    complete = plan_queue(single, calid="c", tz=BERLIN, now=now, horizon=timedelta(days=7))
    assert complete.planned_until is None
    assert [p.payload.trigger for p in complete.alarms] == ["2027-06-01T06:45:00Z"]


def test_a_finished_series_is_complete() -> None:
    finished = one(WEEKLY.replace("FREQ=WEEKLY", "FREQ=WEEKLY;COUNT=2"))
    plan = plan_queue(finished, calid="c", tz=BERLIN, now=utc("2026-11-23T00:00:00Z"), horizon=timedelta(days=7))
    assert plan.alarms == []
    assert plan.planned_until is None


@pytest.mark.parametrize(
    ("body", "prop"),
    [
        ("DTSTART:20261201T100000Z\nRRULE:FREQ=SOMETIMES", "RRULE"),
        ("DTSTART;TZID=Mars/Olympus:20261201T100000\nRRULE:FREQ=DAILY", "DTSTART"),
        ("DTSTART:20261201T100000Z\nRRULE:FREQ=DAILY\nEXDATE:yesterday", "EXDATE"),
        ("DTSTART:20261201T100000Z\nRDATE:2026-12-02", "RDATE"),
    ],
)
def test_bad_recurrence_data_names_the_object_and_property(body: str, prop: str) -> None:
    text = f"BEGIN:VEVENT\nUID:bad\n{body}\nBEGIN:VALARM\nACTION:DISPLAY\nTRIGGER:-PT5M\nEND:VALARM\nEND:VEVENT"
    with pytest.raises(CalendarError) as info:
        plan_alarms(
            one(text),
            calid="c",
            tz=UTC,
            window_start=utc("2026-11-01T00:00:00Z"),
            window_end=utc("2027-01-01T00:00:00Z"),
        )
    assert (info.value.uid, info.value.prop) == ("bad", prop)
    assert "UID bad" in str(info.value)
    assert prop in str(info.value)


def test_outlook_zone_names_are_understood() -> None:
    # "W. Europe Standard Time" without a VTIMEZONE is Windows' name for Europe/Berlin.
    body = WEEKLY.replace("TZID=Europe/Berlin", "TZID=W. Europe Standard Time").replace(
        "FREQ=WEEKLY", "FREQ=WEEKLY;COUNT=2"
    )
    assert instants(body, "2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z") == [
        ("20261019T070000Z", "1", "2026-10-19T06:45:00Z"),
        ("20261026T080000Z", "1", "2026-10-26T07:45:00Z"),
    ]
