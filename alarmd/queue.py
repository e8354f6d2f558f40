"""``AlarmQueue``: the one class that reads and writes alarm SQL.

The dispatcher, ``alarmctl`` and calendar code all go through it. Every method
that depends on time takes ``now``; nothing here reads the clock.

State machine of an instance (one row of ``alarms``)::

    put ──▶ pending ──claim──▶ inflight ──ack delivered──▶ (row deleted, history kept)
             │  ▲                 │ ├──ack failed, or the last attempt retried / unanswered──▶ failed
             │  └──ack retry / publish failed (backoff)     └──no ack by next_at──▶ claimed again
             └──more than max_lateness overdue when claimed, never sent──▶ expired
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from alarmd.ical import CalendarError, CalendarObject, parse_calendar
from alarmd.policy import jittered_backoff
from alarmd.triggers import DEFAULT_MIN_INTERVAL, PlannedAlarm, QueuePlan, plan_queue
from common.db.engine import create_engine_from_url
from common.db.tables import alarm_history, alarms, sources
from common.ens.envelope import AckStatus
from common.ens.reference import EventReference
from common.payload import AlarmPayload, PayloadError, format_utc
from common.settings import AlarmdSettings, Settings

log = logging.getLogger(__name__)

LIVE_STATES = ("pending", "inflight")
# The conditions of the two partial indexes on alarms, with the states as literals in the
# SQL: SQLite uses a partial index only for a query that names its condition as written
# (a bound parameter cannot be proven to imply it). A query that reads alarms by state
# includes the one that holds its rows.
IS_LIVE = alarms.c.state.in_(  # ix_alarms_due (next_at): the claim, by next_at
    sa.bindparam("live_states", list(LIVE_STATES), expanding=True, literal_execute=True)
)
IS_NOT_PENDING = alarms.c.state != sa.bindparam(  # ix_alarms_not_pending (state, next_at)
    "pending_state", "pending", literal_execute=True
)
ENQUEUE_CHUNK = 5000  # single alarms per INSERT transaction
# Bulk enqueue on PostgreSQL: COPY a chunk into a temporary table (text rows, parsed by
# the server far faster than one INSERT or one JSON document), then move it into alarms,
# skipping instances already queued, and log each added one. ON COMMIT DELETE ROWS: the
# table is the connection's own and empty again after every chunk.
_PG_INCOMING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS calalarm_incoming (calid text, uid text, rid text, aid text, "
    "component text, action text, trigger_at timestamptz, payload json) ON COMMIT DELETE ROWS"
)
_INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE
_PG_COPY_INCOMING = "COPY calalarm_incoming (calid, uid, rid, aid, component, action, trigger_at, payload) FROM STDIN"
_PG_ENQUEUE_INCOMING = sa.text(
    """
    WITH added AS (
        INSERT INTO alarms (calid, uid, rid, aid, component, action, trigger_at, state, next_at, attempts,
                            payload, created_at, updated_at)
        SELECT calid, uid, rid, aid, component, action, trigger_at, 'pending', trigger_at, 0, payload, :now, :now
        FROM calalarm_incoming
        ON CONFLICT (calid, uid, rid, aid, trigger_at) DO NOTHING
        RETURNING id, calid, uid, rid, aid, trigger_at
    ), logged AS (
        INSERT INTO alarm_history (alarm_id, calid, uid, rid, aid, trigger_at, at, event, attempt, detail)
        SELECT id, calid, uid, rid, aid, trigger_at, :now, 'queued', 0, 'single alarm' FROM added
        RETURNING 1
    )
    SELECT count(*) FROM logged
    """
)
MARK_BATCH = 1000  # rows expired or failed per claim: bounds one transaction after a long downtime
NOTIFY_CHANNEL = "calalarm_queue"
# The columns that name an instance in history rows (alarm_id = alarms.id).
_KEY = (alarms.c.id, alarms.c.calid, alarms.c.uid, alarms.c.rid, alarms.c.aid, alarms.c.trigger_at)
_HISTORY_KEY = ("alarm_id", "calid", "uid", "rid", "aid", "trigger_at")


class State(StrEnum):
    PENDING = "pending"
    INFLIGHT = "inflight"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class AckRequest:
    """One end-to-end ack to apply: which attempt of which instance, the verdict, and the
    backoff a ``retry`` waits."""

    alarm_id: int
    attempt: int
    status: AckStatus
    reason: str
    retry_delay: timedelta


class AckOutcome(StrEnum):
    DELETED = "deleted"  # delivered: the instance is gone
    FAILED = "failed"  # marked failed
    RESCHEDULED = "rescheduled"  # retry: due again after a backoff
    STALE = "stale"  # an ack for an earlier attempt that no longer decides anything
    UNKNOWN = "unknown"  # no such instance (already deleted, or never existed)


class InvalidLocale(ValueError):
    """A locale that is not a language tag such as ``de`` or ``fr_CA``."""


_LOCALE = re.compile(r"^[A-Za-z]{2,8}(?:[_-][A-Za-z0-9]{1,8}){0,3}$")


class UnknownTimeZone(ValueError):
    """A time zone name that is not in the IANA database."""


@dataclass(frozen=True)
class ClaimedAlarm:
    """An instance claimed for publishing: attempt ``attempt`` until ``lease_until``.

    ``publication`` counts every claim of the instance, including those handed back
    unpublished (which ``attempt`` does not): 1 means no earlier copy of it was ever
    given to the bus.
    """

    id: int
    attempt: int
    publication: int
    component: str
    calid: str
    uid: str
    rid: str
    aid: str
    trigger: datetime
    payload: dict[str, Any]

    @property
    def ref(self) -> EventReference:
        return EventReference.alarm(self.component, self.calid, self.uid, self.rid, self.aid)

    @property
    def key(self) -> tuple[int, str, str, str, str, datetime]:
        """The instance's identity as history rows record it."""
        return (self.id, self.calid, self.uid, self.rid, self.aid, self.trigger)

    @property
    def renl_id(self) -> str:
        return f"{self.id}:{self.attempt}"


@dataclass(frozen=True)
class ClaimPolicy:
    """How :meth:`AlarmQueue.claim` treats what is due (see there); from ``[alarmd]`` settings."""

    lease: timedelta
    late_after: timedelta | None = None  # None: one lane, no backlog
    max_lateness: timedelta = timedelta(0)  # 0: never expire
    max_attempts: int = 0  # 0: no limit
    backoff: Callable[[int], timedelta] | None = None  # attempt → delay, for unanswered attempts
    ahead: timedelta = timedelta(0)  # claim what falls due this far ahead (alarmd.publish_ahead)

    @classmethod
    def from_settings(cls, settings: AlarmdSettings) -> ClaimPolicy:
        return cls(
            lease=timedelta(seconds=settings.ack_timeout),
            late_after=timedelta(seconds=settings.late_after),
            max_lateness=timedelta(seconds=settings.max_lateness),
            max_attempts=settings.max_attempts,
            backoff=jittered_backoff(settings.retry_base, settings.retry_cap),
            ahead=timedelta(seconds=settings.publish_ahead),
        )


