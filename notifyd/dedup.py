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
import itertools
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
RETRY_UNWRITTEN = 1.0  # seconds between tries to write records held while the database failed
UNWRITTEN_MAX = 100_000  # records held in memory at most; beyond, the oldest are forgotten


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
    cut) runs once more on a fresh one.

    A record that cannot be written (the database is down or restarting) is not lost:
    it is held in memory, answers this log's lookups, goes with every later batch and
    is retried every :data:`RETRY_UNWRITTEN` seconds until the database takes it. The
    republication a lost ack brings after the RENL timeout then finds it, here or, once
    written, at any notifyd of the pool. Only a notifyd killed while holding such
    records can mail their reminders again. A failed lookup fails its caller.
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
        self.unwritten: dict[str, Delivery] = {}  # records the database has not taken yet (see the class doc)
        self._retry_due = False
        self._retry: asyncio.TimerHandle | None = None

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        held = self.unwritten.get(key)
        if held is not None and held.sent_at + self.retention > now:
            return held.sent_at
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
        while self._lookups or self._records or self._retry_due:
            if self.linger:
                await asyncio.sleep(self.linger)
            self._retry_due = False
            lookups, self._lookups = self._lookups[:BATCH_MAX], self._lookups[BATCH_MAX:]
            records, self._records = self._records[:BATCH_MAX], self._records[BATCH_MAX:]
            keys = [key for key, _now, _future in lookups]
            now = min((now for _key, now, _future in lookups), default=None)
            # the held records go with any batch that writes, and make up the retries
            held = list(itertools.islice(self.unwritten.values(), BATCH_MAX)) if records or not lookups else []
            writes = list({d.key: d for d in [*held, *(delivery for delivery, _ in records)]}.values())
            try:
                found = await asyncio.to_thread(self._run_batch, keys, now, writes)
            except Exception as exc:  # noqa: BLE001 - handed to the lookups; the records are held
                for _key, _now, lookup in lookups:
                    if not lookup.done():
                        lookup.set_exception(exc)
                self._hold([delivery for delivery, _ in records], exc)
                for _delivery, recorded in records:
                    if not recorded.done():
                        recorded.set_result(None)
                continue
            for delivery in held:
                if self.unwritten.get(delivery.key) is delivery:
                    del self.unwritten[delivery.key]
            if held and not self.unwritten:
                log.info("the delivery log has written the records it held: the database takes them again")
            elif self.unwritten:
                self._retry_soon()  # more than a batch was held
            for key, _now, lookup in lookups:
                if not lookup.done():
                    lookup.set_result(found.get(key))
            for _delivery, recorded in records:
                if not recorded.done():
                    recorded.set_result(None)

    def _hold(self, records: list[Delivery], exc: Exception) -> None:
        """Keep records the database did not take, and try them again soon."""
        if records and not self.unwritten:
            reason = " ".join(str(exc).split())[:300]
            log.warning(
                "the delivery log cannot write to the database (%s); holding its records in memory and retrying "
                "every %.0f s",
                reason,
                RETRY_UNWRITTEN,
            )
        for delivery in records:
            self.unwritten[delivery.key] = delivery
        while len(self.unwritten) > UNWRITTEN_MAX:
            forgotten = next(iter(self.unwritten))
            del self.unwritten[forgotten]
            log.error("the delivery log holds %d records already; forgot one (key %s)", UNWRITTEN_MAX, forgotten)
        if self.unwritten:
            self._retry_soon(RETRY_UNWRITTEN)

    def _retry_soon(self, delay: float = 0.0) -> None:
        if self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(delay, self._retry_unwritten)

    def _retry_unwritten(self) -> None:
        self._retry = None
        if self.unwritten:
            self._retry_due = True
            self._schedule()

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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self.unwritten:
            log.error(
                "%d delivery record(s) were never written (the database did not take them); if their "
                "notifications come again, their reminders are mailed again",
                len(self.unwritten),
            )
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
