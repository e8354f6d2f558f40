"""Real database faults on PostgreSQL: the server terminates the services' connections.

An admin connection of the test's own runs ``pg_terminate_backend`` on every client
backend of the test database, as an operator (or a restart, a failover, an idle
connection cut by a firewall) would, repeatedly and while work is flowing. Besides
those storms, :meth:`Terminator.after` terminates every backend from inside a
transaction, right after a chosen statement ran, so that the paths where a claim, an
ack or a batch of the delivery log fails half way are taken on every run, not only
when a storm happens to hit them.

- alarmd's :class:`Dispatcher` publishes a stream of a few hundred alarms through it:
  each is published and acked ``delivered``, no attempt is published twice, and no
  instance is published again before its lease ran out (README, "When things go wrong").
- The LISTEN/NOTIFY wake-up (``alarmd.wakeup``) reconnects: an alarm enqueued by
  another process right after a termination, or once the listener is back, is
  dispatched at once, not at the 30 s safety poll (README, "Wake-ups").
- notifyd's :class:`SqlDeliveryLog` keeps one connection for its batches, out of the
  pool's pre-ping: a terminated one is replaced without failing the batch, so the
  :class:`Notifier` acks every notification and mails none twice, redeliveries included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from alarmd.dispatcher import Dispatcher
from alarmd.queue import NOTIFY_CHANNEL, AlarmQueue
from alarmd.wakeup import listen_for_enqueues
from common.clock import utcnow
from common.db.engine import create_engine_from_url
from common.db.tables import alarm_history, alarms, deliveries
from common.ens.envelope import Ack, AckStatus, Notification
from common.ens.memory import MemoryBus
from common.ens.reference import EventReference
from common.payload import format_utc
from common.settings import AlarmdSettings, Settings
from notifyd.dedup import Delivery, SqlDeliveryLog
from notifyd.service import Notifier
from notifyd.smtp import SendResult
from tests.buses import Tally
from tests.calendars import display, event
from tests.messages import parse_message
from tests.payloads import notification, sample_payload
from tests.services import POSTGRES_ADMIN_URL
from tests.waiting import eventually

pytestmark = pytest.mark.postgres

PROMPTLY = 5.0  # seconds: "at once", against a safety poll of 30 s
LISTENING = f"LISTEN {NOTIFY_CHANNEL}"  # what pg_stat_activity shows for the listener's connection
RETENTION = timedelta(days=14)
NOW = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)  # the notifier's clock

# SELECT … pg_terminate_backend(pid, timeout): returns once the backend has exited, so the
# next statement on its connection fails for sure.
TERMINATE = sa.text(
    """
    SELECT pid, query, pg_terminate_backend(pid, 5000) AS terminated
    FROM pg_stat_activity
    WHERE datname = :database AND backend_type = 'client backend' AND pid <> pg_backend_pid()
    """
)


# ------------------------------------------------------------------ terminating connections


@dataclass
class KillAfter:
    """See :meth:`Terminator.after`; ``hits`` counts the terminations it made."""

    marker: str
    times: int
    hits: int = 0


class Terminator:
    """Terminates every client backend of one database from an admin connection of its own."""

    def __init__(self, database_url: str) -> None:
        self.database = make_url(database_url).database
        self._admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def terminate(self) -> list[str]:
        """End every backend now (blocking); return the last query of each."""
        with self._admin.connect() as conn:
            rows = conn.execute(TERMINATE, {"database": self.database}).all()
        return [str(row.query) for row in rows if row.terminated]

    async def storm(self, seconds: float, every: float) -> list[int]:
        """Terminate every backend every ``every`` seconds for ``seconds``; return how many
        each round ended (none when nothing was connected at that instant)."""
        ended: list[int] = []
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            ended.append(len(await asyncio.to_thread(self.terminate)))
            await asyncio.sleep(every)
        return ended

    def after(self, engine: sa.Engine, marker: str, times: int = 1) -> KillAfter:
        """Terminate every backend (the statement's own among them) right after a statement
        containing ``marker`` has run on ``engine``, the first ``times`` times: the rest of that
        transaction then fails on a dead connection."""
        kill = KillAfter(marker, times)

        def after_cursor_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if kill.hits < kill.times and kill.marker in statement:
                kill.hits += 1
                self.terminate()

        sa.event.listen(engine, "after_cursor_execute", after_cursor_execute)
        return kill

    def close(self) -> None:
        self._admin.dispose()


@pytest.fixture
def terminator(clean_postgres_url: str) -> Iterator[Terminator]:
    made = Terminator(clean_postgres_url)
    yield made
    made.close()


# ------------------------------------------------------------------ alarmd


def ref_of(uid: str) -> str:
    """The event reference of the one alarm (aid 1) of ``uid`` in calendar ``jac``."""
    return str(EventReference.alarm("event", "jac", uid, "", "1"))


def iso_ms(instant: datetime) -> str:
    """A UTC instant to the millisecond, as a payload's ``trigger`` may be written."""
    return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WatchedQueue(AlarmQueue):
    """alarmd's queue, counting the dispatcher's trips to sleep: each ends with ``next_due_at``."""

    rests = 0

    def next_due_at(self, *, not_before: datetime | None = None) -> datetime | None:
        found = super().next_due_at(not_before=not_before)
        self.rests += 1  # after the query: from now on only a wake-up (or the poll) ends the sleep
        return found


@dataclass
class Alarmd:
    """A dispatcher in this process on the in-memory bus, with a subscriber that acks ``delivered``."""

    queue: WatchedQueue
    dispatcher: Dispatcher
    tally: Tally
    run: asyncio.Task[None]

    def received(self, uid: str) -> int:
        return self.tally.by_ref[ref_of(uid)]

    def has_published(self, uid: str) -> Callable[[], bool]:
        return lambda: self.received(uid) > 0

    def assert_running(self) -> None:
        assert not self.run.done(), "the dispatcher's run() ended"


@asynccontextmanager
async def running_alarmd(database_url: str, settings: AlarmdSettings) -> AsyncIterator[Alarmd]:
    queue = WatchedQueue(create_engine_from_url(database_url))
    bus = MemoryBus()
    await bus.start()
    tally = Tally(acks_on=bus)
    subscription = await bus.subscribe("enp:///ics/eventalarm", tally)
    dispatcher = Dispatcher(queue, bus, settings, node="alarmd-under-fire")
    run = asyncio.create_task(dispatcher.run())
    try:
        yield Alarmd(queue, dispatcher, tally, run)
    finally:
        await dispatcher.close(grace=1.0)
        await run  # raises what run() ended with, if anything
        await subscription.cancel()
        await bus.close()
        queue.close()


def count_rows(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


STREAM = 400  # alarms
SPACING = timedelta(milliseconds=10)  # between their triggers: a stream of 4 s
LEASE = 3.0  # alarmd.ack_timeout, seconds: a lost ack is republished this long after its claim


async def test_the_dispatcher_delivers_a_stream_while_its_connections_are_terminated_again_and_again(
    clean_postgres_url: str, terminator: Terminator, caplog: pytest.LogCaptureFixture
) -> None:
    """400 alarms due over 4 s; while they flow every backend is terminated four times a second,
    and a claim and two ack batches lose their connection half way. Every alarm is published
    and acked ``delivered``, none twice within its lease, and run() never ends."""
    caplog.set_level(logging.INFO, logger="alarmd.dispatcher")
    # A short lease and backoff, so that what a termination costs (a lost ack) comes back within the test.
    settings = replace(AlarmdSettings(), ack_timeout=LEASE, retry_base=0.5, retry_cap=2.0)
    uids = [f"s{n:03d}" for n in range(STREAM)]
    checker = create_engine_from_url(clean_postgres_url)
    try:
        async with running_alarmd(clean_postgres_url, settings) as a:
            now = utcnow()
            first = now + timedelta(seconds=1)
            stream = [sample_payload(uid=uid, trigger=iso_ms(first + n * SPACING)) for n, uid in enumerate(uids)]
            assert (await asyncio.to_thread(a.queue.enqueue, stream, now=now)).added == STREAM
            await eventually(lambda: a.tally.received > 0, what="the first publication")

            # The stream is flowing. A claim and two ack batches lose their connection half way
            # through their transaction; and until the last alarm is due every backend is
            # terminated again and again (each time the dispatcher finds that out, its pause
            # before the next claim doubles: at most the rounds during those pauses find nothing).
            claims = terminator.after(a.queue.engine, "claimed_by=")
            acks = terminator.after(a.queue.engine, "DELETE FROM alarms", times=2)
            last = first + (STREAM - 1) * SPACING
            ended = await terminator.storm((last - utcnow()).total_seconds(), every=0.25)
            assert sum(n > 0 for n in ended) >= 3, f"backends ended per round: {ended}"
            a.assert_running()

            await eventually(
                lambda: set(a.tally.by_ref) == {ref_of(uid) for uid in uids},
                within=20.0,
                what=f"every one of the {STREAM} alarms published",
            )
            await eventually(
                lambda: count_rows(checker, alarms) == 0, within=20.0, what="every alarm acked delivered and removed"
            )
            a.assert_running()
            assert (claims.hits, acks.hits) == (1, 2)

        # None published twice: each attempt once, and a new attempt only after the lease of the one before.
        assert set(a.tally.by_renl.values()) == {1}, [r for r, n in a.tally.by_renl.items() if n > 1]
        published: dict[str, list[datetime]] = {}
        delivered: Counter[str] = Counter()
        query = (
            sa.select(alarm_history.c.uid, alarm_history.c.event, alarm_history.c.at)
            .where(alarm_history.c.event.in_(["published", "delivered"]))
            .order_by(alarm_history.c.id)
        )
        with checker.connect() as conn:
            for row in conn.execute(query):
                if row.event == "published":
                    published.setdefault(row.uid, []).append(row.at)
                else:
                    delivered[row.uid] += 1
        assert delivered == Counter(dict.fromkeys(uids, 1))
        assert set(published) == set(uids)
        lease = timedelta(seconds=LEASE)
        early = {uid: at for uid, at in published.items() if any(b - a < lease for a, b in itertools.pairwise(at))}
        assert early == {}, "claimed again within the lease"

        # The faults were real, and the dispatcher said so.
        warnings = [r.getMessage() for r in caplog.records if r.name == "alarmd.dispatcher"]
        assert any("database error while claiming" in w for w in warnings), warnings
        # An ack batch that lost its connection is tried again (or, past alarmd.ack_timeout, dropped
        # and its instance republished after the lease, which the checks above allow).
        assert any("applying the ack" in w or "could not record the ack" in w for w in warnings), warnings
    finally:
        checker.dispose()


# ------------------------------------------------------------------ wake-ups


@pytest.mark.parametrize("how", ["put", "enqueue"])
async def test_the_wakeup_listener_reconnects_after_a_termination_and_wakes_the_dispatcher_at_once(
    clean_postgres_url: str, terminator: Terminator, how: str
) -> None:
    """An alarm for now, enqueued by another process (``put`` or ``enqueue``), after the listener's
    connection was terminated: dispatched within seconds, not at the 30 s safety poll."""
    settings = replace(AlarmdSettings(), safety_poll=30.0)
    writer = AlarmQueue.from_url(clean_postgres_url)  # calendar code elsewhere: it cannot wake alarmd in process

    def add(uid: str) -> None:
        trigger = utcnow().replace(microsecond=0)  # due now (iCalendar counts whole seconds)
        if how == "put":
            result = writer.put("jac", event(uid, trigger + timedelta(minutes=5), display("-PT5M")), now=trigger)
            assert (result.added, result.errors) == (1, [])
        else:
            assert writer.enqueue([sample_payload(uid=uid, trigger=format_utc(trigger))], now=trigger).added == 1

    try:
        async with running_alarmd(clean_postgres_url, settings) as a:
            await eventually(lambda: a.queue.rests > 0, what="the dispatcher asleep")
            # Without a listener nothing wakes it: the wake-ups below are the listener's doing.
            await asyncio.to_thread(add, "unheard")
            await asyncio.sleep(1.5)
            assert a.received("unheard") == 0, "dispatched without a wake-up: this test cannot tell the listener's work"

            wakes: list[int] = []  # for each wake-up by the listener: how often the dispatcher had gone to sleep

            def wake() -> None:
                wakes.append(a.queue.rests)
                a.dispatcher.wake()

            listener = asyncio.create_task(listen_for_enqueues(clean_postgres_url, wake))
            try:
                # The listener wakes the dispatcher when it connects (a notify may have been missed).
                await eventually(a.has_published("unheard"), within=PROMPTLY, what="the wake-up on connecting")
                for n in range(3):
                    reconnects = len(wakes)
                    ended = await asyncio.to_thread(terminator.terminate)
                    assert LISTENING in ended, f"the listener's connection was not among those terminated: {ended}"
                    # Right after the termination: the NOTIFY may be lost, the wake-up on reconnecting is not.
                    await asyncio.to_thread(add, f"at-once-{n}")
                    await eventually(
                        a.has_published(f"at-once-{n}"),
                        within=PROMPTLY,
                        what=f"round {n}: an alarm enqueued right after the termination dispatched at once",
                    )
                    # Once the listener is back and the dispatcher asleep again, only the NOTIFY can wake it.
                    await eventually(lambda: len(wakes) > reconnects, within=PROMPTLY, what="the listener back")  # noqa: B023 - awaited here
                    await eventually(lambda: a.queue.rests > wakes[-1], what="the dispatcher asleep again")
                    await asyncio.sleep(0.3)
                    await asyncio.to_thread(add, f"notified-{n}")
                    await eventually(
                        a.has_published(f"notified-{n}"),
                        within=PROMPTLY,
                        what=f"round {n}: an alarm enqueued after the listener reconnected dispatched at once",
                    )
                    assert not listener.done(), "the listener gave up"
                    a.assert_running()
            finally:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            assert set(a.tally.by_ref.values()) == {1}
    finally:
        writer.close()


# ------------------------------------------------------------------ notifyd's delivery log


def delivery(key: str) -> Delivery:
    return Delivery(key, f"enp:///ics/eventalarm?{key}", NOW, NOW)


async def test_the_delivery_log_carries_on_after_its_connection_is_terminated(
    clean_postgres_url: str, terminator: Terminator, caplog: pytest.LogCaptureFixture
) -> None:
    """Six terminations, five between batches and one inside one: no call fails, nothing is lost."""
    caplog.set_level(logging.WARNING, logger="notifyd.dedup")
    engine = create_engine_from_url(clean_postgres_url)
    log = SqlDeliveryLog(engine, RETENTION)
    try:
        await log.record(delivery("k0"))
        for n in range(1, 6):
            # Between batches: the connection the log keeps for them is idle, and terminated.
            assert await asyncio.to_thread(terminator.terminate), "the log's connection was not there to terminate"
            looked_up, recorded = await asyncio.gather(log.sent_at(f"k{n - 1}", NOW), log.record(delivery(f"k{n}")))
            assert (looked_up, recorded) == (NOW, None)
        # In the middle of a batch: its upsert ran, then the connection went.
        kill = terminator.after(engine, "INSERT INTO deliveries")
        recorded, looked_up = await asyncio.gather(log.record(delivery("k6")), log.sent_at("k5", NOW))
        assert kill.hits == 1
        assert (recorded, looked_up) == (None, NOW)
        assert await log.sent_at("k6", NOW) == NOW
        assert count_rows(engine, deliveries) == 7
        retried = [r for r in caplog.records if "lost its database connection" in r.getMessage()]
        assert len(retried) == 6, "a batch did not meet the terminated connection"
    finally:
        log.close()
        engine.dispose()


class RecordingSender:
    """A mail sender (``notifyd.service.MailSender``) that accepts every message and counts
    them by their ``X-Alarm-Ref`` header."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    async def send(self, message: bytes, recipients: list[str]) -> SendResult:
        self.sent[str(parse_message(message)["X-Alarm-Ref"])] += 1
        return SendResult(AckStatus.DELIVERED)


WAVES = 6
WAVE = 20  # instances per wave


async def test_the_notifier_mails_each_reminder_once_while_its_connection_is_terminated(
    clean_postgres_url: str, terminator: Terminator
) -> None:
    """Each instance arrives twice (as after a lost ack): first in one wave, again in the next.
    Before each wave every backend is terminated (the log's connection is idle then), and in each
    wave a batch loses its connection after its upsert ran."""
    engine = create_engine_from_url(clean_postgres_url)
    log = SqlDeliveryLog(engine, RETENTION)
    bus = MemoryBus()
    await bus.start()
    sender = RecordingSender()
    notifier = Notifier(bus, sender, Settings(), clock=lambda: NOW, deliveries=log)
    acks: dict[str, list[Ack]] = {}

    async def on_ack(ack: Ack) -> None:
        acks.setdefault(ack.renl_id, []).append(ack)

    consuming = await bus.consume_acks("alarmd", on_ack)
    await notifier.start()
    try:
        kills = []
        for wave in range(WAVES + 1):
            if wave:
                assert await asyncio.to_thread(terminator.terminate), "the log's connection was not there to terminate"
            if wave < WAVES:
                kills.append(terminator.after(engine, "INSERT INTO deliveries"))
            again = [notification(f"{n}:2", uid=f"n{n:03d}") for n in range((wave - 1) * WAVE, wave * WAVE) if n >= 0]
            first = [notification(f"{n}:1", uid=f"n{n:03d}") for n in range(wave * WAVE, (wave + 1) * WAVE)]
            sent: list[Notification] = again + first if wave < WAVES else again
            for each in sent:  # the redeliveries first: their lookups go in the first batch after the termination
                await bus.publish(each)
            await eventually(
                lambda: all(n.renl is not None and n.renl.renl_id in acks for n in sent),  # noqa: B023 - awaited here
                within=10.0,
                what=f"wave {wave}: every notification acked",
            )
        assert [kill.hits for kill in kills] == [1] * WAVES

        total = WAVES * WAVE
        mailed_twice = {ref: count for ref, count in sender.sent.items() if count != 1}
        assert mailed_twice == {}
        assert len(sender.sent) == total
        assert sorted(acks) == sorted(f"{n}:{attempt}" for n in range(total) for attempt in (1, 2))
        assert {renl: len(got) for renl, got in acks.items() if len(got) != 1} == {}
        assert {renl: got[0].status for renl, got in acks.items() if got[0].status is not AckStatus.DELIVERED} == {}
        assert [n for n in range(total) if acks[f"{n}:1"][0].reason] == []
        assert [n for n in range(total) if not acks[f"{n}:2"][0].reason.startswith("duplicate")] == []
        assert (notifier.delivered, notifier.duplicates) == (2 * total, total)
        assert count_rows(engine, deliveries) == total
    finally:
        await notifier.stop(grace=5.0)
        await consuming.cancel()
        await bus.close()
        engine.dispose()
