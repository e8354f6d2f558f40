"""The dispatcher under faults and time trouble (SQLite, in-process bus, a clock the test sets):
catch-up after downtime, a bus that refuses publishes, a database that fails, clock jumps."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AckOutcome, AlarmQueue
from common.ens.abc import BusUnavailable
from common.ens.envelope import Ack, AckStatus, Notification
from common.ens.memory import MemoryBus
from common.settings import AlarmdSettings
from tests.calendars import display, event, utc
from tests.waiting import eventually

NOW = utc("2026-11-23T10:00:00Z")


@dataclass
class FakeClock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


class FlakyBus(MemoryBus):
    """The in-process bus, refusing publishes while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0

    async def publish(self, notification: Notification) -> None:
        if self.down:
            self.refused += 1
            raise BusUnavailable("broker unreachable (test)")
        await super().publish(notification)


@dataclass
class Setup:
    queue: AlarmQueue
    bus: FlakyBus
    dispatcher: Dispatcher
    clock: FakeClock
    published: Counter[str]  # uid → notifications received


def put_due(queue: AlarmQueue, uid: str, trigger: datetime) -> None:
    result = queue.put(
        "jac", event(uid, trigger + timedelta(minutes=5), display("-PT5M")), now=trigger - timedelta(hours=3)
    )
    assert not result.errors


@asynccontextmanager
async def dispatching(sqlite_url: str, **alarmd: object) -> AsyncIterator[Setup]:
    settings = replace(AlarmdSettings(), safety_poll=0.2, **alarmd)  # type: ignore[arg-type]
    queue = AlarmQueue.from_url(sqlite_url)
    bus = FlakyBus()
    await bus.start()
    clock = FakeClock()
    published: Counter[str] = Counter()

    async def record(notification: Notification) -> None:  # never acks: nothing is removed
        published[notification.ref.get("uid")] += 1

    await bus.subscribe("enp:///ics/eventalarm", record)
    dispatcher = Dispatcher(queue, bus, settings, clock=clock, node="test")
    try:
        yield Setup(queue, bus, dispatcher, clock, published)
    finally:
        await bus.close()
        queue.close()


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[asyncio.Task[None]]:
    """``dispatcher.run()`` as a task for the block; closed and awaited after it (an error in it fails the test)."""
    run = asyncio.create_task(dispatcher.run())
    try:
        yield run
    finally:
        await dispatcher.close(grace=0.1)
        await run


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_after_downtime_on_time_go_first_backlog_follows_at_the_catchup_rate(sqlite_url: str) -> None:
    async with dispatching(sqlite_url, catchup_rate=10.0, late_after=60.0, max_lateness=3600.0) as s:
        for n in range(30):
            put_due(s.queue, f"late{n:02d}", NOW - timedelta(minutes=50) + timedelta(seconds=60 * n))
        put_due(s.queue, "stale", NOW - timedelta(hours=2))
        for n in range(3):
            put_due(s.queue, f"now{n}", NOW - timedelta(seconds=n))

        assert await s.dispatcher.dispatch_once() == 13  # 3 on time + a burst of 10 backlog
        await settle()
        assert {f"now{n}" for n in range(3)} <= set(s.published)
        # The backlog goes most recent first: late29 (21 min overdue) down to late20.
        assert {u for u in s.published if u.startswith("late")} == {f"late{n}" for n in range(20, 30)}
        assert s.dispatcher.expired == 1
        assert [r.uid for r in s.queue.list_alarms(state="expired")] == ["stale"]

        assert await s.dispatcher.dispatch_once() == 0  # no tokens left
        s.clock.now = NOW + timedelta(seconds=0.5)
        assert await s.dispatcher.dispatch_once() == 5  # five more tokens in half a second
        s.clock.now = NOW + timedelta(seconds=5)
        assert await s.dispatcher.dispatch_once() == 10  # the burst is capped at the rate
        await settle()
        assert sum(s.published.values()) == 28
        assert max(s.published.values()) == 1


async def test_a_forward_clock_jump_sends_what_fell_due_under_the_catchup_rate(sqlite_url: str) -> None:
    async with dispatching(sqlite_url, catchup_rate=5.0, late_after=60.0) as s:
        for n in range(12):
            put_due(s.queue, f"e{n:02d}", NOW + timedelta(minutes=n + 1))
        assert await s.dispatcher.dispatch_once() == 0
        s.clock.now = NOW + timedelta(minutes=30)  # e.g. the host clock was corrected
        assert await s.dispatcher.dispatch_once() == 5
        s.clock.now += timedelta(seconds=1)
        assert await s.dispatcher.dispatch_once() == 5
        s.clock.now += timedelta(seconds=1)
        assert await s.dispatcher.dispatch_once() == 2
        await settle()
        assert sorted(s.published) == [f"e{n:02d}" for n in range(12)]


async def test_a_backward_clock_jump_stalls_no_longer_than_the_safety_poll(sqlite_url: str) -> None:
    async with dispatching(sqlite_url) as s:
        put_due(s.queue, "e1", NOW + timedelta(seconds=1))
        s.clock.now = NOW - timedelta(hours=1)  # set back: e1 now looks an hour away
        async with running(s.dispatcher):
            await asyncio.sleep(0.3)
            assert not s.published
            s.clock.now = NOW + timedelta(seconds=1)  # the clock is right again
            started = asyncio.get_running_loop().time()
            await eventually(lambda: s.published["e1"] == 1, within=2.0)
            assert asyncio.get_running_loop().time() - started <= 0.2 + 0.8  # the safety poll, and slack for a busy CI


