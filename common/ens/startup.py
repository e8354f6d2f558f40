"""Starting a service's bus when the broker may not be up yet.

A service started before its broker (a boot where RabbitMQ is slower, a broker being
restarted) waits for it instead of exiting: it retries with backoff, logging each
failure, until the broker answers or the service is told to stop. Only
:class:`BusUnavailable` is retried; any other :class:`BusError` (a bad URL, refused
credentials) is the operator's to fix and is raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from common.ens.abc import Bus, BusUnavailable

log = logging.getLogger(__name__)

FIRST_RETRY = 0.5  # seconds; doubled after each failure
MAX_RETRY = 30.0


async def start_when_reachable(bus: Bus, stop: asyncio.Event, *, service: str) -> bool:
    """Start ``bus``, retrying while the broker is unavailable; False if ``stop`` was set first."""
    delay = FIRST_RETRY
    while not stop.is_set():
        try:
            await bus.start()
        except BusUnavailable as exc:
            log.warning("%s is waiting for the bus: %s; retrying in %.1fs", service, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, MAX_RETRY)
        else:
            return True
    return False