@dataclass(frozen=True)
class ClaimBatch:
    """What one claim did: the instances to publish (``late`` of them backlog; ``late_limited``
    when the catch-up limit stopped the backlog lane), and how many it expired or failed."""

    claimed: list[ClaimedAlarm]
    late: int = 0
    late_limited: bool = False
    expired: int = 0
    failed: int = 0


@dataclass(frozen=True)
class AlarmRecord:
    """One row of the queue, as ``alarmctl list`` shows it."""

    id: int
    calid: str
    uid: str
    rid: str
    aid: str
    component: str
    action: str
    state: str
    trigger: datetime
    next_at: datetime
    attempts: int
    last_error: str | None

    @property
    def ref(self) -> EventReference:
        return EventReference.alarm(self.component, self.calid, self.uid, self.rid, self.aid)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": str(self.ref),
            "calid": self.calid,
            "uid": self.uid,
            "rid": self.rid,
            "aid": self.aid,
            "component": self.component,
            "action": self.action,
            "state": self.state,
            "trigger": _iso(self.trigger),
            "next_at": _iso(self.next_at),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }


@dataclass
class EnqueueResult:
    """What one :meth:`AlarmQueue.enqueue` did: instances added, and skipped (already
    queued, or a trigger in the past)."""

    added: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"added": self.added, "skipped": self.skipped}


class InvalidAlarm(ValueError):
    """A single alarm given to :meth:`AlarmQueue.enqueue` that cannot be queued; says which and why."""


class MissingPrivilege(PermissionError):
    """The database role lacks a right a method needs; the message says which and the GRANT that gives it."""


@dataclass(frozen=True)
class _Audience:
    """Who reads an object's reminders: the owner's address (DISPLAY alarms) and their language."""

    owner: str
    locale: str


@dataclass
class PutResult:
    """What one ``put`` did; ``errors`` holds the objects that were rejected and why."""

    objects: int = 0
    added: int = 0
    kept: int = 0
    removed: int = 0
    errors: list[CalendarError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # planned, but not as written (e.g. thinned)

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "added": self.added,
            "kept": self.kept,
            "removed": self.removed,
            "errors": [str(e) for e in self.errors],
            "warnings": list(self.warnings),
        }


def parse_tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe" is a directory
        raise UnknownTimeZone(f"time zone {name!r} is not an IANA zone name such as Europe/Berlin") from None


DEFAULT_HORIZON = timedelta(days=7)


