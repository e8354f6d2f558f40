"""The alarm queue for asyncio code: :class:`AlarmQueue`'s calendar-code methods, awaited.

Each call runs the synchronous method in a worker thread (``asyncio.to_thread``), so a
CalDAV server's event loop never blocks on the database. The results and errors are the
synchronous ones (:class:`PutResult`, :class:`EnqueueResult`, :class:`CalendarError`,
:class:`InvalidAlarm`, ...); the SQL stays in :class:`AlarmQueue`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType

from alarmd.queue import DEFAULT_HORIZON, AlarmQueue, EnqueueResult, PutResult
from alarmd.triggers import DEFAULT_MIN_INTERVAL
from common.payload import AlarmPayload
from common.settings import Settings


class AsyncAlarmQueue:
    """``async with AsyncAlarmQueue.from_url(url) as queue: await queue.put(...)``."""

    def __init__(self, queue: AlarmQueue) -> None:
        self.sync = queue  # the synchronous queue, for what has no awaitable form here

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        default_tz: str = "UTC",
        horizon: timedelta = DEFAULT_HORIZON,
        min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    ) -> AsyncAlarmQueue:
        return cls(AlarmQueue.from_url(url, default_tz=default_tz, horizon=horizon, min_interval=min_interval))

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncAlarmQueue:
        return cls(AlarmQueue.from_settings(settings))

    async def put(
        self, calid: str, ics: str | bytes, *, now: datetime, owner: str = "", tz: str | None = None, locale: str = ""
    ) -> PutResult:
        """:meth:`AlarmQueue.put`: store calendar objects and (re)materialise their alarms."""
        return await asyncio.to_thread(self.sync.put, calid, ics, now=now, owner=owner, tz=tz, locale=locale)

    async def remove(self, calid: str, uid: str, *, now: datetime) -> int:
        """:meth:`AlarmQueue.remove`: forget a calendar object and its live instances."""
        return await asyncio.to_thread(self.sync.remove, calid, uid, now=now)

    async def enqueue(self, items: Iterable[AlarmPayload], *, now: datetime) -> EnqueueResult:
        """:meth:`AlarmQueue.enqueue`: queue single alarm instances (taken as a list first)."""
        return await asyncio.to_thread(self.sync.enqueue, list(items), now=now)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncAlarmQueue:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
