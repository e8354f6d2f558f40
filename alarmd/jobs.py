"""Periodic jobs of alarmd, run by APScheduler in the service's event loop.

- ``extend_horizon``: materialise recurring series up to the horizon, so that
  every series always has its next instances queued (``alarmd.extend_every``).
  It runs once at start-up too, which also catches up after a downtime.
- ``purge_history``: delete ``alarm_history`` rows older than
  ``alarmd.history_retention`` (hourly, and at start-up).

Jobs run the queue's blocking SQL in a worker thread and never overlap
themselves (``max_instances=1``; a missed run is coalesced into one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from alarmd.queue import AlarmQueue
from common.clock import Clock, utcnow
from common.settings import AlarmdSettings

log = logging.getLogger(__name__)

PURGE_EVERY = 3600.0  # seconds between history purges


async def extend_horizon(queue: AlarmQueue, clock: Clock = utcnow) -> int:
    """One run of the horizon job; returns how many series were re-planned."""
    started = time.monotonic()
    extended = await asyncio.to_thread(queue.extend_horizon, now=clock())
    if extended:
        log.info("horizon extended series=%d seconds=%.3f", extended, time.monotonic() - started)
    return extended


async def purge_history(queue: AlarmQueue, retention: timedelta, clock: Clock = utcnow) -> int:
    """One run of the history purge; returns how many rows it deleted."""
    purged = await asyncio.to_thread(queue.purge_history, before=clock() - retention)
    if purged:
        log.info("history purged rows=%d older_than=%s", purged, retention)
    return purged


def start_periodic_jobs(queue: AlarmQueue, settings: AlarmdSettings, clock: Clock = utcnow) -> AsyncIOScheduler:
    """Start the scheduler in the running loop; the caller shuts it down."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        extend_horizon,
        "interval",
        args=(queue, clock),
        seconds=settings.extend_every,
        next_run_time=datetime.now(UTC),
        id="extend_horizon",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    scheduler.add_job(
        purge_history,
        "interval",
        args=(queue, timedelta(seconds=settings.history_retention), clock),
        seconds=PURGE_EVERY,
        next_run_time=datetime.now(UTC),
        id="purge_history",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
    )
    scheduler.start()
    return scheduler
