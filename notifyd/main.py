"""``notifyd [--config PATH]``: the notifier as a service of its own, beside a broker.

Exit status: 0 after a clean stop (SIGINT or SIGTERM), 1 when the bus or the database
cannot be reached (or the database is not migrated: run ``alarmctl db upgrade``) or
``notifyd.metrics_listen`` cannot be bound, 2 for a configuration that cannot be used
(settings, templates, directory, password file).

notifyd uses the database only for its delivery records (``deliveries``), which let
every notifyd of a pool suppress duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import click

from common import eventloop
from common.db import create_engine_from_url, migrate
from common.ens import BusError, create_bus
from common.ens.startup import start_when_reachable
from common.logs import setup_logging
from common.metrics import NotifydMetrics, serve_metrics, service_registry
from common.settings import ConfigError, Settings, load_settings
from common.systemd import SystemdNotifier, watchdog
from notifyd.service import notifier_from_settings

log = logging.getLogger("notifyd")

EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_CONFIG = 2

MEMORY_BUS_REFUSED = (
    "bus.url is memory://: an in-process bus lives inside one process and cannot reach a "
    "separate alarmd. Set bus.url (or CALALARM_BUS_URL) to amqp://user:pass@host:5672/vhost, "
    "or run `alarmd --with-notifier` to have both services in one process."
)


@click.command(name="notifyd")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML configuration file (default: $CALALARM_CONFIG, else the embedded defaults).",
)
def main(config_path: Path | None) -> None:
    """Email the reminders of alarm notifications received from the bus."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"notifyd: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(settings.logging)
    if settings.bus.url.startswith("memory:"):
        click.echo(f"notifyd: {MEMORY_BUS_REFUSED}", err=True)
        sys.exit(EXIT_CONFIG)
    sys.exit(eventloop.run(serve(settings)))


async def serve(settings: Settings) -> int:
    """Run the notifier until SIGINT or SIGTERM; return the exit status."""
    try:
        migrate.ensure_schema(settings.database.url)
    except migrate.SchemaNotReady as exc:
        click.echo(f"notifyd: {exc}", err=True)
        return EXIT_UNAVAILABLE
    engine = create_engine_from_url(settings.database.url)
    registry = service_registry()
    try:
        # As many messages from the broker as notifyd handles at once: more would wait
        # unacked in this process while the publisher's RENL timeout runs.
        bus = create_bus(settings.bus.url, prefetch=settings.notifyd.concurrency)
        notifier, sender = notifier_from_settings(
            bus, settings, lambda: datetime.now(UTC), engine=engine, metrics=NotifydMetrics(registry)
        )
    except (BusError, ConfigError) as exc:
        click.echo(f"notifyd: {exc}", err=True)
        engine.dispose()
        return EXIT_CONFIG

    stop = asyncio.Event()
    systemd = SystemdNotifier.from_env()

    def request_stop() -> None:
        systemd.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, request_stop)
    metrics_server = None
    try:
        try:  # served while waiting for the bus too
            metrics_server = serve_metrics(settings.notifyd.metrics_listen, registry, setting="notifyd.metrics_listen")
        except OSError as exc:
            click.echo(f"notifyd: {exc}", err=True)
            return EXIT_UNAVAILABLE
        try:
            if not await start_when_reachable(bus, stop, service="notifyd"):
                log.info("notifyd stopped before the bus answered")
                return EXIT_OK
        except BusError as exc:
            log.error("cannot use the bus at %s: %s", redact_url(settings.bus.url), exc)
            return EXIT_UNAVAILABLE
        await notifier.start()
        log.info(
            "notifyd ready: bus %s, pool %r, SMTP %s (%d connections), concurrency %d",
            redact_url(settings.bus.url),
            settings.notifyd.pool,
            redact_url(settings.smtp.url),
            settings.smtp.pool_size,
            settings.notifyd.concurrency,
        )
        systemd.ready(f"emailing reminders as pool {settings.notifyd.pool!r}")
        async with watchdog(systemd):  # pings while this loop turns
            await stop.wait()
        log.info("stopping: finishing the notifications in hand")
        await notifier.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        await sender.close()
        try:
            await bus.close()
        except BusError as exc:
            log.warning("closing the bus: %s", exc)
        engine.dispose()
        systemd.close()
    log.info("notifyd stopped")
    return EXIT_OK


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


if __name__ == "__main__":
    main()
