"""Cross-process wake-ups on PostgreSQL: ``AlarmQueue.put`` sends NOTIFY, alarmd LISTENs.

The listening connection is watched (TCP keepalives): when it drops it is re-opened with backoff,
and the dispatcher is woken once on every reconnect (a notify may have been
missed meanwhile). The dispatcher's safety poll is the backstop behind this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from alarmd.queue import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

# A listener only reads, so a connection that died silently (a network cut, a failover
# without a reset) would wait for ever; TCP keepalives end it within about a minute.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def libpq_url(sqlalchemy_url: str) -> str:
    """``postgresql+psycopg://u@h/db`` → ``postgresql://u@h/db`` for psycopg itself."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_enqueues(database_url: str, wake: Callable[[], None], *, max_backoff: float = 30.0) -> None:
    """Call ``wake`` on every NOTIFY; runs until cancelled."""
    conninfo = make_conninfo(libpq_url(database_url), **KEEPALIVES)
    backoff = 0.5
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                log.info("listening for enqueue notifications")
                backoff = 0.5
                wake()
                async for _ in conn.notifies():
                    wake()
        except asyncio.CancelledError:
            raise
        except psycopg.Error as exc:
            log.warning("enqueue listener lost its connection (%s); reconnecting in %.1fs", exc, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
