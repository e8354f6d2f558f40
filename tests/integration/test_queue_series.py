"""Recurring series in the queue: horizon, next instance, extension, edits. Both databases."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from alarmd.queue import AlarmQueue
from common.db.tables import sources
from common.ens.envelope import AckStatus
from tests.calendars import utc

NOW = utc("2026-11-23T12:00:00Z")
LEASE = timedelta(seconds=60)


def series(uid: str = "daily", rule: str = "FREQ=DAILY", start: str = "20261120T090000", extra: str = "") -> str:
    """A Berlin 09:00 series (08:00Z in winter) with one alarm 15 minutes before."""
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\nBEGIN:VEVENT\r\n"
        f"UID:{uid}\r\nDTSTART;TZID=Europe/Berlin:{start}\r\nDURATION:PT1H\r\nRRULE:{rule}\r\nSUMMARY:Standup\r\n"
        "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\n"
        f"{extra}END:VCALENDAR\r\n"
    )


def override(uid: str, rid: str, start: str, trigger: str = "-PT15M") -> str:
    return (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nRECURRENCE-ID;TZID=Europe/Berlin:{rid}\r\n"
        f"DTSTART;TZID=Europe/Berlin:{start}\r\nDURATION:PT1H\r\nSUMMARY:Moved\r\n"
        f"BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:{trigger}\r\nEND:VALARM\r\nEND:VEVENT\r\n"
    )


def triggers(queue: AlarmQueue, uid: str = "daily") -> list[str]:
    return [r.trigger.strftime("%m-%dT%H:%M") for r in queue.list_alarms(uid=uid, limit=1000)]


def planned_until(queue: AlarmQueue, uid: str) -> object:
    with queue.engine.connect() as conn:
        return conn.execute(sa.select(sources.c.planned_until).where(sources.c.uid == uid)).scalar()


def test_a_series_is_queued_up_to_the_horizon_plus_its_next_instance(queue: AlarmQueue) -> None:
    result = queue.put("jac", series(), now=NOW)
    # 07:45Z daily: Nov 24..30 lie within NOW + 7 days (Nov 30 12:00Z); Dec 1 is the next one beyond.
    assert triggers(queue) == [f"11-{d}T07:45" for d in range(24, 31)] + ["12-01T07:45"]
    assert (result.added, result.warnings) == (8, [])
    assert planned_until(queue, "daily") == NOW + timedelta(days=7)


def test_a_yearly_series_keeps_its_next_instance_queued(queue: AlarmQueue) -> None:
    queue.put("jac", series("bday", "FREQ=YEARLY", "20000301T090000"), now=NOW)
    assert triggers(queue, "bday") == ["03-01T07:45"]


def test_extend_horizon_adds_what_came_into_range_once(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    queue.put("jac", series("bday", "FREQ=YEARLY", "20000301T090000"), now=NOW)
    # Half a day later nothing is due for extension (each series is topped up about once a day).
    assert queue.extend_horizon(now=NOW + timedelta(hours=12)) == 0
    later = NOW + timedelta(days=3)
    # The instances of Nov 24..26 were delivered meanwhile; the horizon moves on regardless.
    for claimed in queue.claim_due(now=later, limit=100, lease=LEASE, owner="t"):
        queue.ack(claimed.id, claimed.attempt, AckStatus.DELIVERED, "", now=later, retry_delay=LEASE)
    assert queue.extend_horizon(now=later) == 2
    assert triggers(queue) == [f"11-{d}T07:45" for d in range(27, 31)] + [f"12-0{d}T07:45" for d in range(1, 5)]
    assert planned_until(queue, "daily") == later + timedelta(days=7)
    assert queue.extend_horizon(now=later) == 0
    assert triggers(queue, "bday") == ["03-01T07:45"]


def test_a_finished_series_is_not_extended(queue: AlarmQueue) -> None:
    queue.put("jac", series("short", "FREQ=DAILY;COUNT=6"), now=NOW)
    # Nov 20..25: only 24 and 25 are still ahead; nothing is left after them.
    assert triggers(queue, "short") == ["11-24T07:45", "11-25T07:45"]
    assert planned_until(queue, "short") is None
    assert queue.extend_horizon(now=NOW + timedelta(days=30)) == 0


def test_moving_an_occurrence_moves_its_alarm_and_keeps_the_rest(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    before = {r.trigger: r.id for r in queue.list_alarms(uid="daily")}
    # Nov 26 moves to 14:00 Berlin (13:00Z): its alarm moves to 12:45Z, every other instance keeps its row.
    result = queue.put("jac", series(extra=override("daily", "20261126T090000", "20261126T140000")), now=NOW)
    assert (result.added, result.removed) == (1, 1)
    after = {r.trigger: r.id for r in queue.list_alarms(uid="daily")}
    assert utc("2026-11-26T07:45:00Z") not in after
    assert utc("2026-11-26T12:45:00Z") in after
    assert {t: i for t, i in after.items() if t in before} == {t: i for t, i in before.items() if t in after}
    rids = {r.rid for r in queue.list_alarms(uid="daily") if r.trigger == utc("2026-11-26T12:45:00Z")}
    assert rids == {"20261126T080000Z"}


def test_an_edit_does_not_republish_an_instance_in_flight(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    due = utc("2026-11-24T07:45:00Z")
    (inflight,) = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    # The summary changes while the reminder is being sent: the instance stays in flight, not due again.
    queue.put("jac", series().replace("SUMMARY:Standup", "SUMMARY:Daily standup"), now=due)
    row = next(r for r in queue.list_alarms(uid="daily") if r.id == inflight.id)
    assert row.state == "inflight"
    assert queue.claim_due(now=due + timedelta(seconds=1), limit=10, lease=LEASE, owner="t") == []


def test_cutting_a_series_short_removes_its_later_instances(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    result = queue.put("jac", series(rule="FREQ=DAILY;UNTIL=20261126T235959Z"), now=NOW)
    assert triggers(queue) == ["11-24T07:45", "11-25T07:45", "11-26T07:45"]
    assert result.removed == 5
    assert planned_until(queue, "daily") is None


def test_an_overdue_instance_still_in_the_calendar_survives_a_reput(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    # alarmd was down: Nov 24's instance is overdue when the calendar is put again.
    late = utc("2026-11-24T09:00:00Z")
    result = queue.put("jac", series(), now=late)
    assert "11-24T07:45" in triggers(queue)
    assert result.removed == 0


def test_remove_drops_every_pending_instance_of_a_series(queue: AlarmQueue) -> None:
    queue.put("jac", series(), now=NOW)
    assert queue.remove("jac", "daily", now=NOW) == 8
    assert triggers(queue) == []
    assert queue.extend_horizon(now=NOW + timedelta(days=3)) == 0


def test_a_bad_series_in_a_batch_leaves_nothing_half_written(queue: AlarmQueue) -> None:
    good = series("good")
    queue.put("jac", series("bad"), now=NOW)
    ids_before = {r.id for r in queue.list_alarms(uid="bad")}
    bad = series("bad", rule="FREQ=SOMETIMES")
    both = good.replace("END:VCALENDAR\r\n", "") + bad.split("PRODID:t\r\n", 1)[1]
    result = queue.put("jac", both, now=NOW)
    assert [(e.uid, e.prop) for e in result.errors] == [("bad", "RRULE")]
    assert len(triggers(queue, "good")) == 8
    # The bad edit is refused as a whole: the series keeps what it had.
    assert {r.id for r in queue.list_alarms(uid="bad")} == ids_before


async def test_alarmd_periodic_job_extends_the_horizon_at_start_and_on_schedule(sqlite_url: str) -> None:
    import asyncio

    from alarmd.jobs import extend_horizon, start_periodic_jobs
    from common.settings import AlarmdSettings

    queue = AlarmQueue.from_url(sqlite_url)
    queue.put("jac", series(), now=NOW)
    later = NOW + timedelta(days=3)
    assert await extend_horizon(queue, clock=lambda: later) == 1
    assert triggers(queue)[-1] == "12-04T07:45"
    # The scheduler runs the job once at start-up (catching up after downtime), then every extend_every.
    even_later = NOW + timedelta(days=6)
    scheduler = start_periodic_jobs(queue, AlarmdSettings(extend_every=0.2), clock=lambda: even_later)
    try:
        for _ in range(100):
            if triggers(queue)[-1] == "12-07T07:45":
                break
            await asyncio.sleep(0.05)
    finally:
        scheduler.shutdown(wait=False)
        queue.close()
    assert triggers(queue)[-1] == "12-07T07:45"
