"""One alarm from calendar code to an inbox, on both deployments.

- embedded: SQLite + in-process bus, alarmd and notifyd as tasks of one loop;
- standard: PostgreSQL + RabbitMQ, ``alarmd`` and ``notifyd`` as separate processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AckOutcome, AlarmQueue
from common.ens import Bus, create_bus
from common.ens.envelope import AckStatus, Notification
from common.settings import Settings, SmtpSettings
from notifyd.service import Notifier
from notifyd.smtp import SmtpSender
from tests.calendars import display, event
from tests.services import RABBITMQ_URL, require_rabbitmq, unique_exchange
from tests.smtp_server import recording_smtp_server
from tests.waiting import eventually

BIN = Path(sys.executable).parent


def due_in(seconds: float, uid: str = "e2e-1") -> tuple[str, datetime]:
    """A calendar whose only alarm fires ``seconds`` from now, rounded down to the second (iCalendar's grain).

    Keep ``seconds`` above 1 so the rounded trigger is still in the future.
    """
    trigger = (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)
    return event(uid, trigger + timedelta(minutes=5), display("-PT5M")), trigger


async def live_count(queue: AlarmQueue) -> int:
    return len(await asyncio.to_thread(queue.list_alarms))


def bus_url(kind: str) -> str:
    if kind == "memory":
        return "memory://"
    require_rabbitmq()
    return f"{RABBITMQ_URL}?exchange={unique_exchange()}"


def clean_database_url(request: pytest.FixtureRequest, database: str) -> str:
    """The URL of a clean database of the kind a test is parametrized with."""
    return str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "clean_postgres_url"))


@asynccontextmanager
async def started_bus(kind: str) -> AsyncIterator[Bus]:
    """A started bus of ``kind`` (``memory`` or ``amqp``), closed on the way out."""
    bus = create_bus(bus_url(kind))
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


@asynccontextmanager
async def embedded(
    database_url: str, bus: Bus, smtp_url: str, ack_timeout: float = 30.0, with_notifier: bool = True
) -> AsyncIterator[Dispatcher]:
    """alarmd's dispatcher and (unless told otherwise) notifyd's notifier as tasks on one loop."""
    settings = Settings(smtp=SmtpSettings(url=smtp_url, allow_plaintext=True))
    settings = settings.replace(alarmd=replace(settings.alarmd, ack_timeout=ack_timeout, safety_poll=1.0))
    queue = AlarmQueue.from_url(database_url)
    dispatcher = Dispatcher(queue, bus, settings.alarmd)
    sender = SmtpSender(settings.smtp)
    notifier = Notifier(bus, sender, settings, lambda: datetime.now(UTC))
    if with_notifier:
        await notifier.start()
    run = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher
    finally:
        await dispatcher.close(grace=2.0)
        await run
        await notifier.stop()
        await sender.close()
        queue.close()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
async def test_embedded_deployment_delivers_with_headers_and_forgets_the_instance(
    request: pytest.FixtureRequest, database: str
) -> None:
    url = clean_database_url(request, database)
    bus = create_bus("memory://")
    async with recording_smtp_server() as smtp, embedded(url, bus, smtp.url) as dispatcher:
        ics, trigger = due_in(1.5)
        result = await asyncio.to_thread(
            dispatcher.queue.put, "jac", ics, now=datetime.now(UTC), owner="jac@example.com"
        )
        assert result.added == 1
        [(message, recipients)] = await smtp.wait_for(1, timeout=10)
        assert recipients == ["jac@example.com"]
        assert message["X-Alarm-Ref"] == "enp:///ics/eventalarm?calid=jac&uid=e2e-1&rid=&aid=1"
        assert message["X-Alarm-Trigger"] == trigger.strftime("%Y-%m-%dT%H:%M:%SZ")
        await eventually(lambda: dispatcher.acked.get("deleted") == 1, what="delivered ack applied")
        assert await live_count(dispatcher.queue) == 0
        assert datetime.now(UTC) >= trigger  # not sent early


@pytest.mark.parametrize(("database", "bus_kind"), [("sqlite", "memory"), ("postgres", "amqp")])
async def test_unacked_notification_is_republished_and_a_late_ack_removes_it_once(
    request: pytest.FixtureRequest, database: str, bus_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="alarmd.dispatcher")
    received: list[Notification] = []
    async with started_bus(bus_kind) as bus:
        silent = await bus.subscribe("enp+pool.notifyd:///ics/eventalarm", _collect(received))  # never acks
        async with embedded(
            clean_database_url(request, database), bus, "smtp://127.0.0.1:9", ack_timeout=0.5, with_notifier=False
        ) as dispatcher:
            ics, _ = due_in(1.2, "silent-1")
            put = await asyncio.to_thread(dispatcher.queue.put, "jac", ics, now=datetime.now(UTC), owner="j@x.org")
            assert put.added == 1
            await eventually(lambda: len(received) >= 2, what="republication")
            first, second = received[0], received[1]
            assert first.ref == second.ref
            assert first.renl is not None
            assert second.renl is not None
            alarm_id = first.renl.renl_id.split(":")[0]
            assert (first.renl.renl_id, second.renl.renl_id) == (f"{alarm_id}:1", f"{alarm_id}:2")
            assert [r.state for r in await asyncio.to_thread(dispatcher.queue.list_alarms)] == ["inflight"]
            # the first attempt's ack arrives late, then the second's: one deletion only
            await silent.cancel()
            await bus.ack(first, AckStatus.DELIVERED)
            await bus.ack(second, AckStatus.DELIVERED)
            await eventually(lambda: sum(dispatcher.acked.values()) == 2, what="both acks applied")
            assert dispatcher.acked == {AckOutcome.DELETED.value: 1, AckOutcome.UNKNOWN.value: 1}
            assert await live_count(dispatcher.queue) == 0
    # The routine lines are DEBUG; a republication (an ack did not come) and an ack for an
    # instance already gone are worth a line each, at INFO and WARNING.
    lines = [(r.getMessage(), r.__dict__.get("attempt"), r.levelname) for r in caplog.records]
    assert ("published", 1, "DEBUG") in lines
    assert ("published", 2, "INFO") in lines
    assert {(level, attempt) for message, attempt, level in lines if message == "ack"} == {
        ("DEBUG", 1),  # the first attempt's ack, late, still delivered it: deleted
        ("WARNING", 2),  # the second's found it gone
    }


@pytest.mark.parametrize(("database", "bus_kind"), [("sqlite", "memory"), ("postgres", "amqp")])
async def test_an_instance_is_published_ahead_of_its_trigger_with_not_before(
    request: pytest.FixtureRequest, database: str, bus_kind: str
) -> None:
    received: list[tuple[Notification, datetime]] = []

    async def note(notification: Notification) -> None:
        received.append((notification, datetime.now(UTC)))

    async with started_bus(bus_kind) as bus:
        await bus.subscribe("enp+pool.notifyd:///ics/eventalarm", note)
        async with embedded(
            clean_database_url(request, database), bus, "smtp://127.0.0.1:9", with_notifier=False
        ) as dispatcher:
            ahead = timedelta(seconds=dispatcher.settings.publish_ahead)
            assert ahead == timedelta(seconds=1)  # the default
            ics, trigger = due_in(2.5, "ahead-1")
            assert (await asyncio.to_thread(dispatcher.queue.put, "jac", ics, now=datetime.now(UTC))).added == 1
            await eventually(lambda: len(received) == 1, what="the publication")
            [(notification, at)] = received
            assert notification.not_before() == trigger
            assert trigger - ahead - timedelta(milliseconds=50) <= at < trigger  # ahead, but not more
            assert notification.renl is not None
            assert notification.renl.timeout == dispatcher.settings.ack_timeout + dispatcher.settings.publish_ahead


def _collect(into: list[Notification]) -> Callable[[Notification], Awaitable[None]]:
    async def handler(notification: Notification) -> None:
        into.append(notification)

    return handler


# ------------------------------------------------------------- standard, as processes


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / command)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def test_standard_deployment_as_processes(clean_postgres_url: str, tmp_path: Path) -> None:
    postgres_url = clean_postgres_url
    require_rabbitmq()
    async with recording_smtp_server() as smtp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALALARM_")}
        env.update(
            CALALARM_DATABASE_URL=postgres_url,
            CALALARM_BUS_URL=f"{RABBITMQ_URL}?exchange={unique_exchange()}",
            CALALARM_SMTP_URL=smtp.url,
            CALALARM_SMTP_ALLOW_PLAINTEXT="true",
            CALALARM_ALARMD_SAFETY_POLL="30",  # wake-up must come from LISTEN/NOTIFY, not the poll
        )
        notifyd = spawn("notifyd", env, tmp_path / "notifyd.log")
        alarmd = spawn("alarmd", env, tmp_path / "alarmd.log")
        queue = AlarmQueue.from_url(postgres_url)
        try:
            await asyncio.sleep(3.0)  # both processes connected and subscribed
            assert notifyd.poll() is None, (tmp_path / "notifyd.log").read_text()
            assert alarmd.poll() is None, (tmp_path / "alarmd.log").read_text()
            ics, trigger = due_in(1.5, "std-1")
            await asyncio.to_thread(queue.put, "bob", ics, now=datetime.now(UTC), owner="bob@example.com")
            [(message, recipients)] = await smtp.wait_for(1, timeout=15)
            assert recipients == ["bob@example.com"]
            assert message["X-Alarm-Ref"] == "enp:///ics/eventalarm?calid=bob&uid=std-1&rid=&aid=1"
            assert message["X-Alarm-Trigger"] == trigger.strftime("%Y-%m-%dT%H:%M:%SZ")
            await eventually(lambda: not queue.list_alarms(), within=10, what="instance removed after its ack")
            assert [h["event"] for h in queue.history(1)] == ["queued", "published", "delivered"]
        finally:
            for proc in (alarmd, notifyd):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(p.wait, 20) for p in (alarmd, notifyd)]
            queue.close()
        assert codes == [0, 0], (tmp_path / "alarmd.log").read_text() + (tmp_path / "notifyd.log").read_text()
