"""Prometheus metrics of alarmd and notifyd (``docs/metrics.md`` describes each one).

Each service object holds its metrics: :class:`AlarmdMetrics` (the dispatcher) and
:class:`NotifydMetrics` (the notifier and its SMTP sender), registered in the
:class:`~prometheus_client.CollectorRegistry` they are given, else in one of their own, so
that tests and several services in one process never share counters by accident. A
service's ``main`` makes one registry (:func:`service_registry`: the process, GC and platform
collectors included), hands it to every service object of the process (``alarmd
--with-notifier``: both) and serves it with :func:`start_metrics_server`.

The queue gauges are read at scrape time by :class:`QueueCollector`, which calls
``AlarmQueue.stats`` in the scrape thread and keeps the answer a few seconds, so that
frequent scrapes (or several Prometheus servers) do not query the database each time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from common.settings import parse_listen

log = logging.getLogger(__name__)

# Trigger → publish: milliseconds when all is well, up to hours after a downtime (alarmd.max_lateness).
LATENESS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
)  # fmt: skip
# One message handed to the SMTP server; smtp.deadline (40 s by default) bounds it.
SMTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
STATS_CACHE = 5.0  # seconds a queue snapshot answers scrapes
REPLY_CLASSES = ("2xx", "4xx", "5xx", "timeout", "connection", "other")
NOTIFICATION_OUTCOMES = ("delivered", "duplicate", "failed", "retry")


def service_registry() -> CollectorRegistry:
    """A registry for a service process: its metrics plus ``process_*``, ``python_gc_*`` and
    ``python_info`` (memory, CPU, file descriptors, collections), as the default registry has.

    It also turns off the ``*_created`` series (process-wide: a timestamp per counter and
    histogram that the text format shows as one more series each, and dashboards do not use).
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class AlarmdMetrics:
    """What the dispatcher counts (see ``docs/metrics.md``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.enqueued = Counter(
            "calalarm_alarms_enqueued_total",
            "Alarm instances added to the queue by this process (put, enqueue, the horizon job).",
            registry=r,
        )
        published = Counter(
            "calalarm_alarms_published_total",
            'Notifications published: attempt="first" for an instance\'s first attempt, "republish" after '
            "a missing ack or a retry ack.",
            ["attempt"],
            registry=r,
        )
        self.published_first = published.labels("first")
        self.republished = published.labels("republish")
        self.unpublished = Counter(
            "calalarm_alarms_unpublished_total",
            "Claimed instances the bus refused to take; handed back, due again in a few seconds.",
            registry=r,
        )
        self._acks = Counter(
            "calalarm_acks_total",
            "End-to-end acks received, by the status notifyd sent (delivered, failed, retry) and what it did "
            "(deleted, failed, rescheduled, stale: for an older attempt, unknown: no such instance).",
            ["status", "outcome"],
            registry=r,
        )
        self._ack_children: dict[tuple[str, str], Any] = {}
        self.expired = Counter(
            "calalarm_alarms_expired_total",
            "Instances marked expired: never sent and more than alarmd.max_lateness overdue when claimed.",
            registry=r,
        )
        failed = Counter(
            "calalarm_alarms_failed_total",
            'Instances marked failed: cause="ack" (a failed ack, or a retry ack for the last attempt), '
            '"no_ack" (alarmd.max_attempts publishes went unanswered).',
            ["cause"],
            registry=r,
        )
        self.failed_by_ack = failed.labels("ack")
        self.failed_no_ack = failed.labels("no_ack")
        self.lateness = Histogram(
            "calalarm_dispatch_lateness_seconds",
            "Seconds from an instance's trigger to its first publish on the bus.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )

    def observe_publish(self, attempt: int, late_seconds: float) -> None:
        """One notification went to the bus; a first attempt ``late_seconds`` after its trigger."""
        if attempt <= 1:
            self.published_first.inc()
            self.lateness.observe(max(late_seconds, 0.0))
        else:
            self.republished.inc()

    def observe_claim(self, expired: int, failed: int) -> None:
        """A claim marked ``expired`` instances expired and ``failed`` failed (no ack after the last attempt)."""
        if expired:
            self.expired.inc(expired)
        if failed:
            self.failed_no_ack.inc(failed)

    def observe_ack(self, status: str, outcome: str) -> None:
        """An ack with ``status`` was applied with ``outcome`` (an ``AckOutcome`` value)."""
        child = self._ack_children.get((status, outcome))
        if child is None:
            child = self._ack_children[(status, outcome)] = self._acks.labels(status, outcome)
        child.inc()
        if outcome == "failed":
            self.failed_by_ack.inc()


class NotifydMetrics:
    """What the notifier and its SMTP sender count (see ``docs/metrics.md``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        notifications = Counter(
            "calalarm_notifications_total",
            "Notifications handled and acked, by outcome: delivered (mailed), duplicate (mailed before; acked "
            "delivered without a second email), failed, retry.",
            ["outcome"],
            registry=r,
        )
        self.notifications = {outcome: notifications.labels(outcome) for outcome in NOTIFICATION_OUTCOMES}
        self.smtp_send_seconds = Histogram(
            "calalarm_smtp_send_seconds",
            "Seconds to hand one message to the SMTP server, waiting for a rate-limit token and a pooled "
            "connection included, whatever the outcome.",
            buckets=SMTP_BUCKETS,
            registry=r,
        )
        replies = Counter(
            "calalarm_smtp_replies_total",
            "Messages by how the SMTP server answered: 2xx (accepted), 4xx, 5xx (refused: the message, its "
            "sender or every recipient), timeout, connection (could not connect, TLS, AUTH, connection lost), "
            "other.",
            ["class"],
            registry=r,
        )
        self.smtp_replies = {cls: replies.labels(cls) for cls in REPLY_CLASSES}

    def smtp_reply(self, code: int) -> None:
        """Count a message answered with SMTP reply ``code``."""
        self.smtp_replies[_reply_class(code)].inc()


def _reply_class(code: int) -> str:
    cls = f"{code // 100}xx"
    return cls if cls in ("2xx", "4xx", "5xx") else "other"


class QueueCollector:
    """``calalarm_queue_depth{state}``, ``calalarm_oldest_overdue_seconds``, ``calalarm_queue_sources``
    and ``calalarm_queue_stats_up`` from ``stats()`` (``AlarmQueue.stats`` with the time filled in),
    called at most once per ``cache_seconds``, in the scrape thread.

    When ``stats()`` fails (the database is down), ``calalarm_queue_stats_up`` is 0 and the other
    gauges are left out of that scrape rather than shown stale.
    """

    def __init__(
        self,
        stats: Callable[[], Mapping[str, Any]],
        *,
        cache_seconds: float = STATS_CACHE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()  # concurrent scrapes wait for one query instead of each making one
        self._snapshot: Mapping[str, Any] | None = None
        self._taken = float("-inf")
        self._failing = False

    def describe(self) -> Iterable[Metric]:
        """The metric names, for the registry's duplicate check; no query."""
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._current())

    def _current(self) -> Mapping[str, Any] | None:
        with self._lock:
            now = self._monotonic()
            if now - self._taken < self._cache_seconds:
                return self._snapshot
            try:
                self._snapshot = self._stats()
            except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the database does not
                self._snapshot = None
                if not self._failing:
                    log.warning("metrics: cannot read the queue statistics (%s)", " ".join(str(exc).split())[:300])
                self._failing = True
            else:
                if self._failing:
                    log.info("metrics: the queue statistics can be read again")
                self._failing = False
            self._taken = now
            return self._snapshot

    @staticmethod
    def _families(snapshot: Mapping[str, Any] | None) -> list[Metric]:
        up = GaugeMetricFamily(
            "calalarm_queue_stats_up", "1 when the queue gauges could be read from the database, else 0."
        )
        depth = GaugeMetricFamily(
            "calalarm_queue_depth", "Alarm instances in the queue by state (all alarmd instances).", labels=["state"]
        )
        overdue = GaugeMetricFamily(
            "calalarm_oldest_overdue_seconds",
            "Seconds since the trigger of the oldest pending instance that is due and not yet published; 0 if none.",
        )
        sources = GaugeMetricFamily("calalarm_queue_sources", "Calendar objects stored (recurring series planned).")
        if snapshot is None:
            up.add_metric([], 0)
            return [up, depth, overdue, sources]  # the families without samples: described, not shown
        up.add_metric([], 1)
        for state, count in snapshot["states"].items():
            depth.add_metric([state], float(count))
        overdue.add_metric([], float(snapshot["oldest_overdue_seconds"]))
        sources.add_metric([], float(snapshot["sources"]))
        return [up, depth, overdue, sources]


@dataclass
class MetricsServer:
    """The running ``/metrics`` endpoint (a daemon thread); :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving (blocks up to half a second: run it in a worker thread from async code)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (any path answers) from a daemon thread.

    Port 0 picks a free port (see :attr:`MetricsServer.port`). Raises :class:`OSError` when the
    address cannot be bound (in use, not an address of this host).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound_port = int(server.server_address[1])
    return MetricsServer(host, bound_port, server, thread)


def serve_metrics(listen: str, registry: CollectorRegistry, *, setting: str) -> MetricsServer | None:
    """Start the endpoint at ``listen`` (``HOST:PORT``, the value of ``setting``); None when it is empty.

    Raises :class:`OSError` naming ``setting`` when the address cannot be bound.
    """
    if not listen:
        return None
    host, port = parse_listen(listen, setting)
    try:
        server = start_metrics_server(host, port, registry)
    except OSError as exc:
        raise OSError(exc.errno, f"{setting} {listen}: cannot listen there ({exc.strerror or exc})") from None
    log.info("metrics at http://%s:%d/metrics", host if ":" not in host else f"[{host}]", server.port)
    return server
