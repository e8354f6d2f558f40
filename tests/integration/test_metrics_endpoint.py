"""The /metrics endpoint over HTTP with the real pieces: alarmd's dispatcher (SQLite, the in-process
bus, a clock the test sets), notifyd's notifier and SMTP sender (a recording SMTP server), and both
on one endpoint as ``alarmd --with-notifier`` serves them. The metric objects alone:
tests/unit/test_metrics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AlarmQueue
from common.ens.envelope import Ack, AckStatus, Notification
from common.ens.memory import MemoryBus
from common.metrics import (
    AlarmdMetrics,
    MetricsServer,
    NotifydMetrics,
    QueueCollector,
    serve_metrics,
    service_registry,
    start_metrics_server,
)
from common.settings import AlarmdSettings, NotifydSettings, Settings, SmtpSettings
from notifyd.service import Notifier
from notifyd.smtp import SmtpSender
from tests.calendars import display, event, utc
from tests.payloads import notification
from tests.smtp_server import message_to, recording_smtp_server
from tests.waiting import eventually

NOW = utc("2026-11-23T10:00:00Z")
WAIT = 5.0
SENDER = "Reminders <calalarm@example.com>"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class FakeClock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@contextlib.asynccontextmanager
async def endpoint(registry: CollectorRegistry) -> AsyncIterator[MetricsServer]:
    server = start_metrics_server("127.0.0.1", 0, registry)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def scrape(server: MetricsServer) -> Samples:
    """GET /metrics as Prometheus would, parsed: (name, labels) → value."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=WAIT) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())

    samples: Samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[None]:
    run = asyncio.create_task(dispatcher.run())
    try:
        yield
    finally:
        await dispatcher.close(grace=0.1)
        await run


def put_due(queue: AlarmQueue, uid: str, trigger: datetime, owner: str = "") -> None:
    start = trigger + timedelta(minutes=5)
    result = queue.put("jac", event(uid, start, display("-PT5M")), now=trigger - timedelta(hours=3), owner=owner)
    assert result.added == 1, result


# --- alarmd -----------------------------------------------------------------------------


async def test_alarmd_counters_histogram_and_queue_gauges_over_http(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="alarmd")
    clock = FakeClock()
    queue = AlarmQueue.from_url(sqlite_url)
    bus = MemoryBus()
    await bus.start()
    registry = service_registry()
    registry.register(QueueCollector(lambda: queue.stats(now=clock()), cache_seconds=0))
    settings = replace(AlarmdSettings(), safety_poll=0.2, max_lateness=3600.0)
    dispatcher = Dispatcher(queue, bus, settings, clock=clock, node="test", metrics=AlarmdMetrics(registry))
    verdicts = {
        "bad": (AckStatus.FAILED, "550 5.1.1 bob@example.com: no such user"),
        "busy": (AckStatus.RETRY, "452 4.2.2 carol@example.com: mailbox full"),
    }

    async def notifyd(n: Notification) -> None:  # acks as notifyd would, by uid
        status, reason = verdicts.get(n.ref.get("uid"), (AckStatus.DELIVERED, ""))
        await bus.ack(n, status, reason)

    await bus.subscribe("enp:///ics/eventalarm", notifyd)
    try:
        for uid in ("ok1", "ok2", "ok3", "bad", "busy"):
            put_due(queue, uid, NOW - timedelta(seconds=2))
        put_due(queue, "stale", NOW - timedelta(hours=2))  # past alarmd.max_lateness: expired, not sent
        async with endpoint(registry) as server:
            before = await scrape(server)
            assert get(before, "calalarm_queue_stats_up") == 1
            assert get(before, "calalarm_queue_depth", state="pending") == 6
            assert get(before, "calalarm_oldest_overdue_seconds") == 7200.0
            assert get(before, "calalarm_alarms_enqueued_total") == 6
            assert get(before, "calalarm_alarms_published_total", attempt="first") == 0

            async with running(dispatcher):
                await eventually(lambda: sum(dispatcher.acked.values()) == 5, WAIT, "five acks applied")
                after = await scrape(server)
    finally:
        await bus.close()
        queue.close()

    assert get(after, "calalarm_alarms_published_total", attempt="first") == 5
    assert get(after, "calalarm_alarms_published_total", attempt="republish") == 0
    assert get(after, "calalarm_dispatch_lateness_seconds_count") == 5
    assert get(after, "calalarm_dispatch_lateness_seconds_sum") == pytest.approx(10.0)  # 2 s late each
    assert get(after, "calalarm_dispatch_lateness_seconds_bucket", le="1.0") == 0
    assert get(after, "calalarm_dispatch_lateness_seconds_bucket", le="2.5") == 5
    assert get(after, "calalarm_acks_total", status="delivered", outcome="deleted") == 3
    assert get(after, "calalarm_acks_total", status="failed", outcome="failed") == 1
    assert get(after, "calalarm_acks_total", status="retry", outcome="rescheduled") == 1
    assert get(after, "calalarm_alarms_failed_total", cause="ack") == 1
    assert get(after, "calalarm_alarms_failed_total", cause="no_ack") == 0
    assert get(after, "calalarm_alarms_expired_total") == 1
    assert get(after, "calalarm_alarms_unpublished_total") == 0
    depth = {state: get(after, "calalarm_queue_depth", state=state) for state in ("pending", "inflight", "failed")}
    assert depth == {"pending": 1, "inflight": 0, "failed": 1}  # busy waits out its backoff
    assert get(after, "calalarm_queue_depth", state="expired") == 1
    assert get(after, "calalarm_oldest_overdue_seconds") == 0
    assert get(after, "process_resident_memory_bytes")

    # One structured line per state change: ids as fields, no address from an ack's reason.
    # The routine ones (a first publication, a delivered ack) are DEBUG; INFO counts them per batch.
    published = [r for r in caplog.records if r.name == "alarmd.dispatcher" and r.getMessage() == "published"]
    assert sorted(r.__dict__["uid"] for r in published) == ["bad", "busy", "ok1", "ok2", "ok3"]
    assert all(r.__dict__["calid"] == "jac" and r.__dict__["attempt"] == 1 for r in published)
    assert {r.levelname for r in published} == {"DEBUG"}
    batches = [r for r in caplog.records if r.getMessage() == "published batch"]
    assert {r.levelname for r in batches} == {"INFO"}
    assert sum(r.__dict__["count"] for r in batches) == 5
    assert sum(r.__dict__["republished"] for r in batches) == 0
    acks = {r.__dict__["alarm"]: r for r in caplog.records if r.getMessage() == "ack"}
    assert len(acks) == 5
    levels = sorted((r.__dict__["outcome"], r.levelname) for r in acks.values())
    assert levels == [("deleted", "DEBUG")] * 3 + [("failed", "WARNING"), ("rescheduled", "INFO")]
    applied = [r for r in caplog.records if r.getMessage() == "acks applied"]
    assert {r.levelname for r in applied} == {"INFO"}
    assert sum(r.__dict__["count"] for r in applied) == 5
    assert sum(r.__dict__.get("deleted", 0) for r in applied) == 3
    reasons = [r.__dict__.get("reason", "") for r in acks.values()]
    assert "550 5.1.1 <address>: no such user" in reasons
    assert not any("@" in reason for reason in reasons)