async def test_a_bus_outage_pauses_claiming_and_loses_nothing(sqlite_url: str) -> None:
    async with dispatching(sqlite_url) as s:
        for n in range(20):
            put_due(s.queue, f"e{n:02d}", NOW)
        s.bus.down = True
        assert await s.dispatcher.dispatch_once() == 20
        assert s.bus.refused == 20
        assert s.queue.stats(now=NOW)["states"]["pending"] == 20  # handed back, attempts undone
        # Paused: each later claim takes one instance, as a probe.
        s.clock.now = NOW + timedelta(seconds=10)
        assert await s.dispatcher.dispatch_once() == 1
        assert s.bus.refused == 21
        s.bus.down = False
        s.clock.now = NOW + timedelta(seconds=20)
        assert await s.dispatcher.dispatch_once() == 1  # the probe gets through: claiming resumes
        assert await s.dispatcher.dispatch_once() == 19
        await settle()
        assert sorted(s.published) == [f"e{n:02d}" for n in range(20)]
        assert max(s.published.values()) == 1
        (record,) = [r for r in s.queue.list_alarms() if r.uid == "e00"]
        assert record.attempts == 1  # failed publishes are not attempts


async def test_the_run_loop_survives_a_bus_outage(sqlite_url: str) -> None:
    async with dispatching(sqlite_url) as s:
        put_due(s.queue, "e1", NOW)
        s.bus.down = True
        async with running(s.dispatcher) as run:
            await eventually(lambda: s.bus.refused >= 1)
            s.bus.down = False
            s.clock.now = NOW + timedelta(seconds=10)  # past the publish retry delay
            await eventually(lambda: s.published["e1"] == 1, within=5.0)
            assert not run.done()


async def test_enqueues_during_a_bus_outage_neither_cut_short_nor_grow_the_backoff(sqlite_url: str) -> None:
    async with dispatching(sqlite_url) as s:
        put_due(s.queue, "e1", NOW)
        s.bus.down = True
        async with running(s.dispatcher):
            await eventually(lambda: s.bus.refused >= 1)
            for n in range(5):  # each put of a due alarm wakes the dispatcher
                put_due(s.queue, f"w{n}", NOW)
                await asyncio.sleep(0.01)
            assert s.bus.refused == 1  # still in its first pause (0.5 s): no failing probe per wake-up
            s.bus.down = False
            s.clock.now = NOW + timedelta(seconds=10)  # past the publish retry delay
            # Within about the first pause, not the 16 s five doublings would have made it.
            await eventually(lambda: len(s.published) == 6, within=3.0)


async def test_the_run_loop_survives_a_database_outage(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with dispatching(sqlite_url) as s:
        put_due(s.queue, "e1", NOW)
        real_claim = s.queue.claim
        failures = 0

        def broken_claim(**kwargs: object) -> object:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise sa.exc.OperationalError("UPDATE alarms", {}, ConnectionError("database is down (test)"))
            return real_claim(**kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(s.queue, "claim", broken_claim)
        async with running(s.dispatcher) as run:
            await eventually(lambda: s.published["e1"] == 1, within=5.0)
            assert failures == 2
            assert not run.done()


async def test_an_ack_for_an_unknown_instance_is_ignored_and_quieter_when_redelivered(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After a broker restart it redelivers acks already applied: no operator should be woken for those."""
    caplog.set_level(logging.INFO, logger="alarmd.dispatcher")
    async with dispatching(sqlite_url) as setup:
        put_due(setup.queue, "kept", NOW)
        forged, redelivered = Ack("999:1", AckStatus.DELIVERED), Ack("998:1", AckStatus.DELIVERED, redelivered=True)
        await setup.dispatcher._on_ack(forged)
        await setup.dispatcher._on_ack(redelivered)
        await setup.dispatcher.close(grace=0.1)
        assert setup.dispatcher.acked == {AckOutcome.UNKNOWN.value: 2}
        assert [r.uid for r in setup.queue.list_alarms()] == ["kept"]  # nothing else touched
    levels = {r.__dict__.get("alarm"): r.levelno for r in caplog.records if r.getMessage() == "ack"}
    assert levels == {999: logging.WARNING, 998: logging.INFO}


async def test_an_ack_the_database_cannot_take_is_applied_when_it_can(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database restart while acks arrive: the ack waits and is applied, not dropped (which
    cost a republication per ack, and a dead-lettered message each, in the restart scenario)."""
    async with dispatching(sqlite_url) as s:
        put_due(s.queue, "e1", NOW)
        (claimed,) = s.queue.claim_due(now=NOW, limit=1, lease=timedelta(seconds=60), owner="test")
        real_ack_many = s.queue.ack_many
        failures = 0

        def broken_ack_many(*args: object, **kwargs: object) -> object:
            nonlocal failures
            if failures < 2:
                failures += 1
                raise sa.exc.OperationalError("DELETE alarms", {}, ConnectionError("database is down (test)"))
            return real_ack_many(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(s.queue, "ack_many", broken_ack_many)
        await asyncio.wait_for(s.dispatcher._on_ack(Ack(claimed.renl_id, AckStatus.DELIVERED)), 10.0)
        assert failures == 2
        assert s.dispatcher.acked == {AckOutcome.DELETED.value: 1}
        assert s.queue.list_alarms() == []
