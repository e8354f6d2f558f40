"""AsyncAlarmQueue: the calendar-code calls from asyncio, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from alarmd import AsyncAlarmQueue, CalendarError, InvalidAlarm
from tests.calendars import display, event, utc
from tests.payloads import sample_payload

NOW = utc("2026-11-23T10:00:00Z")


async def test_put_enqueue_and_remove_awaited(database_url: str) -> None:
    async with AsyncAlarmQueue.from_url(database_url) as queue:
        put = await queue.put("jac", event("e1", NOW + timedelta(hours=1), display("-PT15M")), now=NOW, owner="j@x")
        assert (put.added, put.errors) == (1, [])
        single = sample_payload(uid="s1", trigger="2026-11-23T12:00:00Z")
        added = await queue.enqueue(iter([single]), now=NOW)  # any iterable
        assert (added.added, added.skipped) == (1, 0)
        assert [r.uid for r in queue.sync.list_alarms()] == ["e1", "s1"]
        assert await queue.remove("jac", "e1", now=NOW) == 1
        assert [r.uid for r in queue.sync.list_alarms()] == ["s1"]


async def test_errors_are_the_synchronous_ones(database_url: str) -> None:
    async with AsyncAlarmQueue.from_url(database_url) as queue:
        with pytest.raises(CalendarError):
            await queue.put("jac", "not a calendar", now=NOW)
        with pytest.raises(InvalidAlarm):
            await queue.enqueue([sample_payload(trigger="soon")], now=NOW)


async def test_the_event_loop_runs_while_the_database_works(sqlite_url: str) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    payloads = [sample_payload(uid=f"u{i}", trigger="2026-11-23T12:00:00Z") for i in range(5000)]
    async with AsyncAlarmQueue.from_url(sqlite_url) as queue:
        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await queue.enqueue(payloads, now=NOW)
        took = time.monotonic() - started
        ticker.cancel()
    assert ticks >= min(10, took / 0.001 / 4), (ticks, took)