# --- notifyd ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_notifyd_outcomes_smtp_latency_and_reply_classes_over_http(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="notifyd")
    replies = {"gone@example.com": "550 5.1.1 no such user", "busy@example.com": "452 4.2.2 mailbox full"}
    registry = service_registry()
    metrics = NotifydMetrics(registry)
    async with recording_smtp_server(reply_for=replies.get) as smtp, endpoint(registry) as server:
        settings = Settings(
            smtp=SmtpSettings(url=smtp.url, sender=SENDER, timeout=2.0, allow_plaintext=True),
            notifyd=NotifydSettings(allowed_domains=("example.com",)),
        )
        bus = MemoryBus()
        await bus.start()
        sender = SmtpSender(settings.smtp, metrics=metrics)
        notifier = Notifier(bus, sender, settings, clock=lambda: NOW, metrics=metrics)
        acks: asyncio.Queue[Ack] = asyncio.Queue()

        async def on_ack(ack: Ack) -> None:
            acks.put_nowait(ack)

        consumer = await bus.consume_acks("alarmd", on_ack)
        await notifier.start()
        try:
            sent = [
                notification("1:1", action="EMAIL", recipients=["bob@example.com"]),
                notification("1:2", action="EMAIL", recipients=["bob@example.com"]),  # mailed already
                notification("2:1", uid="u2", action="EMAIL", recipients=["gone@example.com"]),
                notification("3:1", uid="u3", action="EMAIL", recipients=["busy@example.com"]),
            ]
            statuses = []
            for n in sent:  # one at a time: the second must find the first one's delivery record
                await bus.publish(n)
                statuses.append((await asyncio.wait_for(acks.get(), WAIT)).status)
            assert statuses == [AckStatus.DELIVERED, AckStatus.DELIVERED, AckStatus.FAILED, AckStatus.RETRY]
        finally:
            await notifier.stop(grace=WAIT)
            await consumer.cancel()
            await sender.close()
            await bus.close()

        # The sender alone, sharing the notifier's metrics: nobody listening, then a server too slow.
        nobody = SmtpSender(
            SmtpSettings(url=f"smtp://127.0.0.1:{free_port()}", sender=SENDER, timeout=1.0, allow_plaintext=True),
            metrics=metrics,
        )
        assert "cannot open a session" in (await nobody.send(message_to("a@example.com"), ["a@example.com"])).reason
        await nobody.close()
    async with recording_smtp_server(delay=2.0) as slow, endpoint(registry) as server:
        slow_settings = SmtpSettings(url=slow.url, sender=SENDER, timeout=0.3, allow_plaintext=True)
        sluggish = SmtpSender(slow_settings, deadline=0.3, metrics=metrics)
        assert "deadline" in (await sluggish.send(message_to("a@example.com"), ["a@example.com"])).reason
        await sluggish.close()
        samples = await scrape(server)

    outcomes = {o: get(samples, "calalarm_notifications_total", outcome=o) for o in ("delivered", "duplicate")}
    assert outcomes == {"delivered": 1, "duplicate": 1}
    assert get(samples, "calalarm_notifications_total", outcome="failed") == 1
    assert get(samples, "calalarm_notifications_total", outcome="retry") == 1
    classes = {c: get(samples, "calalarm_smtp_replies_total", **{"class": c}) for c in ("2xx", "4xx", "5xx")}
    assert classes == {"2xx": 1, "4xx": 1, "5xx": 1}
    assert get(samples, "calalarm_smtp_replies_total", **{"class": "connection"}) == 1
    assert get(samples, "calalarm_smtp_replies_total", **{"class": "timeout"}) == 1
    assert get(samples, "calalarm_smtp_replies_total", **{"class": "other"}) == 0
    # Five messages went to a server (the duplicate did not); the slow one took its deadline.
    assert get(samples, "calalarm_smtp_send_seconds_count") == 5
    assert (get(samples, "calalarm_smtp_send_seconds_sum") or 0) >= 0.3
    assert get(samples, "calalarm_smtp_send_seconds_bucket", le="0.25") == 4

    lines = [r for r in caplog.records if r.name == "notifyd.service" and r.getMessage().startswith("acked")]
    assert [r.__dict__["outcome"] for r in lines] == ["delivered", "duplicate", "failed", "retry"]
    assert [r.__dict__["uid"] for r in lines] == ["u1", "u1", "u2", "u3"]
    assert not any("example.com" in r.getMessage() for r in lines)


