from datetime import UTC, datetime, timedelta

import pytest

from alarmd.demo import DEMO_CALENDAR, schedule_demo_calendar
from alarmd.ical import parse_calendar
from alarmd.policy import parse_renl_id, retry_delay
from alarmd.queue import UnknownTimeZone, parse_tz
from alarmd.triggers import plan_alarms


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(50) == timedelta(hours=1)
    assert retry_delay(0) == timedelta(seconds=30)


def test_parse_renl_id() -> None:
    assert parse_renl_id("42:3") == (42, 3)
    assert parse_renl_id("x:3") is None
    assert parse_renl_id("42") is None
    assert parse_renl_id(f"{2**63 - 1}:1") == (2**63 - 1, 1)


def test_parse_renl_id_refuses_what_alarmd_never_writes() -> None:
    for forged in (
        f"{2**63}:1",
        "99999999999999999999999:1",
        f"1:{2**31}",
        "1:0",
        "٣:1",
        "²:1",
        "1:٣",
        "+1:1",
        " 1:1",
        "1:1 ",
        "1:1:1",
        ":1",
        "1:",
        "-1:1",
        "1.0:1",
    ):
        assert parse_renl_id(forged) is None, forged


@pytest.mark.parametrize("name", ["Europe", "Europe/", "../etc/passwd", "", "Mars/Olympus_Mons", "Europe/Paris\x00"])
def test_a_zone_name_that_is_not_a_zone_is_an_unknown_time_zone(name: str) -> None:
    with pytest.raises(UnknownTimeZone, match="is not an IANA zone name"):
        parse_tz(name)


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
