"""common/metrics.py without I/O: the metric objects, the queue collector with a fake stats source,
alarmd's choice of endpoint. Over HTTP, with the real services: tests/integration/test_metrics_endpoint.py."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from alarmd.main import metrics_listen
from common.metrics import AlarmdMetrics, NotifydMetrics, QueueCollector, serve_metrics, service_registry
from common.settings import AlarmdSettings, ConfigError, NotifydSettings, Settings


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def stats(pending: int = 3, inflight: int = 1, overdue: float = 12.5) -> dict[str, Any]:
    """What AlarmQueue.stats returns (the keys the collector reads, and others)."""
    return {
        "states": {"pending": pending, "inflight": inflight, "failed": 2, "expired": 0},
        "total": pending + inflight + 2,
        "sources": 4,
        "next_due": None,
        "oldest_overdue": None,
        "oldest_overdue_seconds": overdue,
    }


@dataclass
class FakeStats:
    answers: list[Mapping[str, Any] | Exception]
    calls: int = 0

    def __call__(self) -> Mapping[str, Any]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class FakeMonotonic:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def collected(stats_source: FakeStats, clock: FakeMonotonic) -> tuple[CollectorRegistry, QueueCollector]:
    registry = CollectorRegistry()
    collector = QueueCollector(stats_source, cache_seconds=5.0, monotonic=clock)
    registry.register(collector)
    return registry, collector


def test_queue_gauges_come_from_the_stats_source() -> None:
    source = FakeStats([stats(pending=3, inflight=1, overdue=12.5)])
    registry, _ = collected(source, FakeMonotonic())
    assert source.calls == 0, "registering must not query the database"
    assert value(registry, "calalarm_queue_depth", state="pending") == 3
    assert value(registry, "calalarm_queue_depth", state="inflight") == 1
    assert value(registry, "calalarm_queue_depth", state="failed") == 2
    assert value(registry, "calalarm_queue_depth", state="expired") == 0
    assert value(registry, "calalarm_oldest_overdue_seconds") == 12.5
    assert value(registry, "calalarm_queue_sources") == 4
    assert value(registry, "calalarm_queue_stats_up") == 1


def test_scrapes_within_the_cache_time_share_one_query() -> None:
    source = FakeStats([stats(pending=3), stats(pending=9)])
    clock = FakeMonotonic()
    registry, _ = collected(source, clock)
    for _ in range(5):
        assert value(registry, "calalarm_queue_depth", state="pending") == 3
    assert source.calls == 1
    clock.now += 4.9
    assert value(registry, "calalarm_queue_depth", state="pending") == 3
    clock.now += 0.2
    assert value(registry, "calalarm_queue_depth", state="pending") == 9
    assert source.calls == 2


def test_a_failing_stats_source_shows_as_down_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="common.metrics")
    source = FakeStats([RuntimeError("connection refused\nby the server"), RuntimeError("again"), stats(pending=5)])
    clock = FakeMonotonic()
    registry, _ = collected(source, clock)
    text = generate_latest(registry).decode()  # the scrape answers
    assert value(registry, "calalarm_queue_stats_up") == 0
    assert value(registry, "calalarm_queue_depth", state="pending") is None  # not a stale number
    assert "# TYPE calalarm_queue_depth gauge" in text
    clock.now += 10
    assert value(registry, "calalarm_queue_stats_up") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["metrics: cannot read the queue statistics (connection refused by the server)"]
    clock.now += 10
    assert value(registry, "calalarm_queue_depth", state="pending") == 5
    assert value(registry, "calalarm_queue_stats_up") == 1
    assert any("can be read again" in r.getMessage() for r in caplog.records)


def test_alarmd_counters() -> None:
    metrics = AlarmdMetrics()
    r = metrics.registry
    metrics.enqueued.inc(3)
    metrics.observe_publish(1, 0.04)
    metrics.observe_publish(1, -0.5)  # a clock a little behind the trigger counts as on time
    metrics.observe_publish(3, 95.0)  # a republish: not in the lateness histogram
    metrics.observe_claim(expired=2, failed=1)
    metrics.observe_claim(expired=0, failed=0)
    metrics.observe_ack("delivered", "deleted")
    metrics.observe_ack("delivered", "deleted")
    metrics.observe_ack("failed", "failed")
    metrics.observe_ack("retry", "failed")  # a retry for the last attempt
    metrics.observe_ack("retry", "stale")
    metrics.unpublished.inc(4)
    assert value(r, "calalarm_alarms_enqueued_total") == 3
    assert value(r, "calalarm_alarms_published_total", attempt="first") == 2
    assert value(r, "calalarm_alarms_published_total", attempt="republish") == 1
    assert value(r, "calalarm_dispatch_lateness_seconds_count") == 2
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="0.005") == 1
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="0.05") == 2
    assert value(r, "calalarm_dispatch_lateness_seconds_sum") == pytest.approx(0.04)
    assert value(r, "calalarm_alarms_expired_total") == 2
    assert value(r, "calalarm_alarms_failed_total", cause="no_ack") == 1
    assert value(r, "calalarm_alarms_failed_total", cause="ack") == 2
    assert value(r, "calalarm_acks_total", status="delivered", outcome="deleted") == 2
    assert value(r, "calalarm_acks_total", status="retry", outcome="stale") == 1
    assert value(r, "calalarm_alarms_unpublished_total") == 4


def test_lateness_buckets_reach_from_milliseconds_to_hours() -> None:
    metrics = AlarmdMetrics()
    for seconds in (0.003, 0.08, 45.0, 3000.0, 20000.0, 90000.0):
        metrics.observe_publish(1, seconds)
    r = metrics.registry
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="0.1") == 2
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="60.0") == 3
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="3600.0") == 4
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="21600.0") == 5
    assert value(r, "calalarm_dispatch_lateness_seconds_bucket", le="+Inf") == 6


def test_notifyd_counters_start_at_zero_and_classify_replies() -> None:
    metrics = NotifydMetrics()
    r = metrics.registry
    for outcome in ("delivered", "duplicate", "failed", "retry"):
        assert value(r, "calalarm_notifications_total", outcome=outcome) == 0
    for cls in ("2xx", "4xx", "5xx", "timeout", "connection", "other"):
        assert value(r, "calalarm_smtp_replies_total", **{"class": cls}) == 0
    for code in (250, 451, 452, 550, 554, 354, 999):
        metrics.smtp_reply(code)
    metrics.smtp_send_seconds.observe(0.02)
    assert value(r, "calalarm_smtp_replies_total", **{"class": "2xx"}) == 1
    assert value(r, "calalarm_smtp_replies_total", **{"class": "4xx"}) == 2
    assert value(r, "calalarm_smtp_replies_total", **{"class": "5xx"}) == 2
    assert value(r, "calalarm_smtp_replies_total", **{"class": "other"}) == 2
    assert value(r, "calalarm_smtp_send_seconds_count") == 1


def test_both_services_share_one_registry_without_clashing() -> None:
    registry = service_registry()
    AlarmdMetrics(registry)
    NotifydMetrics(registry)
    registry.register(QueueCollector(lambda: stats()))
    text = generate_latest(registry).decode()
    for name in (
        "calalarm_alarms_published_total",
        "calalarm_acks_total",
        "calalarm_dispatch_lateness_seconds_bucket",
        "calalarm_smtp_send_seconds_bucket",
        "calalarm_notifications_total",
        "calalarm_queue_depth",
        "python_info",
    ):
        assert name in text
    with pytest.raises(ValueError, match="Duplicated"):
        AlarmdMetrics(registry)  # a second dispatcher must get a registry of its own


def test_an_empty_listen_setting_starts_nothing_and_a_bad_one_names_the_setting() -> None:
    assert serve_metrics("", CollectorRegistry(), setting="alarmd.metrics_listen") is None
    with pytest.raises(ConfigError, match=r"notifyd\.metrics_listen"):
        serve_metrics("9465", CollectorRegistry(), setting="notifyd.metrics_listen")


@pytest.mark.parametrize(
    ("alarmd", "notifyd", "with_notifier", "expected"),
    [
        ("127.0.0.1:9464", "", False, ("127.0.0.1:9464", "alarmd.metrics_listen")),
        ("", ":9465", False, ("", "alarmd.metrics_listen")),  # notifyd's setting is for a separate notifyd
        ("", ":9465", True, (":9465", "notifyd.metrics_listen")),  # one endpoint for both
        ("127.0.0.1:9464", ":9465", True, ("127.0.0.1:9464", "alarmd.metrics_listen")),
    ],
)
def test_alarmd_serves_its_own_setting_else_notifyds_with_the_notifier(
    alarmd: str, notifyd: str, with_notifier: bool, expected: tuple[str, str]
) -> None:
    settings = Settings(alarmd=AlarmdSettings(metrics_listen=alarmd), notifyd=NotifydSettings(metrics_listen=notifyd))
    assert metrics_listen(settings, with_notifier) == expected
