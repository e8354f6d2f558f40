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
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from common.db import deliveries
from common.payload import AlarmPayload


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


class SqlDeliveryLog:
    """Records in the ``deliveries`` table; the only code that touches it.

    The engine is synchronous (as alarmd's); calls run in a worker thread so the event
    loop keeps sending while a statement waits on the database.
    """

    def __init__(self, engine: sa.Engine, retention: timedelta) -> None:
        self.engine = engine
        self.retention = retention
        # Built once: constructing these per call cost more than running them (the benchmark's profile).
        self._lookup = sa.select(deliveries.c.sent_at).where(
            deliveries.c.key == sa.bindparam("key"), deliveries.c.expires_at > sa.bindparam("now")
        )
        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        upsert = insert(deliveries)
        changed = {name: upsert.excluded[name] for name in ("ref", "sent_at", "expires_at", "detail")}
        self._upsert = upsert.on_conflict_do_update(index_elements=[deliveries.c.key], set_=changed)

    async def sent_at(self, key: str, now: datetime) -> datetime | None:
        return await asyncio.to_thread(self._sent_at, key, now)

    async def record(self, delivery: Delivery) -> None:
        await asyncio.to_thread(self._record, delivery)

    async def purge(self, now: datetime) -> int:
        return await asyncio.to_thread(self._purge, now)

    def _sent_at(self, key: str, now: datetime) -> datetime | None:
        with self.engine.connect() as conn:
            found: datetime | None = conn.execute(self._lookup, {"key": key, "now": now}).scalar_one_or_none()
        return found

    def _record(self, delivery: Delivery) -> None:
        values = {
            "key": delivery.key,
            "ref": delivery.ref,
            "trigger_at": delivery.trigger_at,
            "sent_at": delivery.sent_at,
            "expires_at": delivery.sent_at + self.retention,
            "detail": delivery.detail,
        }
        with self.engine.begin() as conn:
            conn.execute(self._upsert, values)

    def _purge(self, now: datetime) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(sa.delete(deliveries).where(deliveries.c.expires_at <= now)).rowcount)