class AlarmQueue:
    """The alarm queue.

    ``default_tz`` reads floating and all-day times when ``put`` names no zone;
    ``horizon`` is how far ahead recurring series are materialised;
    ``min_interval`` thins series whose alarms come closer than that.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        default_tz: str = "UTC",
        horizon: timedelta = DEFAULT_HORIZON,
        min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    ) -> None:
        if horizon <= timedelta(0):
            raise ValueError("the horizon must be positive")
        self.engine = engine
        self.default_tz = parse_tz(default_tz)
        self.horizon = horizon
        self.min_interval = min_interval
        self._listeners: list[Callable[[], None]] = []
        self._added_listeners: list[Callable[[int], None]] = []

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        default_tz: str = "UTC",
        horizon: timedelta = DEFAULT_HORIZON,
        min_interval: timedelta = DEFAULT_MIN_INTERVAL,
    ) -> AlarmQueue:
        return cls(create_engine_from_url(url), default_tz=default_tz, horizon=horizon, min_interval=min_interval)

    @classmethod
    def from_settings(cls, settings: Settings) -> AlarmQueue:
        return cls.from_url(
            settings.database.url,
            default_tz=settings.alarmd.default_tz,
            horizon=timedelta(days=settings.alarmd.horizon_days),
            min_interval=timedelta(seconds=settings.alarmd.min_interval),
        )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> AlarmQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change that may make something due sooner."""
        self._listeners.append(callback)

    def add_added_listener(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(n)`` after this object added ``n`` instances (put, enqueue, horizon): metrics."""
        self._added_listeners.append(callback)

    # ---------------------------------------------------------------- enqueue

    def put(
        self,
        calid: str,
        ics: str | bytes,
        *,
        now: datetime,
        owner: str = "",
        tz: str | None = None,
        locale: str = "",
    ) -> PutResult:
        """Store the calendar objects in ``ics`` and (re)materialise their alarms.

        Each object is replaced atomically: instances whose key is unchanged keep
        their row and state (an in-flight one stays in flight), vanished ones are
        removed, new ones are added. Only triggers at or after ``now`` are added.
        A recurring series is materialised up to ``now + horizon`` and at least
        its next instance per alarm; :meth:`extend_horizon` moves it on. An
        object that cannot be read is reported in ``errors`` and leaves its
        stored state untouched; a text that is not iCalendar at all raises
        :class:`CalendarError`. ``owner`` receives DISPLAY alarms; ``locale``
        (``"de"``, ``"fr_CA"``) is the language of the reminders.
        """
        if locale and not _LOCALE.match(locale):
            raise InvalidLocale(f"locale {locale!r} is not a language tag such as de, fr or fr_CA")
        zone = parse_tz(tz) if tz else self.default_tz
        parsed = parse_calendar(ics)
        result = PutResult(errors=list(parsed.errors))
        for obj in parsed.objects:
            self._put_object(calid, obj, zone, _Audience(owner, locale), now, result)
        if result.added:
            self._changed(added=result.added)
        return result

    def enqueue(self, items: Iterable[AlarmPayload], *, now: datetime, chunk: int = ENQUEUE_CHUNK) -> EnqueueResult:
        """Queue single alarm instances, without a calendar object: bulk and fast.

        Each payload is one instance, due at its ``trigger`` and sent as it is (notifyd
        writes the reminder from it). An instance already queued (same calid, uid, rid,
        aid and trigger) is skipped, so enqueuing again is harmless; so is one whose
        trigger is before ``now`` (as :meth:`put` does). A payload that is not valid
        raises :class:`InvalidAlarm` before anything of its chunk is written (the chunks
        before it are). Rows go in ``chunk`` at a time, one transaction each.
        :meth:`remove` forgets them by calid and uid like any other; nothing re-plans them.

        On PostgreSQL a chunk goes in with COPY through a temporary table (the role needs
        the TEMPORARY privilege; :class:`MissingPrivilege` names the GRANT), and the next
        one is checked and built on the caller's thread while a worker thread writes it,
        one chunk at a time, in order: the Python side and the server's side each took
        about half of the time when they ran one after the other.
        """
        result = EnqueueResult()
        chunks = self._enqueue_chunks(items, now, chunk, result)
        try:
            if self.engine.dialect.name != "postgresql":
                # SQLite writes in this process: nothing to overlap (and an in-memory
                # database is a different one in another thread).
                for rows in chunks:
                    self._count_insert(rows, self._insert_singles(rows, now), result)
                return result
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="enqueue") as writer:
                writing: tuple[list[dict[str, Any]], Future[int]] | None = None
                try:
                    for rows in chunks:
                        lines = [_copy_line(row) for row in rows]  # here: the worker is left only the I/O
                        if writing is not None:
                            (written, added), writing = writing, None
                            self._count_insert(written, added.result(), result)
                        writing = rows, writer.submit(self._copy_singles, lines, now)
                finally:
                    if writing is not None:  # also when a later chunk failed: it is written all the same
                        self._count_insert(writing[0], writing[1].result(), result)
            return result
        finally:
            if result.added:
                self._changed(added=result.added)

    @staticmethod
    def _enqueue_chunks(
        items: Iterable[AlarmPayload], now: datetime, chunk: int, result: EnqueueResult
    ) -> Iterator[list[dict[str, Any]]]:
        """The rows of ``items`` in lists of ``chunk``; a past trigger counted as skipped."""
        rows: list[dict[str, Any]] = []
        for payload in items:
            row = _single_row(payload, now)
            if row is None:
                result.skipped += 1
                continue
            rows.append(row)
            if len(rows) >= chunk:
                yield rows
                rows = []
        if rows:
            yield rows

    @staticmethod
    def _count_insert(rows: list[dict[str, Any]], added: int, result: EnqueueResult) -> None:
        result.added += added
        result.skipped += len(rows) - added

    def _insert_singles(self, rows: list[dict[str, Any]], now: datetime) -> int:
        """Insert one chunk in one transaction on SQLite; how many rows were new."""
        stmt = (
            sqlite.insert(alarms)
            .on_conflict_do_nothing(index_elements=["calid", "uid", "rid", "aid", "trigger_at"])
            .returning(*_KEY)
        )
        with self.engine.begin() as conn:
            keys = [tuple(r) for r in conn.execute(stmt, rows)]
            self._history(conn, keys, "queued", now, detail="single alarm")
        return len(keys)

    def _copy_singles(self, lines: list[tuple[str, ...]], now: datetime) -> int:
        """Insert one chunk (:func:`_copy_line` rows) in one transaction on PostgreSQL; how
        many were new. One COPY per chunk (see _PG_INCOMING): a multi-row VALUES is a new
        query text for the server to parse every time (2,600 rows/s), array parameters are
        escaped element by element in Python (4,000 rows/s), and one JSON document of the
        rows took the server half again as long as COPY and INSERT … SELECT together."""
        with self.engine.begin() as conn:
            try:
                conn.exec_driver_sql(_PG_INCOMING)
            except sa.exc.ProgrammingError as exc:
                if getattr(exc.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
                    raise
                url = self.engine.url
                raise MissingPrivilege(
                    "bulk enqueue on PostgreSQL writes through a temporary table, and this database role may "
                    f"not create one: GRANT TEMPORARY ON DATABASE {url.database or '<database>'} "
                    f"TO {url.username or '<role>'} (PostgreSQL grants it to every role unless it was revoked)"
                ) from None
            cursor = conn.connection.cursor()
            try:
                with cursor.copy(_PG_COPY_INCOMING) as copy:
                    for line in lines:
                        copy.write_row(line)
            finally:
                cursor.close()
            added = int(conn.execute(_PG_ENQUEUE_INCOMING, {"now": now}).scalar_one())
            if added:
                _notify_dispatchers(conn)
        return added

    def extend_horizon(self, *, now: datetime, batch: int = 200) -> int:
        """Materialise recurring series up to ``now + horizon``; return how many series were re-planned.

        A series is re-planned when less than ``horizon - refill`` of it is
        queued, so each one is touched about once per ``refill`` (a day by
        default), not on every run. Run it periodically (alarmd does, with
        APScheduler) and after a long downtime.
        """
        refill = min(timedelta(days=1), self.horizon / 2)
        extended = 0
        while True:
            with self.engine.connect() as conn:
                due = conn.execute(
                    sa.select(
                        sources.c.calid, sources.c.uid, sources.c.ics, sources.c.owner, sources.c.locale, sources.c.tz
                    )
                    .where(sources.c.planned_until < now + self.horizon - refill)
                    .order_by(sources.c.planned_until)
                    .limit(batch)
                ).all()
            result = PutResult()
            for row in due:
                objects = parse_calendar(row.ics).objects
                if not objects:
                    continue
                audience = _Audience(row.owner, row.locale)
                self._put_object(row.calid, objects[0], parse_tz(row.tz), audience, now, result)
            for error in result.errors:  # a stored object that no longer plans (say, a zone vanished)
                log.warning("horizon: %s", error)
            extended += len(due)
            if result.added:
                self._changed(added=result.added)
            if len(due) < batch:
                return extended

    def _put_object(
        self, calid: str, obj: CalendarObject, zone: ZoneInfo, audience: _Audience, now: datetime, result: PutResult
    ) -> None:
        try:
            with self.engine.begin() as conn:
                existing = {
                    (r.calid, r.uid, r.rid, r.aid, r.trigger_at): r
                    for r in conn.execute(
                        sa.select(*_KEY, alarms.c.state).where(alarms.c.calid == calid, alarms.c.uid == obj.uid)
                    )
                }
                live = [r.trigger_at for r in existing.values() if r.state in LIVE_STATES]
                plan = plan_queue(
                    obj,
                    calid=calid,
                    tz=zone,
                    owner=audience.owner,
                    locale=audience.locale,
                    now=now,
                    horizon=self.horizon,
                    min_interval=self.min_interval,
                    first_live=min(live, default=None),
                    last_live=max(live, default=None),
                )
                added, kept, removed = self._replace_object(conn, calid, obj, plan, existing, zone, audience, now)
        except CalendarError as exc:
            result.errors.append(exc)
            return
        result.objects += 1
        result.added += added
        result.kept += kept
        result.removed += removed
        result.warnings.extend(plan.warnings)

    def _replace_object(
        self,
        conn: sa.Connection,
        calid: str,
        obj: CalendarObject,
        plan: QueuePlan,
        existing: dict[tuple[str, str, str, str, datetime], Any],
        zone: tzinfo,
        audience: _Audience,
        now: datetime,
    ) -> tuple[int, int, int]:
        source_values = {
            "component": obj.component,
            "ics": obj.to_ical(),
            "owner": audience.owner,
            "locale": audience.locale,
            "tz": str(getattr(zone, "key", "UTC")),
            "updated_at": now,
            "planned_until": plan.planned_until,
        }
        updated = conn.execute(
            sa.update(sources).where(sources.c.calid == calid, sources.c.uid == obj.uid).values(**source_values)
        )
        if updated.rowcount == 0:
            conn.execute(sa.insert(sources).values(calid=calid, uid=obj.uid, created_at=now, **source_values))

        wanted = {p.key: p for p in plan.alarms}
        # Only live instances can vanish: failed and expired rows are records for the operator.
        # Past a truncated plan's end nothing is known yet, so nothing there is removed either.
        gone = [
            row
            for key, row in existing.items()
            if key not in wanted
            and row.state in LIVE_STATES
            and (plan.covered_until is None or row.trigger_at < plan.covered_until)
        ]
        new = [p for key, p in wanted.items() if key not in existing and p.trigger >= now]
        kept = [(row, wanted[key]) for key, row in existing.items() if key in wanted]
        if gone:
            conn.execute(sa.delete(alarms).where(alarms.c.id.in_([r.id for r in gone])))
            self._history(
                conn,
                [(r.id, r.calid, r.uid, r.rid, r.aid, r.trigger_at) for r in gone],
                "removed",
                now,
                detail="no longer in the calendar object",
            )
        for row, planned in kept:
            if row.state == State.PENDING:
                conn.execute(
                    sa.update(alarms)
                    .where(alarms.c.id == row.id)
                    .values(payload=planned.payload.to_dict(), action=planned.action, updated_at=now)
                )
        if new:
            inserted = (
                conn.execute(
                    sa.insert(alarms).returning(alarms.c.id, sort_by_parameter_order=True),
                    [_row(p, now) for p in new],
                )
                .scalars()
                .all()
            )
            self._history(
                conn,
                [(i, p.calid, p.uid, p.rid, p.aid, p.trigger) for i, p in zip(inserted, new, strict=True)],
                "queued",
                now,
            )
        _notify_dispatchers(conn)
        return len(new), len(kept), len(gone)

    def remove(self, calid: str, uid: str, *, now: datetime) -> int:
        """Forget a calendar object and its pending and in-flight instances; return how many."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(sources).where(sources.c.calid == calid, sources.c.uid == uid))
            rows = conn.execute(
                sa.delete(alarms)
                .where(alarms.c.calid == calid, alarms.c.uid == uid, alarms.c.state.in_(LIVE_STATES))
                .returning(*_KEY)
            ).all()
            self._history(conn, [tuple(r) for r in rows], "removed", now, detail="calendar object removed")
        return len(rows)

    # ---------------------------------------------------------------- dispatch

    def claim_due(self, *, now: datetime, limit: int, lease: timedelta, owner: str) -> list[ClaimedAlarm]:
        """:meth:`claim` with nothing but a lease: every due instance, oldest first."""
        return self.claim(now=now, limit=limit, owner=owner, policy=ClaimPolicy(lease=lease)).claimed

    def claim(
        self, *, now: datetime, limit: int, owner: str, policy: ClaimPolicy, late_limit: int | None = None
    ) -> ClaimBatch:
        """Claim up to ``limit`` due instances for ``policy.lease``; each claim is a new attempt.

        Due means pending or in flight with ``next_at <= now + policy.ahead``: an
        instance whose ack did not arrive within its lease is simply due again; with
        ``ahead``, what falls due that soon is claimed early (its subscribers hold it
        until its trigger) and its lease counts from ``now + ahead``. In one transaction:

        1. never-sent instances more than ``policy.max_lateness`` overdue are marked
           ``expired`` (kept for the operator, not sent);
        2. in-flight instances whose lease ran out after ``policy.max_attempts``
           attempts are marked ``failed`` with the last reason;
        3. on-time instances (due less than ``policy.late_after`` ago) are claimed
           first, earliest first;
        4. then backlog (due longer ago), most recent first, at most ``late_limit``
           of them (the dispatcher's catch-up rate).

        A claimed attempt N ≥ 2 (its predecessor got no ack) waits its lease plus the
        backoff of attempt N-1 before it is due again. On PostgreSQL ``FOR UPDATE SKIP
        LOCKED`` lets several dispatchers claim side by side without waiting on or
        double-claiming each other's rows; on SQLite (one writer at a time) each
        UPDATE re-checks the due condition, so a row is claimed by one statement only.
        """
        due_by = now + policy.ahead
        due = sa.and_(IS_LIVE, alarms.c.next_at <= due_by)
        with self.engine.begin() as conn:
            expired = failed = 0
            if policy.max_lateness > timedelta(0):
                expired = self._mark(
                    conn,
                    sa.and_(
                        IS_LIVE,
                        alarms.c.state == State.PENDING,
                        alarms.c.attempts == 0,
                        # due (at its trigger, or when an operator retried it) that long ago
                        alarms.c.next_at < now - policy.max_lateness,
                    ),
                    State.EXPIRED,
                    sa.literal(f"not sent: more than {_span(policy.max_lateness)} overdue (alarmd.max_lateness)"),
                    now,
                )
            if policy.max_attempts:
                failed = self._mark(
                    conn,
                    sa.and_(
                        IS_NOT_PENDING,
                        alarms.c.state == State.INFLIGHT,
                        alarms.c.next_at <= due_by,
                        alarms.c.attempts >= policy.max_attempts,
                    ),
                    State.FAILED,
                    sa.literal(f"no ack after {policy.max_attempts} attempts (alarmd.max_attempts); last: ")
                    + sa.func.coalesce(alarms.c.last_error, "none"),
                    now,
                )
            if policy.late_after is None:
                claimed = self._claim_lane(conn, due, alarms.c.next_at.asc(), limit, now, policy, owner)
                late: list[ClaimedAlarm] = []
            else:
                recent = now - policy.late_after
                claimed = self._claim_lane(
                    conn, sa.and_(due, alarms.c.next_at >= recent), alarms.c.next_at.asc(), limit, now, policy, owner
                )
                room = limit - len(claimed) if late_limit is None else min(late_limit, limit - len(claimed))
                late = self._claim_lane(
                    conn, sa.and_(due, alarms.c.next_at < recent), alarms.c.next_at.desc(), room, now, policy, owner
                )
            everything = claimed + late
            everything.sort(key=lambda c: c.trigger)
            self._history(
                conn,
                [c.key for c in everything],
                "published",
                now,
                attempt=[c.attempt for c in everything],
                detail=f"by {owner}",
            )
        return ClaimBatch(
            everything,
            late=len(late),
            late_limited=late_limit is not None and len(late) >= late_limit,
            expired=expired,
            failed=failed,
        )

    def _claim_lane(
        self,
        conn: sa.Connection,
        where: sa.ColumnElement[bool],
        order: sa.UnaryExpression[Any],
        limit: int,
        now: datetime,
        policy: ClaimPolicy,
        owner: str,
    ) -> list[ClaimedAlarm]:
        if limit <= 0:
            return []
        chosen = _chosen(sa.select(alarms.c.id).where(where).order_by(order).limit(limit))
        stmt = (
            sa.update(alarms)
            .where(_in_chosen(conn, chosen, where))
            .values(
                state=State.INFLIGHT,
                attempts=alarms.c.attempts + 1,
                publications=alarms.c.publications + 1,
                next_at=now + policy.ahead + policy.lease,
                claimed_by=owner,
                updated_at=now,
            )
            .returning(
                alarms.c.id,
                alarms.c.attempts,
                alarms.c.publications,
                alarms.c.component,
                alarms.c.calid,
                alarms.c.uid,
                alarms.c.rid,
                alarms.c.aid,
                alarms.c.trigger_at,
                alarms.c.payload,
            )
        )
        claimed = [
            ClaimedAlarm(
                r.id, r.attempts, r.publications, r.component, r.calid, r.uid, r.rid, r.aid, r.trigger_at, r.payload
            )
            for r in conn.execute(stmt)
        ]
        again = [c for c in claimed if c.attempt >= 2]
        if again and policy.backoff is not None:
            # The previous attempt went unanswered: give this one longer before the next.
            conn.execute(
                sa.update(alarms)
                .where(alarms.c.id == sa.bindparam("alarm_id"), alarms.c.attempts == sa.bindparam("attempt"))
                .values(next_at=sa.bindparam("next_at")),
                [
                    {
                        "alarm_id": c.id,
                        "attempt": c.attempt,
                        "next_at": now + policy.ahead + policy.lease + policy.backoff(c.attempt - 1),
                    }
                    for c in again
                ],
            )
        return claimed

    def _mark(
        self,
        conn: sa.Connection,
        where: sa.ColumnElement[bool],
        state: State,
        reason: sa.ColumnElement[Any],
        now: datetime,
    ) -> int:
        """Move up to :data:`MARK_BATCH` rows matching ``where`` to ``state`` with ``reason``."""
        chosen = _chosen(sa.select(alarms.c.id).where(where).limit(MARK_BATCH))
        rows = conn.execute(
            sa.update(alarms)
            .where(_in_chosen(conn, chosen, where))
            .values(state=state, last_error=reason, updated_at=now)
            .returning(*_KEY, alarms.c.attempts, alarms.c.last_error)
        ).all()
        if rows:
            conn.execute(
                sa.insert(alarm_history),
                [_history_row(row[:6], state.value, now, attempt=row.attempts, detail=row.last_error) for row in rows],
            )
            log.warning("%d instance(s) marked %s: %s", len(rows), state.value, rows[0].last_error)
            if log.isEnabledFor(logging.INFO):  # one line per state change, ids only
                for row in rows:
                    log.info(
                        "marked %s",
                        state.value,
                        extra={
                            "alarm": row.id,
                            "calid": row.calid,
                            "uid": row.uid,
                            "rid": row.rid,
                            "aid": row.aid,
                            "attempt": row.attempts,
                            "state": state.value,
                        },
                    )
        return len(rows)

    def release(self, claimed: Iterable[ClaimedAlarm], *, now: datetime, delay: timedelta, reason: str) -> None:
        """Hand back claims that could not be published; they are due again after ``delay``."""
        items = list(claimed)
        if not items:
            return
        with self.engine.begin() as conn:
            for c in items:
                conn.execute(
                    sa.update(alarms)
                    .where(alarms.c.id == c.id, alarms.c.attempts == c.attempt, alarms.c.state == State.INFLIGHT)
                    .values(
                        state=State.PENDING,
                        attempts=alarms.c.attempts - 1,
                        next_at=now + delay,
                        last_error=reason,
                        updated_at=now,
                    )
                )
            self._history(
                conn,
                [c.key for c in items],
                "unpublished",
                now,
                detail=reason,
            )

    def ack(
        self,
        alarm_id: int,
        attempt: int,
        status: AckStatus,
        reason: str,
        *,
        now: datetime,
        retry_delay: timedelta,
        max_attempts: int = 0,
    ) -> AckOutcome:
        """Apply one end-to-end ack (see :meth:`ack_many`)."""
        request = AckRequest(alarm_id, attempt, status, reason, retry_delay)
        return self.ack_many([request], now=now, max_attempts=max_attempts)[0]

    def ack_many(self, requests: Sequence[AckRequest], *, now: datetime, max_attempts: int = 0) -> list[AckOutcome]:
        """Apply end-to-end acks in one transaction; the outcome of each, in order.

        ``delivered`` deletes the instance exactly once (the DELETE decides; a second
        ack finds nothing) when it names an attempt that was published: a late ack for
        attempt 1 of an instance now at attempt 2 counts, an ack for an attempt not yet
        made (a forged one, or one for an instance never published) is unknown and
        changes nothing. The delivered acks of a batch take one statement per attempt
        number among them. ``failed`` and ``retry`` only count when they answer the
        current attempt of an in-flight instance; an older attempt's verdict is stale. A
        ``retry`` for attempt ``max_attempts`` (0: no limit) marks the instance failed
        with that reason.
        """
        outcomes: list[AckOutcome] = [AckOutcome.UNKNOWN] * len(requests)
        delivered: dict[int, int] = {}  # instance → the request naming its earliest attempt
        for i, r in enumerate(requests):
            if r.status is AckStatus.DELIVERED:
                first = delivered.setdefault(r.alarm_id, i)
                if r.attempt < requests[first].attempt:
                    delivered[r.alarm_id] = i
        by_attempt: dict[int, list[int]] = {}
        for alarm_id, i in delivered.items():
            by_attempt.setdefault(requests[i].attempt, []).append(alarm_id)
        with self.engine.begin() as conn:
            deleted: list[Any] = []  # rows (id, calid, uid, rid, aid, trigger_at)
            for attempt, ids in sorted(by_attempt.items()):
                deleted += conn.execute(
                    sa.delete(alarms)
                    .where(alarms.c.id.in_(ids), alarms.c.attempts >= attempt)
                    .returning(alarms.c.id, *_KEY)
                ).all()
            if deleted:
                for row in deleted:
                    outcomes[delivered[row.id]] = AckOutcome.DELETED
                chosen = [requests[delivered[row.id]] for row in deleted]
                self._history(
                    conn,
                    [tuple(row)[1:] for row in deleted],
                    "delivered",
                    now,
                    attempt=[r.attempt for r in chosen],
                    detail=[r.reason for r in chosen],
                )
            for i, request in enumerate(requests):
                if request.status is not AckStatus.DELIVERED:
                    outcomes[i] = self._apply_verdict(conn, request, now, max_attempts)
        if AckOutcome.RESCHEDULED in outcomes:
            self._changed()
        return outcomes

    def _apply_verdict(self, conn: sa.Connection, request: AckRequest, now: datetime, max_attempts: int) -> AckOutcome:
        """A ``failed`` or ``retry`` ack (see :meth:`ack_many`)."""
        alarm_id, attempt, status, reason = request.alarm_id, request.attempt, request.status, request.reason
        row = conn.execute(sa.select(*_KEY, alarms.c.state, alarms.c.attempts).where(alarms.c.id == alarm_id)).first()
        if row is None:
            return AckOutcome.UNKNOWN
        if row.state != State.INFLIGHT or row.attempts != attempt:
            return AckOutcome.STALE
        if status is AckStatus.RETRY and max_attempts and attempt >= max_attempts:
            reason = f"gave up after {attempt} attempts (alarmd.max_attempts); last: {reason or 'retry'}"
            status = AckStatus.FAILED
        if status is AckStatus.FAILED:
            values: dict[str, Any] = {"state": State.FAILED, "last_error": reason or "failed", "updated_at": now}
            event, outcome = "failed", AckOutcome.FAILED
        else:
            values = {
                "state": State.PENDING,
                "next_at": now + request.retry_delay,
                "last_error": reason or "retry",
                "updated_at": now,
            }
            event, outcome = "retry", AckOutcome.RESCHEDULED
        conn.execute(sa.update(alarms).where(alarms.c.id == alarm_id, alarms.c.attempts == attempt).values(**values))
        self._history(conn, [tuple(row)[:6]], event, now, attempt=attempt, detail=reason)
        return outcome

    def next_due_at(self, *, not_before: datetime | None = None) -> datetime | None:
        """The earliest ``next_at`` of a live instance (at or after ``not_before``, when
        given), or None when there is none."""
        where: sa.ColumnElement[bool] = IS_LIVE
        if not_before is not None:
            where = sa.and_(where, alarms.c.next_at >= not_before)
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.min(alarms.c.next_at)).where(where)).scalar()
        return _aware(value)

    def purge_history(self, *, before: datetime, batch: int = 10_000) -> int:
        """Delete history rows recorded before ``before``, ``batch`` rows per transaction; return how many."""
        total = 0
        while True:
            chosen = sa.select(alarm_history.c.id).where(alarm_history.c.at < before).limit(batch)
            with self.engine.begin() as conn:
                deleted = conn.execute(sa.delete(alarm_history).where(alarm_history.c.id.in_(chosen))).rowcount
            total += int(deleted)
            if deleted < batch:
                return total

    # ---------------------------------------------------------------- inspect and administer (alarmctl)
    #
    # Listing, one instance with its history, statistics and dispatch activity; and the
    # operator's changes: put parsed objects, retry, delete, purge. Each change writes a
    # history row per instance it touches ("requeued", "removed"), in its transaction.

    SORT_KEYS = ("next_at", "trigger", "id", "attempts", "updated", "state", "calid")

    def list_alarms(
        self,
        *,
        state: str | None = None,
        calid: str | None = None,
        uid: str | None = None,
        alarm_id: int | None = None,
        due_after: datetime | None = None,
        due_before: datetime | None = None,
        sort: str = "next_at",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlarmRecord]:
        """The instances that match every filter given, a page of ``limit`` from ``offset``.

        ``due_after <= next_at < due_before``. ``sort`` is one of :attr:`SORT_KEYS`
        (``trigger`` is the alarm's instant, ``updated`` its last change); the id breaks
        ties, so consecutive pages neither overlap nor skip while the queue is unchanged.
        """
        columns: dict[str, sa.ColumnElement[Any]] = {
            "next_at": alarms.c.next_at,
            "trigger": alarms.c.trigger_at,
            "id": alarms.c.id,
            "attempts": alarms.c.attempts,
            "updated": alarms.c.updated_at,
            "state": alarms.c.state,
            "calid": alarms.c.calid,
        }
        if sort not in columns:
            raise ValueError(f"sort must be one of {', '.join(self.SORT_KEYS)}, not {sort!r}")
        where: list[sa.ColumnElement[bool]] = []
        if alarm_id is not None:
            where.append(alarms.c.id == alarm_id)
        if state:
            where += [IS_NOT_PENDING if state != State.PENDING else IS_LIVE, alarms.c.state == state]
        if calid:
            where.append(alarms.c.calid == calid)
        if uid:
            where.append(alarms.c.uid == uid)
        if due_after is not None:
            where.append(alarms.c.next_at >= due_after)
        if due_before is not None:
            where.append(alarms.c.next_at < due_before)
        order = [columns[sort], alarms.c.id] if sort != "id" else [alarms.c.id]
        query = (
            sa.select(alarms)
            .where(*where)
            .order_by(*(column.desc() if descending else column.asc() for column in order))
            .limit(limit)
            .offset(offset)
        )
        with self.engine.connect() as conn:
            return [self._record(r) for r in conn.execute(query)]

    @staticmethod
    def _record(r: sa.Row[Any]) -> AlarmRecord:
        return AlarmRecord(
            r.id, r.calid, r.uid, r.rid, r.aid, r.component, r.action, r.state, r.trigger_at, r.next_at, r.attempts,
            r.last_error,
        )  # fmt: skip

    def alarm(self, alarm_id: int) -> dict[str, Any] | None:
        """One instance as ``alarmctl show`` prints it: :meth:`AlarmRecord.to_json`, who claimed
        it last, when it was queued and last changed, and its payload (what notifyd writes the
        reminder from); None when it is not queued (any more: see :meth:`history`)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(alarms).where(alarms.c.id == alarm_id)).first()
        if row is None:
            return None
        extra = {"publications": row._mapping["publications"]} if "publications" in row._mapping else {}
        return {
            **self._record(row).to_json(),
            **extra,
            "claimed_by": row.claimed_by,
            "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at),
            "payload": row.payload,
        }

    def history(self, alarm_id: int) -> list[dict[str, Any]]:
        query = sa.select(alarm_history).where(alarm_history.c.alarm_id == alarm_id).order_by(alarm_history.c.id)
        with self.engine.connect() as conn:
            return [
                {"at": _iso(r.at), "event": r.event, "attempt": r.attempt, "detail": r.detail}
                for r in conn.execute(query)
            ]

    def stats(self, *, now: datetime) -> dict[str, Any]:
        with self.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(sa.select(alarms.c.state, sa.func.count()).group_by(alarms.c.state)).all()
            )
            oldest = conn.execute(
                sa.select(alarms.c.trigger_at)
                .where(IS_LIVE, alarms.c.state == State.PENDING, alarms.c.next_at <= now)
                .order_by(alarms.c.trigger_at)
                .limit(1)
            ).scalar()
            sources_count = conn.execute(sa.select(sa.func.count()).select_from(sources)).scalar_one()
        next_due = self.next_due_at()
        return {
            "states": {s.value: int(counts.get(s.value, 0)) for s in State},
            "total": int(sum(counts.values())),
            "sources": int(sources_count),
            "next_due": _iso(next_due) if next_due else None,
            "oldest_overdue": _iso(oldest) if oldest else None,
            "oldest_overdue_seconds": round((now - oldest).total_seconds(), 3) if oldest else 0.0,
        }

    def overview(self, *, now: datetime, top: int = 5, hours: int = 24) -> dict[str, Any]:
        """:meth:`stats` and what an operator asks next (``alarmctl stats``).

        Adds ``inflight`` (published, waiting for an ack), ``overdue`` (live instances
        with ``next_at`` before ``now``: due and not claimed yet, or whose ack is late),
        ``failure_reasons``, the ``top`` most common reasons of failed instances
        (addresses replaced by ``<address>``, so one refusal for many recipients counts
        as one reason), ``due_by_hour``, pending instances due in each of the next
        ``hours`` hours, and ``due_later``, those due after that.
        """
        body = self.stats(now=now)
        hourly = [(now + timedelta(hours=h), now + timedelta(hours=h + 1)) for h in range(hours)]
        end_of_last = now + timedelta(hours=hours)
        pending = alarms.c.state == State.PENDING
        buckets = [
            sa.func.sum(sa.case((sa.and_(pending, alarms.c.next_at >= start, alarms.c.next_at < end), 1), else_=0))
            for start, end in hourly
        ]
        with self.engine.connect() as conn:
            # The live rows due before the last bucket's end: a range of the claim's index.
            overdue, *counts = conn.execute(
                sa.select(sa.func.sum(sa.case((alarms.c.next_at < now, 1), else_=0)), *buckets).where(
                    IS_LIVE, alarms.c.next_at < end_of_last
                )
            ).one()
            later = conn.execute(
                sa.select(sa.func.count()).where(IS_LIVE, pending, alarms.c.next_at >= end_of_last)
            ).scalar_one()
            reasons = conn.execute(
                sa.select(alarms.c.last_error, sa.func.count())
                .where(IS_NOT_PENDING, alarms.c.state == State.FAILED)
                .group_by(alarms.c.last_error)
            ).all()
        merged: dict[str, int] = {}
        for reason, count in reasons:
            text = re.sub(r"[^\s<>:;,()\"']+@[^\s<>:;,()\"']+", "<address>", reason or "(no reason recorded)")
            merged[text] = merged.get(text, 0) + int(count)
        body.update(
            inflight=body["states"][State.INFLIGHT.value],
            overdue=int(overdue or 0),
            failure_reasons=[
                {"reason": reason, "count": count}
                for reason, count in sorted(merged.items(), key=lambda item: (-item[1], item[0]))[:top]
            ],
            due_by_hour=[
                {"from": _iso(start), "until": _iso(end), "pending": int(n or 0)}
                for (start, end), n in zip(hourly, counts, strict=True)
            ],
            due_later=int(later),
        )
        return body

    def activity(self, *, since: datetime, now: datetime, failures: int = 10, sample: int = 5000) -> dict[str, Any]:
        """What dispatch did from ``since`` to ``now``, read from the history (``alarmctl watch``).

        ``events``: how many of each history event (``published``, ``delivered``,
        ``failed``, ``retry``, ``expired``, …); ``lateness``: seconds from trigger to
        first publication of up to ``sample`` of the latest first publications, latest
        first (not counting those after an operator's :meth:`retry`); ``failures``: the
        latest ``failures`` failed, retry and expired events.
        """
        window = sa.and_(alarm_history.c.at >= since, alarm_history.c.at <= now)
        with self.engine.connect() as conn:
            events = conn.execute(
                sa.select(alarm_history.c.event, sa.func.count()).where(window).group_by(alarm_history.c.event)
            ).all()
            # A publication after an operator's retry is attempt 1 again, but its lateness
            # is the operator's doing, not the dispatcher's: left out.
            requeued = alarm_history.alias("requeued")
            published = conn.execute(
                sa.select(alarm_history.c.at, alarm_history.c.trigger_at)
                .where(
                    window,
                    alarm_history.c.event == "published",
                    alarm_history.c.attempt == 1,
                    ~sa.exists().where(
                        requeued.c.alarm_id == alarm_history.c.alarm_id,
                        requeued.c.event == "requeued",
                        requeued.c.id < alarm_history.c.id,
                    ),
                )
                .order_by(alarm_history.c.at.desc())
                .limit(sample)
            ).all()
            failed = conn.execute(
                sa.select(alarm_history)
                .where(window, alarm_history.c.event.in_(("failed", "retry", "expired")))
                .order_by(alarm_history.c.id.desc())
                .limit(failures)
            ).all()
        return {
            "events": {str(event): int(count) for event, count in events},
            "lateness": [round((at - trigger).total_seconds(), 3) for at, trigger in published],
            "failures": [
                {
                    "at": _iso(r.at),
                    "alarm_id": r.alarm_id,
                    "calid": r.calid,
                    "uid": r.uid,
                    "rid": r.rid,
                    "aid": r.aid,
                    "event": r.event,
                    "attempt": r.attempt,
                    "detail": r.detail,
                }
                for r in failed
            ],
        }

    def put_objects(
        self,
        calid: str,
        objects: Iterable[CalendarObject],
        *,
        now: datetime,
        owner: str = "",
        tz: str | None = None,
        locale: str = "",
        progress: Callable[[PutResult], None] | None = None,
    ) -> PutResult:
        """:meth:`put` for objects already parsed (:func:`alarmd.ical.parse_calendar`), calling
        ``progress`` with the result so far after each object (``alarmctl enqueue`` shows a
        large file's progress with it). Each object is its own transaction, as with ``put``."""
        if locale and not _LOCALE.match(locale):
            raise InvalidLocale(f"locale {locale!r} is not a language tag such as de, fr or fr_CA")
        zone = parse_tz(tz) if tz else self.default_tz
        audience = _Audience(owner, locale)
        result = PutResult()
        for obj in objects:
            self._put_object(calid, obj, zone, audience, now, result)
            if progress is not None:
                progress(result)
        if result.added:
            self._changed(added=result.added)
        return result

    def retry(
        self,
        *,
        now: datetime,
        alarm_id: int | None = None,
        calid: str | None = None,
        states: Sequence[str] = (State.FAILED,),
    ) -> list[AlarmRecord]:
        """Send instances again that were given up: each becomes ``pending``, due at ``now``,
        its attempts counted from 0 again (alarmd.max_attempts applies afresh); it keeps
        its last error until the next outcome replaces it. ``alarm_id`` names one instance,
        else every instance in ``states`` (``failed``, ``expired``) is taken, of calendar
        ``calid`` when given. A history row ``requeued`` records the state and reason each
        had. Returns the instances requeued, as they are now; the dispatchers are woken.
        """
        done: list[AlarmRecord] = []
        with self.engine.begin() as conn:
            for state in dict.fromkeys(str(s) for s in states):
                if state not in (State.FAILED, State.EXPIRED):
                    raise ValueError(f"only failed and expired instances are retried, not {state}")
                where = [IS_NOT_PENDING, alarms.c.state == state]
                if alarm_id is not None:
                    where.append(alarms.c.id == alarm_id)
                if calid:
                    where.append(alarms.c.calid == calid)
                rows = conn.execute(
                    sa.update(alarms)
                    .where(*where)
                    .values(state=State.PENDING, next_at=now, attempts=0, claimed_by=None, updated_at=now)
                    .returning(*alarms.c)
                ).all()
                self._history(
                    conn,
                    [(r.id, r.calid, r.uid, r.rid, r.aid, r.trigger_at) for r in rows],
                    "requeued",
                    now,
                    detail=[f"by an operator; was {state}: {r.last_error or 'no reason recorded'}" for r in rows],
                )
                done.extend(self._record(r) for r in rows)
            if done:
                _notify_dispatchers(conn)
        if done:
            self._changed()
        return done

    def delete(
        self, *, now: datetime, alarm_id: int | None = None, calid: str | None = None, uid: str | None = None
    ) -> tuple[int, int]:
        """Delete instances in any state, a history row ``removed`` for each: the instance
        ``alarm_id``, or every instance of calendar ``calid`` (of its object ``uid`` only,
        when given) with the stored calendar objects, so that the horizon job does not plan
        them again. Returns (instances, calendar objects) deleted. A deleted instance of a
        series whose object stays may be planned again when the series is re-planned; an
        in-flight one may still be mailed (its ack then finds nothing)."""
        if (alarm_id is None) == (calid is None):
            raise ValueError("give alarm_id or calid")
        with self.engine.begin() as conn:
            objects = 0
            if alarm_id is not None:
                where = alarms.c.id == alarm_id
            else:
                where = alarms.c.calid == calid
                held = sources.c.calid == calid
                if uid is not None:
                    where = sa.and_(where, alarms.c.uid == uid)
                    held = sa.and_(held, sources.c.uid == uid)
                objects = int(conn.execute(sa.delete(sources).where(held)).rowcount)
            rows = conn.execute(sa.delete(alarms).where(where).returning(*_KEY, alarms.c.state)).all()
            self._history(
                conn,
                [tuple(r)[:6] for r in rows],
                "removed",
                now,
                detail=[f"deleted by an operator (was {r.state})" for r in rows],
            )
        return len(rows), objects

    def purge(self, *, now: datetime, states: Sequence[str], older_than: timedelta, batch: int = MARK_BATCH) -> int:
        """Delete failed and/or expired instances (``states``) last changed at least
        ``older_than`` before ``now``, ``batch`` per transaction, each with a ``removed``
        history row; return how many. Their history stays until ``alarmd.history_retention``
        removes it, so ``alarmctl show ID`` still tells what happened."""
        wanted = list(dict.fromkeys(str(s) for s in states))
        if not wanted or any(s not in (State.FAILED, State.EXPIRED) for s in wanted):
            raise ValueError("only failed and expired instances are purged")
        where = sa.and_(IS_NOT_PENDING, alarms.c.state.in_(wanted), alarms.c.updated_at <= now - older_than)
        total = 0
        while True:
            chosen = sa.select(alarms.c.id).where(where).order_by(alarms.c.id).limit(batch)
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.delete(alarms)
                    .where(alarms.c.id.in_(chosen), where)
                    .returning(*_KEY, alarms.c.state, alarms.c.last_error)
                ).all()
                self._history(
                    conn,
                    [tuple(r)[:6] for r in rows],
                    "removed",
                    now,
                    detail=[
                        f"purged by an operator; was {r.state}: {r.last_error or 'no reason recorded'}" for r in rows
                    ],
                )
            total += len(rows)
            if len(rows) < batch:
                return total

    # ---------------------------------------------------------------- helpers

    def _history(
        self,
        conn: sa.Connection,
        keys: Sequence[Sequence[Any]],
        event: str,
        now: datetime,
        *,
        attempt: int | Sequence[int] = 0,
        detail: str | Sequence[str] = "",
    ) -> None:
        """Record ``event`` for each instance key; ``attempt`` and ``detail`` are one value for all or one per key."""
        if not keys:
            return
        attempts = [attempt] * len(keys) if isinstance(attempt, int) else attempt
        details = [detail] * len(keys) if isinstance(detail, str) else detail
        conn.execute(
            sa.insert(alarm_history),
            [_history_row(k, event, now, attempt=a, detail=d) for k, a, d in zip(keys, attempts, details, strict=True)],
        )

    def _changed(self, added: int = 0) -> None:
        for callback in self._listeners:
            callback()
        for counted in self._added_listeners if added else ():
            counted(added)


def _row(p: PlannedAlarm, now: datetime) -> dict[str, Any]:
    return {
        "calid": p.calid,
        "uid": p.uid,
        "rid": p.rid,
        "aid": p.aid,
        "component": p.component,
        "action": p.action,
        "trigger_at": p.trigger,
        "state": State.PENDING.value,
        "next_at": p.trigger,
        "attempts": 0,
        "payload": p.payload.to_dict(),
        "created_at": now,
        "updated_at": now,
    }


def _chosen(select: sa.Select[tuple[int]]) -> sa.CTE:
    """The rows an UPDATE may take, locked and chosen once.

    A materialised CTE, not ``id IN (subquery)``: PostgreSQL may run such a subquery
    again for every outer row (a nested-loop semi join), and with SKIP LOCKED each run
    skips the rows already taken, so the LIMIT was not kept and one claim took every
    due row (found by tests/integration/test_concurrent_dispatchers.py).
    """
    return select.with_for_update(skip_locked=True).cte("chosen").prefix_with("MATERIALIZED", dialect="postgresql")


def _in_chosen(conn: sa.Connection, chosen: sa.CTE, where: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """The condition of an UPDATE of the rows of ``chosen`` (:func:`_chosen`, selected by ``where``).

    On PostgreSQL the CTE checked ``where`` and locked its rows (``FOR UPDATE``): nobody
    can change them before the UPDATE, which joins on the id alone and so reaches each
    row through the primary key. Repeating ``where`` there let the planner, on
    statistics older than a burst, scan the due index for the outer side instead and
    compare every due row with every chosen one: in a burst of 10,000 due at one
    instant a claim of 100 took 56 ms (median; 110 ms the first) instead of 6.5 ms, and
    bounded the standard deployment's drain. SQLite takes no row locks: its UPDATE
    re-checks ``where``, so a row is claimed by one statement only.
    """
    if conn.dialect.name == "postgresql":
        return alarms.c.id == chosen.c.id
    return sa.and_(alarms.c.id == chosen.c.id, where)


def _single_row(payload: AlarmPayload, now: datetime) -> dict[str, Any] | None:
    """The ``alarms`` row of one enqueued payload, None when its trigger is past; checks it."""
    try:
        trigger = payload.check()  # the checks notifyd makes on arrival, made before queuing
    except PayloadError as exc:
        raise InvalidAlarm(f"alarm {payload.calid!r}/{payload.uid!r}: {exc}") from None
    for name, limit in (("calid", 255), ("uid", 255), ("aid", 255), ("rid", 32)):
        if len(getattr(payload, name)) > limit:
            raise InvalidAlarm(f"alarm {payload.calid[:50]!r}/{payload.uid[:50]!r}: {name} is over {limit} characters")
    if not payload.calid or not payload.uid or not payload.aid:
        raise InvalidAlarm(f"alarm {payload.calid!r}/{payload.uid!r}: calid, uid and aid must not be empty")
    if trigger < now:
        return None
    data = payload.to_dict()
    if not _CANONICAL_TRIGGER.fullmatch(payload.trigger):
        data["trigger"] = _trigger_text(trigger)  # one spelling on the wire and in notifyd's dedup key
    return {
        "calid": payload.calid,
        "uid": payload.uid,
        "rid": payload.rid,
        "aid": payload.aid,
        "component": payload.component,
        "action": payload.action,
        "trigger_at": trigger,
        "state": State.PENDING.value,
        "next_at": trigger,
        "attempts": 0,
        "payload": data,
        "created_at": now,
        "updated_at": now,
    }


def _copy_line(row: dict[str, Any]) -> tuple[str, ...]:
    """A :func:`_single_row` as a row of ``calalarm_incoming``; trigger_at as the payload
    spells it (canonical UTC)."""
    payload = row["payload"]
    return (
        row["calid"],
        row["uid"],
        row["rid"],
        row["aid"],
        row["component"],
        row["action"],
        payload["trigger"],
        json.dumps(payload),
    )


# What _trigger_text writes for a whole second: such a trigger is kept as given.
_CANONICAL_TRIGGER = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def _trigger_text(trigger: datetime) -> str:
    """``2026-11-23T10:05:00Z``, or with the fraction of a second a single alarm may have
    (``…T10:05:00.250Z``): whatever offset or short form the caller used."""
    if not trigger.microsecond:
        return format_utc(trigger)
    spec = "milliseconds" if trigger.microsecond % 1000 == 0 else "microseconds"
    return trigger.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _history_row(
    key: Sequence[Any], event: str, now: datetime, *, attempt: int = 0, detail: str = ""
) -> dict[str, Any]:
    row = dict(zip(_HISTORY_KEY, key, strict=True))
    row.update(at=now, event=event, attempt=attempt, detail=detail[:2000])
    return row


def _aware(value: datetime | str | None) -> datetime | None:
    """An aggregate's date-time: SQLite's MIN()/MAX() return text, bypassing the column type."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _span(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _notify_dispatchers(conn: sa.Connection) -> None:
    """On PostgreSQL, wake every alarmd listening (``alarmd.wakeup``) when this transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"NOTIFY {NOTIFY_CHANNEL}"))
