"""alarmd: the alarm queue and its publisher.

Calendar code uses :class:`AlarmQueue` directly::

    from alarmd import AlarmQueue
    queue = AlarmQueue.from_url("postgresql+psycopg://calalarm@db/calalarm")
    queue.put("jac", ics_text, now=datetime.now(UTC), owner="jac@example.com")
"""

from alarmd.queue import AlarmQueue, PutResult

__all__ = ["AlarmQueue", "PutResult"]
