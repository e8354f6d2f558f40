"""``alarmd``: the alarm publisher service (optionally with the notifier in the same loop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import click

from alarmd.demo import DEMO_CALENDAR, schedule_demo_calendar
from alarmd.dispatcher import Dispatcher
from alarmd.jobs import start_periodic_jobs
from alarmd.queue import AlarmQueue
from alarmd.wakeup import listen_for_enqueues
from common import eventloop
from common.clock import utcnow
from common.db import migrate
from common.ens import BusError, create_bus
from common.ens.startup import start_when_reachable
from common.logs import setup_logging
from common.metrics import AlarmdMetrics, NotifydMetrics, QueueCollector, serve_metrics, service_registry
from common.settings import (
    LOG_LEVELS,
    BusSettings,
    ConfigError,
    DatabaseSettings,
    Settings,
    SmtpSettings,
    load_settings,
)
from common.systemd import SystemdNotifier, watchdog

log = logging.getLogger("alarmd")

DEMO_DIR = Path("var")
DEMO_SMTP = ("127.0.0.1", 8025)
DEMO_OWNER = "you@localhost"


def demo_settings(settings: Settings) -> Settings:
    """The embedded default with a fresh demo database and the local SMTP catcher.

    The demo repeats one alarm after 5 s, so it lifts the minimum interval.
    """
    return settings.replace(
        alarmd=dataclasses.replace(settings.alarmd, min_interval=0.0),
        database=DatabaseSettings(url=f"sqlite:///{DEMO_DIR / 'demo.db'}"),
        bus=BusSettings(url="memory://"),
        smtp=SmtpSettings(
            url=f"smtp://{DEMO_SMTP[0]}:{DEMO_SMTP[1]}",
            sender="calalarm demo <calalarm@localhost>",
            allow_plaintext=True,  # the catcher on this host
        ),
    )


async def serve(settings: Settings, *, with_notifier: bool, demo: bool) -> None:
    migrate.ensure_schema(settings.database.url)
    queue = AlarmQueue.from_settings(settings)
    bus = create_bus(settings.bus.url)
    registry = service_registry()  # alarmd's metrics, and notifyd's with --with-notifier
    registry.register(QueueCollector(lambda: queue.stats(now=utcnow())))
    dispatcher = Dispatcher(queue, bus, settings.alarmd, metrics=AlarmdMetrics(registry))
    stop = asyncio.Event()
    systemd = SystemdNotifier.from_env()

    def request_stop() -> None:
        systemd.stopping()
        stop.set()
        dispatcher.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)
    stack = contextlib.AsyncExitStack()
    async with stack:
        stack.callback(systemd.close)
        stack.push_async_callback(asyncio.to_thread, queue.close)
        # Served while waiting for the bus too: the queue gauges show what a broker outage holds up.
        listen, setting = metrics_listen(settings, with_notifier)
        metrics_server = serve_metrics(listen, registry, setting=setting)
        if metrics_server is not None:
            stack.push_async_callback(asyncio.to_thread, metrics_server.close)
        if not await start_when_reachable(bus, stop, service="alarmd"):
            log.info("alarmd stopped before the bus answered")
            return
        stack.push_async_callback(bus.close)
        stack.push_async_callback(dispatcher.close)
        if demo:  # started before the notifier and closed after it, so no send is cut off
            from common.smtp_catcher import start_catcher

            catcher = await start_catcher(*DEMO_SMTP, DEMO_DIR / "mail", on_message=print_delivered)
            stack.push_async_callback(catcher.close)
        elif settings.bus.url.startswith("memory:") and not with_notifier:
            log.warning("bus is memory:// without --with-notifier: nobody will receive the notifications")
        if with_notifier:
            from notifyd.service import notifier_from_settings

            notifier, sender = notifier_from_settings(
                bus, settings, utcnow, engine=queue.engine, metrics=NotifydMetrics(registry)
            )
            stack.push_async_callback(sender.close)
            await notifier.start()
            stack.push_async_callback(notifier.stop)
        if settings.database.url.startswith("postgresql"):
            listener = asyncio.create_task(listen_for_enqueues(settings.database.url, dispatcher.wake))
            stack.push_async_callback(_cancel, listener)

        scheduler = start_periodic_jobs(queue, settings.alarmd)
        stack.callback(scheduler.shutdown, wait=False)

        run = asyncio.create_task(dispatcher.run())
        systemd.ready("dispatching alarms" + (" and emailing them" if with_notifier else ""))
        await stack.enter_async_context(watchdog(systemd))  # pings while this loop turns; stops first on exit
        if demo:
            await enqueue_demo(queue)
        await run
        log.info("alarmd stopping")


def metrics_listen(settings: Settings, with_notifier: bool) -> tuple[str, str]:
    """Where alarmd serves /metrics, and the setting that says so: ``alarmd.metrics_listen``, else
    with ``--with-notifier`` ``notifyd.metrics_listen`` (one endpoint for both services)."""
    if settings.alarmd.metrics_listen or not with_notifier:
        return settings.alarmd.metrics_listen, "alarmd.metrics_listen"
    return settings.notifyd.metrics_listen, "notifyd.metrics_listen"


async def enqueue_demo(queue: AlarmQueue) -> None:
    now = utcnow()
    text = schedule_demo_calendar(DEMO_CALENDAR.read_text(encoding="utf-8"), now)
    result = await asyncio.to_thread(queue.put, "demo", text, now=now, owner=DEMO_OWNER)
    click.echo(
        f"demo: enqueued {result.added} alarm(s) from {DEMO_CALENDAR.name}, firing over the next 30 s; "
        f"mail lands in {DEMO_DIR / 'mail'}/. Ctrl-C to stop."
    )


def print_delivered(message: EmailMessage, path: Path) -> None:
    trigger = str(message.get("X-Alarm-Trigger", ""))
    late = ""
    with contextlib.suppress(ValueError):
        seconds = (datetime.now(UTC) - datetime.fromisoformat(trigger.replace("Z", "+00:00"))).total_seconds()
        late = f", {seconds * 1000:.0f} ms after its trigger"
    click.echo(f"delivered: {message.get('Subject')!s} to {message.get('To')!s}{late} -> {path}")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), help="TOML configuration (default: $CALALARM_CONFIG).")
@click.option("--with-notifier", is_flag=True, help="Run notifyd's email delivery in this process too.")
@click.option("--demo", is_flag=True, help="Embedded demo: SQLite, in-process bus, SMTP catcher on 127.0.0.1:8025.")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Overrides logging.level (default INFO).",
)
def main(config: str | None, with_notifier: bool, demo: bool, log_level: str | None) -> None:
    """Publish due calendar alarms to the bus and apply their acknowledgments."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        click.echo(f"alarmd: configuration: {exc}", err=True)
        sys.exit(2)
    setup_logging(settings.logging, level=log_level)
    if demo:
        settings = demo_settings(settings)
        with_notifier = True
        (DEMO_DIR / "demo.db").unlink(missing_ok=True)
    try:
        eventloop.run(serve(settings, with_notifier=with_notifier, demo=demo))
    except ConfigError as exc:
        click.echo(f"alarmd: configuration: {exc}", err=True)
        sys.exit(2)
    except (migrate.SchemaNotReady, BusError, OSError) as exc:
        click.echo(f"alarmd: {exc}", err=True)
        sys.exit(1)
