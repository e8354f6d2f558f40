"""alarmd: the alarm queue and its publisher.

Calendar code uses :class:`AlarmQueue` directly::

    from alarmd import AlarmPayload, AlarmQueue
    queue = AlarmQueue.from_url("postgresql+psycopg://calalarm@db/calalarm")
    queue.put("jac", ics_text, now=datetime.now(UTC), owner="jac@example.com")   # a calendar object
    queue.enqueue([AlarmPayload(calid="jac", uid="u1", rid="", aid="1", component="event",
                                action="DISPLAY", trigger="2026-11-23T09:45:00Z",
                                summary="Team meeting", owner="jac@example.com")],
                  now=datetime.now(UTC))                                          # single alarms, in bulk
"""

from alarmd.queue import AlarmQueue, EnqueueResult, InvalidAlarm, PutResult
from common.payload import AlarmPayload

__all__ = ["AlarmPayload", "AlarmQueue", "EnqueueResult", "InvalidAlarm", "PutResult"]
