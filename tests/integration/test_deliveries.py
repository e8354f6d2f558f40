"""The delivery log (SqlDeliveryLog on SQLite and PostgreSQL) and the duplicate check it gives
the Notifier: a notification delivered again is acked without a second email."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from common.db.engine import create_engine_from_url
from common.db.tables import deliveries
from common.ens.envelope import PUBLICATION, Ack, AckStatus, Notification
from common.ens.memory import MemoryBus
from common.payload import AlarmPayload, format_utc
from common.settings import NotifydSettings, Settings, SmtpSettings
from notifyd.dedup import Delivery, DeliveryLog, MemoryDeliveryLog, SqlDeliveryLog, instance_key
from notifyd.service import Notifier, notifier_from_settings
from notifyd.smtp import SmtpSender
from tests.payloads import notification, payload_dict
from tests.smtp_server import RecordingSmtpServer, recording_smtp_server

NOW = datetime(2026, 11, 23, 9, 45, tzinfo=UTC)
RETENTION = timedelta(days=14)
WAIT = 3.0


def delivery(
    key: str = "k1", sent_at: datetime = NOW, ref: str = "enp:///ics/eventalarm?x", detail: str = ""
) -> Delivery:
    return Delivery(key, ref, datetime(2026, 11, 23, 9, 45, tzinfo=UTC), sent_at, detail)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine_from_url(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def log(engine: sa.Engine) -> SqlDeliveryLog:
    return SqlDeliveryLog(engine, RETENTION)


def rows(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(deliveries).order_by(deliveries.c.key)))


# --- SqlDeliveryLog ------------------------------------------------------------------


async def test_recorded_delivery_is_found_with_its_time(log: SqlDeliveryLog) -> None:
    sent = NOW + timedelta(seconds=3, microseconds=250_000)
    assert await log.sent_at("k1", NOW) is None
    await log.record(delivery("k1", sent, detail="delivered to 1 of 2"))
    found = await log.sent_at("k1", sent + timedelta(minutes=1))
    assert found == sent
    assert found is not None
    assert found.utcoffset() == timedelta(0)
    assert await log.sent_at("k2", sent) is None
    [row] = rows(log.engine)
    assert (row.key, row.detail, row.expires_at) == ("k1", "delivered to 1 of 2", sent + RETENTION)


async def test_an_expired_record_is_not_found(log: SqlDeliveryLog) -> None:
    await log.record(delivery("k1", NOW))
    assert await log.sent_at("k1", NOW + RETENTION - timedelta(seconds=1)) == NOW
    assert await log.sent_at("k1", NOW + RETENTION) is None
    assert await log.sent_at("k1", NOW + RETENTION + timedelta(days=1)) is None


async def test_purge_deletes_only_expired_records_and_counts_them(log: SqlDeliveryLog) -> None:
    await log.record(delivery("old1", NOW - RETENTION - timedelta(hours=1)))
    await log.record(delivery("old2", NOW - RETENTION))  # expires exactly now
    await log.record(delivery("fresh", NOW - RETENTION + timedelta(seconds=1)))
    await log.record(delivery("new", NOW))
    assert await log.purge(NOW) == 2
    assert [row.key for row in rows(log.engine)] == ["fresh", "new"]
    assert await log.sent_at("fresh", NOW) is not None
    assert await log.purge(NOW) == 0
    assert await log.purge(NOW + RETENTION) == 2
    assert rows(log.engine) == []


async def test_recording_the_same_key_again_replaces_the_record(log: SqlDeliveryLog) -> None:
    first, later = NOW, NOW + timedelta(days=1)
    await log.record(delivery("k1", first, ref="ref-1", detail="one"))
    await log.record(delivery("k1", later, ref="ref-2", detail="two"))
    assert await log.sent_at("k1", later) == later
    # the expiry moved with the later delivery
    assert await log.sent_at("k1", first + RETENTION) == later
    [row] = rows(log.engine)
    assert (row.ref, row.detail, row.sent_at, row.expires_at) == ("ref-2", "two", later, later + RETENTION)


async def test_concurrent_records_of_one_key_do_not_fail(log: SqlDeliveryLog) -> None:
    sent = [NOW + timedelta(seconds=n) for n in range(6)]
    await asyncio.gather(*(log.record(delivery("k1", at)) for at in sent))
    [row] = rows(log.engine)
    assert row.sent_at in sent
    assert await log.sent_at("k1", NOW) == row.sent_at


async def test_calls_made_together_share_one_batch(log: SqlDeliveryLog) -> None:
    await log.record(delivery("old", NOW))
    batches = log.batches
    found = await asyncio.gather(
        *(log.record(delivery(f"k{n}", NOW)) for n in range(20)),
        *(log.sent_at(key, NOW) for key in ("old", "missing")),
    )
    assert log.batches == batches + 1  # one thread hop, one transaction
    assert found[20:] == [NOW, None]
    assert len(rows(log.engine)) == 21


async def test_a_call_during_a_batch_goes_in_the_next(log: SqlDeliveryLog) -> None:
    first = asyncio.create_task(log.record(delivery("k1", NOW)))
    await asyncio.sleep(log.linger + 0.01)  # the first batch is at the database, or done
    assert await log.sent_at("k1", NOW) == NOW
    await first
    assert log.batches == 2


async def test_a_failed_batch_fails_its_lookups_holds_its_records_and_writes_them_when_it_can(
    log: SqlDeliveryLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The database restarting while reminders go out: their records must not be lost, or the
    republication a lost ack brings would mail them again (the PostgreSQL restart scenario)."""
    monkeypatch.setattr("notifyd.dedup.RETRY_UNWRITTEN", 0.05)
    await log.record(delivery("k0", NOW))  # the batches' connection is open
    real_upsert = log._upsert
    monkeypatch.setattr(log, "_upsert", sa.text("INSERT INTO no_such_table VALUES (:key)"))
    recorded, looked_up = await asyncio.gather(
        log.record(delivery("k1", NOW)), log.sent_at("k0", NOW), return_exceptions=True
    )
    assert recorded is None  # held, not failed
    assert isinstance(looked_up, sa.exc.DBAPIError)
    assert list(log.unwritten) == ["k1"]
    assert await log.sent_at("k1", NOW) == NOW  # this log knows it meanwhile
    assert any("holding its records in memory" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(0.2)  # retries fail while the database refuses
    assert list(log.unwritten) == ["k1"]
    monkeypatch.setattr(log, "_upsert", real_upsert)
    async with asyncio.timeout(2):
        while log.unwritten:  # noqa: ASYNC110 - the retry timer owns it
            await asyncio.sleep(0.01)
    await log.record(delivery("k2", NOW))
    assert [row.key for row in rows(log.engine)] == ["k0", "k1", "k2"]  # written by the retry, on a new connection


async def test_close_returns_the_connection_and_the_log_reopens_it(log: SqlDeliveryLog) -> None:
    await log.record(delivery("k1", NOW))
    pending = asyncio.create_task(log.record(delivery("k2", NOW)))
    await asyncio.sleep(0)
    log.close()  # a batch is under way: it closes when done
    await pending
    await asyncio.sleep(0)
    assert log._conn is None
    assert await log.sent_at("k2", NOW) == NOW  # connects again
    log.close()
    assert log._conn is None


# --- the Notifier's duplicate check --------------------------------------------------


def smtp_settings(server: RecordingSmtpServer) -> Settings:
    return Settings(
        smtp=SmtpSettings(url=server.url, sender="Reminders <calalarm@example.com>", timeout=2.0, allow_plaintext=True),
        notifyd=NotifydSettings(allowed_domains=("example.com",)),
    )


class Node:
    """One notifier on a bus of its own, with the acks it sent."""

    def __init__(self, bus: MemoryBus, notifier: Notifier) -> None:
        self.bus = bus
        self.notifier = notifier
        self.acks: asyncio.Queue[Ack] = asyncio.Queue()

    async def deliver(self, sent: Notification) -> Ack:
        await self.bus.publish(sent)
        ack = await asyncio.wait_for(self.acks.get(), WAIT)
        assert sent.renl is not None
        assert ack.renl_id == sent.renl.renl_id
        return ack


@contextlib.asynccontextmanager
async def node(
    server: RecordingSmtpServer, make: Callable[[MemoryBus, Settings], tuple[Notifier, SmtpSender]]
) -> AsyncIterator[Node]:
    bus = MemoryBus()
    await bus.start()
    notifier, sender = make(bus, smtp_settings(server))
    running = Node(bus, notifier)

    async def on_ack(ack: Ack) -> None:
        running.acks.put_nowait(ack)

    acks = await bus.consume_acks("alarmd", on_ack)
    await notifier.start()
    try:
        yield running
    finally:
        await notifier.stop(grace=WAIT)
        await acks.cancel()
        await sender.close()
        await bus.close()


def with_log(deliveries: DeliveryLog) -> Callable[[MemoryBus, Settings], tuple[Notifier, SmtpSender]]:
    def make(bus: MemoryBus, settings: Settings) -> tuple[Notifier, SmtpSender]:
        sender = SmtpSender(settings.smtp)
        return Notifier(bus, sender, settings, clock=lambda: NOW, deliveries=deliveries), sender

    return make


async def test_the_same_notification_again_is_acked_as_a_duplicate_and_not_mailed() -> None:
    records = MemoryDeliveryLog(RETENTION)
    async with recording_smtp_server() as server, node(server, with_log(records)) as n:
        first = await n.deliver(notification("1:1"))
        assert (first.status, first.reason) == (AckStatus.DELIVERED, "")
        await server.wait_for(1, WAIT)
        again = await n.deliver(notification("1:2"))
        assert again.status is AckStatus.DELIVERED
        assert again.reason.startswith("duplicate")
        assert f"already mailed at {format_utc(NOW)}" in again.reason
        assert len(server.messages) == 1
        assert (n.notifier.delivered, n.notifier.duplicates) == (2, 1)
        # another instance (a different trigger) of the same alarm is not a duplicate
        other = await n.deliver(notification("2:1", trigger="2026-11-24T09:45:00Z"))
        assert (other.status, other.reason) == (AckStatus.DELIVERED, "")
        await server.wait_for(2, WAIT)
        assert len(records.records) == 2


class CountingLog(MemoryDeliveryLog):
    def __init__(self) -> None:
        super().__init__(RETENTION)
        self.lookups = 0

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        self.lookups += 1
        return await super().sent_at(key, now)


def publication(renl_id: str, number: int) -> Notification:
    sent = notification(renl_id)
    return dataclasses.replace(sent, properties={**sent.properties, PUBLICATION: number})


async def test_only_a_first_copy_skips_the_lookup() -> None:
    records = CountingLog()
    async with recording_smtp_server() as server, node(server, with_log(records)) as n:
        first = await n.deliver(publication("1:1", 1))
        assert (first.status, first.reason, records.lookups) == (AckStatus.DELIVERED, "", 0)
        await server.wait_for(1, WAIT)
        assert len(records.records) == 1  # recorded all the same
        # alarmd's second publication (a lost ack, a publish it could not confirm): checked
        again = await n.deliver(publication("1:2", 2))
        assert again.reason.startswith("duplicate")
        assert records.lookups == 1
        # the first publication again, redelivered by the broker (a notifyd died holding it)
        redelivered = dataclasses.replace(publication("1:1", 1), redelivered=True)
        await n.notifier.handle(redelivered)
        assert records.lookups == 2
        assert (len(server.messages), n.notifier.duplicates) == (1, 2)


@pytest.mark.parametrize(
    ("reply", "status"), [("451 4.3.0 try later", AckStatus.RETRY), ("550 5.1.1 no such user", AckStatus.FAILED)]
)
async def test_an_undelivered_outcome_is_not_recorded_and_a_redelivery_sends(reply: str, status: AckStatus) -> None:
    replies = {"jac@example.com": reply}
    records = MemoryDeliveryLog(RETENTION)
    async with (
        recording_smtp_server(reply_for=lambda address: replies.get(address)) as server,
        node(server, with_log(records)) as n,
    ):
        refused = await n.deliver(notification("1:1"))
        assert refused.status is status
        assert records.records == {}
        replies.clear()
        again = await n.deliver(notification("1:2"))
        assert (again.status, again.reason) == (AckStatus.DELIVERED, "")
        [(_message, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]
        key = instance_key(AlarmPayload.from_dict(payload_dict()))
        assert await records.sent_at(key, NOW) == NOW


async def test_two_notifiers_sharing_the_delivery_log_mail_once(sqlite_url: str) -> None:
    """The pool case: the redelivery reaches another notifyd, with its own connection to the database."""
    engines = [create_engine_from_url(sqlite_url) for _ in range(2)]

    def production(engine: sa.Engine) -> Callable[[MemoryBus, Settings], tuple[Notifier, SmtpSender]]:
        return lambda bus, settings: notifier_from_settings(bus, settings, lambda: NOW, engine=engine)

    try:
        async with (
            recording_smtp_server() as server,
            node(server, production(engines[0])) as a,
            node(server, production(engines[1])) as b,
        ):
            first = await a.deliver(notification("1:1"))
            assert (first.status, first.reason) == (AckStatus.DELIVERED, "")
            again = await b.deliver(notification("1:2"))
            assert again.status is AckStatus.DELIVERED
            assert again.reason.startswith("duplicate")
            assert len(server.messages) == 1
            assert (a.notifier.duplicates, b.notifier.duplicates) == (0, 1)
            [row] = rows(engines[1])
            assert row.key == instance_key(AlarmPayload.from_dict(payload_dict()))
            assert row.ref == str(notification("").ref)
    finally:
        for engine in engines:
            engine.dispose()


async def test_the_notifier_purges_expired_records_when_it_starts(sqlite_url: str) -> None:
    engine = create_engine_from_url(sqlite_url)
    records = SqlDeliveryLog(engine, RETENTION)
    await records.record(delivery("old", NOW - RETENTION - timedelta(seconds=1)))
    await records.record(delivery("recent", NOW - timedelta(days=1)))
    try:
        async with recording_smtp_server() as server, node(server, with_log(records)):
            async with asyncio.timeout(WAIT):
                while len(rows(engine)) != 1:  # noqa: ASYNC110 - the purge task owns the table
                    await asyncio.sleep(0.01)
            assert [row.key for row in rows(engine)] == ["recent"]
    finally:
        engine.dispose()


class BrokenLog:
    """A delivery log whose database is down for reads, writes or both."""

    def __init__(self, *, reads: bool, writes: bool) -> None:
        self.reads, self.writes = reads, writes
        self.recorded: list[Delivery] = []

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        if not self.reads:
            raise sa.exc.OperationalError("SELECT", {}, ConnectionError("database is down"))
        return None

    async def record(self, delivery: Delivery) -> None:
        if not self.writes:
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("database is down"))
        self.recorded.append(delivery)

    async def purge(self, now: datetime) -> int:
        raise sa.exc.OperationalError("DELETE", {}, ConnectionError("database is down"))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("reads", "writes"), [(False, True), (True, False), (False, False)], ids=["read-fails", "record-fails", "both"]
)
async def test_a_broken_delivery_log_does_not_hold_the_reminder_back(
    caplog: pytest.LogCaptureFixture, reads: bool, writes: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="notifyd")
    records = BrokenLog(reads=reads, writes=writes)
    async with recording_smtp_server() as server, node(server, with_log(records)) as n:
        ack = await n.deliver(notification("1:1"))
        assert (ack.status, ack.reason) == (AckStatus.DELIVERED, "")
        [(_message, recipients)] = await server.wait_for(1, WAIT)
        assert recipients == ["jac@example.com"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "notifyd.service"]
    if not reads:
        assert any("cannot read the delivery log" in w for w in warnings), warnings
    if writes:
        [recorded] = records.recorded
        assert (recorded.key, recorded.sent_at) == (instance_key(AlarmPayload.from_dict(payload_dict())), NOW)
    else:
        assert any("cannot record it" in w for w in warnings), warnings
