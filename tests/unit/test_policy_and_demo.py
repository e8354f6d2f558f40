from datetime import UTC, datetime, timedelta

from alarmd.demo import DEMO_CALENDAR, schedule_demo_calendar
from alarmd.ical import parse_calendar
from alarmd.policy import parse_renl_id, retry_delay
from alarmd.triggers import plan_alarms


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(50) == timedelta(hours=1)
    assert retry_delay(0) == timedelta(seconds=30)


def test_parse_renl_id() -> None:
    assert parse_renl_id("42:3") == (42, 3)
    assert parse_renl_id("x:3") is None
    assert parse_renl_id("42") is None


def test_demo_calendar_fires_within_30_seconds() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, 500000, tzinfo=UTC)
    text = schedule_demo_calendar(DEMO_CALENDAR.read_text(), now)
    instants = []
    for obj in parse_calendar(text).objects:
        for p in plan_alarms(
            obj,
            calid="d",
            tz=UTC,
            window_start=now - timedelta(days=1),
            window_end=now + timedelta(days=1),
            min_interval=timedelta(0),  # as alarmd --demo runs it
        ).alarms:
            instants.append(p.trigger)
    assert len(instants) >= 4
    assert all(now < t <= now + timedelta(seconds=30) for t in instants)