async def test_an_address_in_use_is_refused_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"notifyd\.metrics_listen 127\.0\.0\.1:{port}: cannot listen there"):
            serve_metrics(f"127.0.0.1:{port}", CollectorRegistry(), setting="notifyd.metrics_listen")


# --- both in one process ----------------------------------------------------------------


async def test_alarmd_with_the_notifier_serves_both_on_one_endpoint(sqlite_url: str) -> None:
    clock = FakeClock()
    queue = AlarmQueue.from_url(sqlite_url)
    bus = MemoryBus()
    await bus.start()
    registry = service_registry()  # as alarmd --with-notifier builds it
    registry.register(QueueCollector(lambda: queue.stats(now=clock()), cache_seconds=0))
    dispatcher = Dispatcher(
        queue,
        bus,
        replace(AlarmdSettings(), safety_poll=0.2),
        clock=clock,
        node="test",
        metrics=AlarmdMetrics(registry),
    )
    try:
        async with recording_smtp_server() as smtp, endpoint(registry) as server:
            settings = Settings(smtp=SmtpSettings(url=smtp.url, sender=SENDER, timeout=2.0, allow_plaintext=True))
            notifyd_metrics = NotifydMetrics(registry)
            sender = SmtpSender(settings.smtp, metrics=notifyd_metrics)
            notifier = Notifier(bus, sender, settings, clock=clock, metrics=notifyd_metrics)
            await notifier.start()
            try:
                for uid in ("a", "b"):
                    put_due(queue, uid, NOW - timedelta(seconds=1), owner="jac@example.com")
                async with running(dispatcher):
                    await eventually(lambda: dispatcher.acked.get("deleted") == 2, WAIT, "both delivered")
                    samples = await scrape(server)
            finally:
                await notifier.stop(grace=WAIT)
                await sender.close()
    finally:
        await bus.close()
        queue.close()

    assert len(smtp.messages) == 2
    assert get(samples, "calalarm_alarms_enqueued_total") == 2
    assert get(samples, "calalarm_alarms_published_total", attempt="first") == 2
    assert get(samples, "calalarm_acks_total", status="delivered", outcome="deleted") == 2
    assert get(samples, "calalarm_dispatch_lateness_seconds_count") == 2
    assert get(samples, "calalarm_notifications_total", outcome="delivered") == 2
    assert get(samples, "calalarm_smtp_replies_total", **{"class": "2xx"}) == 2
    assert get(samples, "calalarm_smtp_send_seconds_count") == 2
    assert get(samples, "calalarm_queue_depth", state="pending") == 0
    assert get(samples, "calalarm_queue_depth", state="inflight") == 0
