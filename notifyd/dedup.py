"""Delivery records: what notifyd has mailed, so a notification that comes again is not.

The bus delivers at least once: a lost ack, a notifyd killed after sending, or an
alarmd that republished on its ack timeout all bring the same instance back. The
instance key (calid, uid, rid, aid, trigger) is recorded once SMTP has accepted the
message and before the ack goes out; a notification whose key is recorded is acked
``delivered`` without a second email. What remains is the crash window between the
server's acceptance and the record (a duplicate is then possible, never a loss).

Records expire after ``notifyd.dedup_retention``; :meth:`purge` deletes expired ones.
:class:`SqlDeliveryLog` keeps them in the ``deliveries`` table (shared by every notifyd
of a pool); :class:`MemoryDeliveryLog` is for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from common.db import deliveries
from common.payload import AlarmPayload

log = logging.getLogger(__name__)

LINGER = 0.002  # seconds a batch waits for company before it goes to the database
BATCH_MAX = 500  # keys per SELECT … IN, well under SQLite's limit on bound parameters


def instance_key(payload: AlarmPayload) -> str:
    """The hex SHA-256 of the instance's identity; the same for every delivery of it."""
    parts = (payload.calid, payload.uid, payload.rid, payload.aid, payload.trigger)
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Delivery:
    key: str
    ref: str
    trigger_at: datetime
    sent_at: datetime
    detail: str = ""


class DeliveryLog(Protocol):
    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        """When the instance was mailed, if it was and the record has not expired."""

    async def record(self, delivery: Delivery) -> None:
        """Remember a delivery (a later record of the same key replaces the earlier one)."""

    async def purge(self, now: datetime) -> int:
        """Delete expired records; return how many."""

    def close(self) -> None:
        """Release what the log holds (a database connection); it may be used again after."""


class MemoryDeliveryLog:
    """In-process records, for tests and for a notifier without a database."""

    def __init__(self, retention: timedelta) -> None:
        self.retention = retention
        self.records: dict[str, tuple[Delivery, datetime]] = {}

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        found = self.records.get(key)
        return found[0].sent_at if found and found[1] > now else None

    async def record(self, delivery: Delivery) -> None:
        self.records[delivery.key] = (delivery, delivery.sent_at + self.retention)

    async def purge(self, now: datetime) -> int:
        expired = [key for key, (_, expires) in self.records.items() if expires <= now]
        for key in expired:
            del self.records[key]
        return len(expired)

    def close(self) -> None:
        pass


class SqlDeliveryLog:
    """Records in the ``deliveries`` table; the only code that touches it.

    The engine is synchronous (as alarmd's), so statements run in a worker thread and
    the event loop keeps sending meanwhile. Calls are batched (group commit): lookups
    and records that arrive while a batch is at the database wait for the next one, and
    each batch is one thread hop, one SELECT … IN and one multi-row upsert in one
    transaction. Under load that is a commit per batch instead of per reminder; alone,
    a call is a batch of one. A lookup in a batch uses the batch's earliest ``now``.
    A batch that finds its connection lost (the server restarted, the connection was
    cut) runs once more on a fresh one; any other error fails every call in it.
    """

    def __init__(self, engine: sa.Engine, retention: timedelta, *, linger: float = LINGER) -> None:
        self.engine = engine
        self.retention = retention
        # Built once: constructing these per call cost more than running them (the benchmark's profile).
        self._lookup = sa.select(deliveries.c.key, deliveries.c.sent_at).where(
            deliveries.c.key.in_(sa.bindparam("keys", expanding=True)), deliveries.c.expires_at > sa.bindparam("now")
        )
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert = insert(deliveries)
        changed = {name: upsert.excluded[name] for name in ("ref", "sent_at", "expires_at", "detail")}
        self._upsert = upsert.on_conflict_do_update(index_elements=[deliveries.c.key], set_=changed)
        self._lookups: list[tuple[str, datetime, asyncio.Future[datetime | None]]] = []
        self._records: list[tuple[Delivery, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._conn: sa.Connection | None = None
        self.linger = linger
        self.batches = 0  # batches run so far, for tests and the benchmark

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        future: asyncio.Future[datetime | None] = asyncio.get_running_loop().create_future()
        self._lookups.append((key, now, future))
        self._schedule()
        return await future

    async def record(self, delivery: Delivery) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records.append((delivery, future))
        self._schedule()
        await future

    async def purge(self, now: datetime) -> int:
        return await asyncio.to_thread(self._purge, now)

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="notifyd:delivery-log")

    async def _flush(self) -> None:
        while self._lookups or self._records:
            if self.linger:
                await asyncio.sleep(self.linger)
            lookups, self._lookups = self._lookups[:BATCH_MAX], self._lookups[BATCH_MAX:]
            records, self._records = self._records[:BATCH_MAX], self._records[BATCH_MAX:]
            keys = [key for key, _now, _future in lookups]
            now = min((now for _key, now, _future in lookups), default=None)
            try:
                found = await asyncio.to_thread(self._run_batch, keys, now, [delivery for delivery, _ in records])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for _key, _now, lookup in lookups:
                    if not lookup.done():
                        lookup.set_exception(exc)
                for _delivery, recorded in records:
                    if not recorded.done():
                        recorded.set_exception(exc)
                continue
            for key, _now, lookup in lookups:
                if not lookup.done():
                    lookup.set_result(found.get(key))
            for _delivery, recorded in records:
                if not recorded.done():
                    recorded.set_result(None)

    def _run_batch(self, keys: list[str], now: datetime | None, records: list[Delivery]) -> dict[str, datetime]:
        self.batches += 1
        try:
            return self._try_batch(keys, now, records)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # The connection was lost: a database restart or failover, an idle connection
            # cut or terminated. The pool's pre-ping never sees the one kept here, so without
            # this the first batch after would fail: its lookups unchecked, its records lost,
            # a redelivery mailed twice. Once more on a fresh connection: whether or not the
            # failed transaction committed, its lookups and its upsert can be run again.
            reason = " ".join(str(exc.orig).split())[:300]
            log.warning("the delivery log lost its database connection (%s); retrying the batch", reason)
            return self._try_batch(keys, now, records)

    def _try_batch(self, keys: list[str], now: datetime | None, records: list[Delivery]) -> dict[str, datetime]:
        # One connection kept for the batches (only one batch runs at a time): checking
        # one out of the pool for each cost as much as the statements. After an error it
        # is dropped and the next batch connects afresh.
        conn = self._conn = self._conn or self.engine.connect()
        try:
            with conn.begin():
                if records:
                    conn.execute(self._upsert, [self._values(delivery) for delivery in records])
                if not keys or now is None:
                    return {}
                return {key: sent_at for key, sent_at in conn.execute(self._lookup, {"keys": keys, "now": now})}
        except Exception:
            self._conn = None
            with contextlib.suppress(Exception):
                conn.invalidate()
            raise

    def close(self) -> None:
        """Return the batches' connection to the engine (they reopen it when used again);
        a batch still at the database returns it when it is done."""
        if self._flusher is not None and not self._flusher.done():
            self._flusher.add_done_callback(lambda _task: self.close())
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _values(self, delivery: Delivery) -> dict[str, object]:
        return {
            "key": delivery.key,
            "ref": delivery.ref,
            "trigger_at": delivery.trigger_at,
            "sent_at": delivery.sent_at,
            "expires_at": delivery.sent_at + self.retention,
            "detail": delivery.detail,
        }

    def _purge(self, now: datetime) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(sa.delete(deliveries).where(deliveries.c.expires_at <= now)).rowcount)
