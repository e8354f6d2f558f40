"""alarmd: the alarm queue and its publisher.

Calendar code uses :class:`AlarmQueue` (synchronous) or :class:`AsyncAlarmQueue` (the
same calls for asyncio); the README's "From calendar code" has a runnable example.
"""

from alarmd.aio import AsyncAlarmQueue
from alarmd.ical import CalendarError
from alarmd.queue import (
    AlarmQueue,
    EnqueueResult,
    InvalidAlarm,
    InvalidLocale,
    MissingPrivilege,
    PutResult,
    UnknownTimeZone,
)
from common.payload import AlarmPayload

__all__ = [
    "AlarmPayload",
    "AlarmQueue",
    "AsyncAlarmQueue",
    "CalendarError",
    "EnqueueResult",
    "InvalidAlarm",
    "InvalidLocale",
    "MissingPrivilege",
    "PutResult",
    "UnknownTimeZone",
]
