"""AlarmQueue against real SQLite and PostgreSQL (the same tests on both)."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from alarmd.ical import CalendarError
from alarmd.queue import AckOutcome, AckRequest, AlarmQueue, ClaimPolicy
from common.db import migrate
from common.db.engine import create_engine_from_url
from common.db.tables import alarm_history, alarms, metadata
from common.ens.envelope import AckStatus
from tests.calendars import display, event, utc
from tests.payloads import sample_payload

NOW = utc("2026-11-23T10:00:00Z")
LEASE = timedelta(seconds=60)
NO_DELAY = timedelta(0)


def put_one(queue: AlarmQueue, uid: str = "e1", minutes: int = 15, *alarms: str) -> None:
    result = queue.put("jac", event(uid, NOW + timedelta(minutes=minutes), *(alarms or (display("-PT5M"),))), now=NOW)
    assert not result.errors


def test_migrations_match_the_table_definitions(database_url: str) -> None:
    engine = create_engine_from_url(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_put_claim_ack_delivered_deletes_and_keeps_history(queue: AlarmQueue) -> None:
    put_one(queue)
    assert queue.next_due_at() == utc("2026-11-23T10:10:00Z")
    assert queue.claim_due(now=utc("2026-11-23T10:09:59Z"), limit=10, lease=LEASE, owner="t") == []
    (claimed,) = queue.claim_due(now=utc("2026-11-23T10:10:00Z"), limit=10, lease=LEASE, owner="t")
    assert (claimed.attempt, claimed.renl_id) == (1, f"{claimed.id}:1")
    assert str(claimed.ref) == "enp:///ics/eventalarm?calid=jac&uid=e1&rid=&aid=1"
    assert claimed.payload["trigger"] == "2026-11-23T10:10:00Z"
    assert queue.ack(claimed.id, 1, AckStatus.DELIVERED, "", now=NOW, retry_delay=NO_DELAY) is AckOutcome.DELETED
    assert queue.list_alarms() == []
    assert [h["event"] for h in queue.history(claimed.id)] == ["queued", "published", "delivered"]


def test_unacked_instance_is_due_again_after_its_lease_and_late_ack_removes_it_once(queue: AlarmQueue) -> None:
    put_one(queue)
    due = utc("2026-11-23T10:10:00Z")
    (first,) = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    assert queue.claim_due(now=due + LEASE - timedelta(milliseconds=1), limit=10, lease=LEASE, owner="t") == []
    (second,) = queue.claim_due(now=due + LEASE, limit=10, lease=LEASE, owner="t")
    assert (second.id, second.attempt) == (first.id, 2)
    assert [r.state for r in queue.list_alarms()] == ["inflight"]
    # The first attempt's ack arrives late: it still counts, exactly once.
    assert queue.ack(first.id, 1, AckStatus.DELIVERED, "", now=due, retry_delay=NO_DELAY) is AckOutcome.DELETED
    assert queue.ack(second.id, 2, AckStatus.DELIVERED, "", now=due, retry_delay=NO_DELAY) is AckOutcome.UNKNOWN
    assert queue.list_alarms() == []


def test_publications_count_every_claim_and_a_release_gives_back_only_the_attempt(queue: AlarmQueue) -> None:
    put_one(queue)
    due = utc("2026-11-23T10:10:00Z")
    (first,) = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    assert (first.attempt, first.publication) == (1, 1)
    # The publish could not be confirmed: the broker may have the message all the same.
    queue.release([first], now=due, delay=NO_DELAY, reason="no confirm")
    (again,) = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    assert (again.attempt, again.publication) == (1, 2)
    (third,) = queue.claim_due(now=due + LEASE, limit=10, lease=LEASE, owner="t")
    assert (third.attempt, third.publication) == (2, 3)


def test_migration_0004_counts_the_publications_of_existing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0003")
    engine = create_engine_from_url(url)
    row: dict[str, Any] = {
        "calid": "jac",
        "uid": "e1",
        "rid": "",
        "aid": "1",
        "component": "event",
        "action": "DISPLAY",
    }
    row |= {"trigger_at": NOW, "next_at": NOW, "payload": {}, "created_at": NOW, "updated_at": NOW}
    events = {1: ["queued"], 2: ["queued", "published", "unpublished", "published"], 3: ["queued", "published"]}
    with engine.begin() as conn:
        for alarm_id, attempts in ((1, 0), (2, 1), (3, 4)):  # 3: its history purged in part
            conn.execute(
                alarms.insert().values(id=alarm_id, state="pending", attempts=attempts, **{**row, "aid": str(alarm_id)})
            )
            conn.execute(
                alarm_history.insert(),
                [{**_history(row, alarm_id), "event": event} for event in events[alarm_id]],
            )
    engine.dispose()
    migrate.upgrade(url)
    engine = create_engine_from_url(url)
    with engine.connect() as conn:
        counted = dict(conn.execute(sa.select(alarms.c.id, alarms.c.publications)).all())
    engine.dispose()
    assert counted == {1: 0, 2: 2, 3: 4}


def _history(row: dict[str, Any], alarm_id: int) -> dict[str, Any]:
    return {
        "alarm_id": alarm_id,
        **{k: row[k] for k in ("calid", "uid", "rid", "trigger_at")},
        "aid": str(alarm_id),
        "at": NOW,
    }


def test_ack_many_applies_a_mixed_batch_in_one_transaction_with_an_outcome_each(queue: AlarmQueue) -> None:
    for uid in ("a", "b", "c", "d"):
        put_one(queue, uid)
    due = utc("2026-11-23T10:10:00Z")
    a, b, c, d = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    outcomes = queue.ack_many(
        [
            AckRequest(a.id, 1, AckStatus.DELIVERED, "250 a", NO_DELAY),
            AckRequest(b.id, 1, AckStatus.RETRY, "451 busy", timedelta(seconds=30)),
            AckRequest(a.id, 1, AckStatus.DELIVERED, "250 again", NO_DELAY),  # a duplicate ack in the batch
            AckRequest(c.id, 1, AckStatus.FAILED, "550 no such user", NO_DELAY),
            AckRequest(d.id, 1, AckStatus.DELIVERED, "250 d", NO_DELAY),
            AckRequest(999_999, 1, AckStatus.DELIVERED, "", NO_DELAY),
        ],
        now=due,
    )
    assert outcomes == [
        AckOutcome.DELETED,
        AckOutcome.RESCHEDULED,
        AckOutcome.UNKNOWN,
        AckOutcome.FAILED,
        AckOutcome.DELETED,
        AckOutcome.UNKNOWN,
    ]
    assert {r.uid: (r.state, r.last_error) for r in queue.list_alarms()} == {
        "b": ("pending", "451 busy"),
        "c": ("failed", "550 no such user"),
    }
    delivered = {h["detail"]: h["attempt"] for i in (a.id, d.id) for h in queue.history(i) if h["event"] == "delivered"}
    assert delivered == {"250 a": 1, "250 d": 1}  # each row with its own ack's detail


def test_a_delivered_ack_deletes_only_for_an_attempt_that_was_published(queue: AlarmQueue) -> None:
    for uid in ("a", "b", "c"):
        put_one(queue, uid)
    put_one(queue, "never", 60)
    due = utc("2026-11-23T10:10:00Z")
    a, b, c = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    never = next(r.id for r in queue.list_alarms() if r.uid == "never")
    outcomes = queue.ack_many(
        [
            AckRequest(a.id, 2, AckStatus.DELIVERED, "forged: attempt 2 was never made", NO_DELAY),
            AckRequest(a.id, 1, AckStatus.DELIVERED, "250 a", NO_DELAY),  # the genuine one, after it
            AckRequest(b.id, 1, AckStatus.DELIVERED, "250 b", NO_DELAY),
            AckRequest(c.id, 9, AckStatus.DELIVERED, "forged", NO_DELAY),
            AckRequest(never, 1, AckStatus.DELIVERED, "forged: never published", NO_DELAY),
        ],
        now=due,
    )
    assert outcomes == [
        AckOutcome.UNKNOWN,
        AckOutcome.DELETED,
        AckOutcome.DELETED,
        AckOutcome.UNKNOWN,
        AckOutcome.UNKNOWN,
    ]
    assert {r.uid: r.state for r in queue.list_alarms()} == {"c": "inflight", "never": "pending"}
    assert [h["detail"] for h in queue.history(a.id) if h["event"] == "delivered"] == ["250 a"]


def test_retry_reschedules_failed_marks_and_stale_acks_are_ignored(queue: AlarmQueue) -> None:
    put_one(queue, "a")
    put_one(queue, "b")
    due = utc("2026-11-23T10:10:00Z")
    a, b = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    assert queue.ack(a.id, 1, AckStatus.RETRY, "451", now=due, retry_delay=timedelta(seconds=30)) is (
        AckOutcome.RESCHEDULED
    )
    assert queue.ack(a.id, 1, AckStatus.FAILED, "late verdict", now=due, retry_delay=NO_DELAY) is AckOutcome.STALE
    assert queue.ack(b.id, 1, AckStatus.FAILED, "550 no such user", now=due, retry_delay=NO_DELAY) is (
        AckOutcome.FAILED
    )
    by_uid = {r.uid: r for r in queue.list_alarms()}
    assert (by_uid["a"].state, by_uid["a"].next_at, by_uid["a"].last_error) == (
        "pending",
        due + timedelta(seconds=30),
        "451",
    )
    assert (by_uid["b"].state, by_uid["b"].last_error) == ("failed", "550 no such user")
    # A failed instance is never claimed again; the retried one is, after its delay.
    (again,) = queue.claim_due(now=due + timedelta(hours=1), limit=10, lease=LEASE, owner="t")
    assert (again.id, again.attempt) == (a.id, 2)
    stats = queue.stats(now=due)
    assert stats["states"] == {"pending": 0, "inflight": 1, "failed": 1, "expired": 0}


def test_reput_keeps_unchanged_instances_and_their_state(queue: AlarmQueue) -> None:
    put_one(queue, "e1", 15, display("-PT5M"), display("-PT1M"))
    due = utc("2026-11-23T10:10:00Z")
    (inflight,) = queue.claim_due(now=due, limit=10, lease=LEASE, owner="t")
    # Edit: alarm 1 unchanged (in flight), alarm 2 moved, a third added.
    result = queue.put(
        "jac",
        event(
            "e1", NOW + timedelta(minutes=15), display("-PT5M"), display("-PT2M"), display("-PT3M"), summary="Renamed"
        ),
        now=due,
    )
    assert (result.added, result.kept, result.removed) == (2, 1, 1)
    rows = {(r.aid, r.trigger.isoformat()): r for r in queue.list_alarms()}
    assert rows[("1", "2026-11-23T10:10:00+00:00")].id == inflight.id
    assert rows[("1", "2026-11-23T10:10:00+00:00")].state == "inflight"
    assert sorted(rows) == [
        ("1", "2026-11-23T10:10:00+00:00"),
        ("2", "2026-11-23T10:13:00+00:00"),
        ("3", "2026-11-23T10:12:00+00:00"),
    ]
    # Re-putting the same text again changes nothing.
    same = queue.put(
        "jac",
        event(
            "e1", NOW + timedelta(minutes=15), display("-PT5M"), display("-PT2M"), display("-PT3M"), summary="Renamed"
        ),
        now=due,
    )
    assert (same.added, same.kept, same.removed) == (0, 3, 0)


def test_past_triggers_are_not_added(queue: AlarmQueue) -> None:
    result = queue.put("jac", event("old", NOW - timedelta(hours=1), display("-PT5M")), now=NOW)
    assert (result.objects, result.added) == (1, 0)


def test_remove_drops_live_instances(queue: AlarmQueue) -> None:
    put_one(queue, "e1", 15, display("-PT5M"), display("-PT1M"))
    put_one(queue, "e2")
    assert queue.remove("jac", "e1", now=NOW) == 2
    assert [r.uid for r in queue.list_alarms()] == ["e2"]
    assert queue.stats(now=NOW)["sources"] == 1


def test_a_bad_object_is_reported_and_the_rest_of_the_file_enqueued(queue: AlarmQueue) -> None:
    good = event("good", NOW + timedelta(minutes=15), display("-PT5M"))
    bad = event("bad", NOW + timedelta(minutes=15), "ACTION:DISPLAY\r\nTRIGGER:soon")
    both = good.replace("END:VCALENDAR\r\n", "") + bad.split("PRODID:-//calalarm//tests//EN\r\n", 1)[1]
    result = queue.put("jac", both, now=NOW)
    assert (result.objects, result.added) == (1, 1)
    assert "UID bad" in str(result.errors[0])
    assert [r.uid for r in queue.list_alarms()] == ["good"]


def test_not_icalendar_raises_and_writes_nothing(queue: AlarmQueue) -> None:
    with pytest.raises(CalendarError):
        queue.put("jac", "this is not a calendar", now=NOW)
    assert queue.stats(now=NOW)["total"] == 0


def test_concurrent_claimers_never_share_an_instance(queue: AlarmQueue) -> None:
    """Three dispatchers claim side by side (SKIP LOCKED on PostgreSQL, conditional UPDATE on SQLite)."""
    text = "".join(
        event(f"e{i}", NOW + timedelta(minutes=15), display("-PT5M"))
        .split("PRODID:-//calalarm//tests//EN\r\n")[1]
        .replace("END:VCALENDAR\r\n", "")
        for i in range(300)
    )
    result = queue.put("jac", "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\n" + text + "END:VCALENDAR\r\n", now=NOW)
    assert result.added == 300
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        mine: list[int] = []
        barrier.wait()
        try:
            while batch := queue.claim_due(now=utc("2026-11-23T10:11:00Z"), limit=7, lease=LEASE, owner=name):
                mine.extend(c.id for c in batch)
        except Exception as exc:  # noqa: BLE001 - any error in a thread is reported below
            errors.append(exc)
        claimed[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    all_ids = [i for ids in claimed.values() for i in ids]
    assert len(all_ids) == 300
    assert len(set(all_ids)) == 300


def test_postgres_put_sends_notify(postgres_url: str) -> None:
    import psycopg

    from alarmd.wakeup import libpq_url

    queue = AlarmQueue.from_url(postgres_url)
    with psycopg.connect(libpq_url(postgres_url), autocommit=True) as listener:
        listener.execute("LISTEN calalarm_queue")
        put_one(queue, "n1")
        notices = list(listener.notifies(timeout=2.0, stop_after=1))
    queue.close()
    assert [n.channel for n in notices] == ["calalarm_queue"]


def test_timestamps_come_back_aware_utc(database_url: str) -> None:
    engine = create_engine_from_url(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.literal(1))).scalar() == 1
    engine.dispose()


def test_each_expired_instance_is_logged_with_its_ids_only(queue: AlarmQueue, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alarmd.queue")
    put_one(queue, "e1")
    put_one(queue, "e2")
    policy = ClaimPolicy(lease=LEASE, max_lateness=timedelta(minutes=5))
    assert queue.claim(now=NOW + timedelta(hours=1), limit=0, owner="t", policy=policy).expired == 2
    lines = [r for r in caplog.records if r.getMessage() == "marked expired"]
    assert sorted(r.__dict__["uid"] for r in lines) == ["e1", "e2"]
    assert all(r.levelno == logging.INFO and r.__dict__["state"] == "expired" for r in lines)
    assert all("summary" not in r.__dict__ and "owner" not in r.__dict__ for r in lines)


def test_on_sqlite_dispatch_reads_alarms_through_an_index_not_every_live_row(sqlite_url: str) -> None:
    """The claim, its expiry and max-attempts checks, the wait for the next due instant and a
    listing by state use ix_alarms_due or ix_alarms_not_pending: no statement scans alarms or
    sorts the due rows. (With the states as bound parameters SQLite's planner took every live
    row through an index on state and sorted them: a claim grew with the queue.)"""
    queue = AlarmQueue.from_url(sqlite_url)
    due = utc("2026-11-23T10:00:00Z")
    payloads = [sample_payload(uid=f"u{i}", trigger="2026-11-23T10:00:00Z") for i in range(50)]
    queue.enqueue(payloads, now=due - timedelta(hours=1))
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if not many and ("FROM alarms" in statement or "UPDATE alarms" in statement):
            statements.append((statement, parameters))

    sa.event.listen(queue.engine, "before_cursor_execute", seen)
    policy = ClaimPolicy(lease=LEASE, late_after=timedelta(minutes=1), max_lateness=timedelta(hours=1), max_attempts=3)
    assert len(queue.claim(now=due, limit=10, owner="t", policy=policy).claimed) == 10
    assert queue.next_due_at() == due
    assert len(queue.list_alarms(state="inflight")) == 10
    assert queue.list_alarms(state="failed") == []
    sa.event.remove(queue.engine, "before_cursor_execute", seen)
    assert len(statements) >= 6
    with queue.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert not [step for step in plan if step.startswith("SCAN alarms") or "TEMP B-TREE" in step], (
                statement,
                plan,
            )
    queue.close()


def _rows_read_from_alarms(plan: dict[str, Any]) -> int:
    """Rows that the scans of ``alarms`` in an EXPLAIN (ANALYZE, FORMAT JSON) plan returned, all loops."""
    own = plan["Actual Rows"] * plan["Actual Loops"] if plan.get("Relation Name") == "alarms" else 0
    return own + sum(_rows_read_from_alarms(child) for child in plan.get("Plans", []))


def test_on_postgres_a_claim_reads_its_rows_not_every_due_one_on_statistics_older_than_the_burst() -> None:
    """A new database (never analysed) with 2,000 instances due at one instant, claimed 100
    at a time as a burst drains: each claim reads about the rows it takes. (The UPDATE
    repeated the due condition, and the planner drove it from the due index, comparing every
    due row with every chosen one: 56 ms a claim instead of 6 in a burst of 10,000.)"""
    from tests.services import fresh_postgres_database

    with fresh_postgres_database() as url:
        migrate.upgrade(url)
        queue = AlarmQueue.from_url(url)
        with queue.engine.begin() as conn:  # no autovacuum ANALYZE during the test
            conn.exec_driver_sql("ALTER TABLE alarms SET (autovacuum_enabled = false)")
        due = utc("2026-11-23T10:00:00Z")
        payloads = [sample_payload(uid=f"u{i}", trigger="2026-11-23T10:00:00Z") for i in range(2000)]
        queue.enqueue(payloads, now=due - timedelta(hours=1))
        policy = ClaimPolicy(lease=LEASE, late_after=timedelta(minutes=1))
        for _ in range(10):  # part of the burst sent and acked: dead index entries at the due instant
            claimed = queue.claim(now=due, limit=100, owner="t", policy=policy).claimed
            queue.ack_many([AckRequest(c.id, c.attempt, AckStatus.DELIVERED, "", NO_DELAY) for c in claimed], now=due)
        statements: list[tuple[str, Any]] = []

        def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
            if statement.startswith("WITH chosen") and "ORDER BY alarms.next_at ASC" in statement:
                statements.append((statement, parameters))

        sa.event.listen(queue.engine, "before_cursor_execute", seen)
        assert len(queue.claim(now=due, limit=100, owner="t", policy=policy).claimed) == 100
        sa.event.remove(queue.engine, "before_cursor_execute", seen)
        [(statement, parameters)] = statements
        with queue.engine.connect() as conn:
            [[explained]] = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).all()
            conn.rollback()
        queue.close()
    plan = explained[0]["Plan"]
    assert _rows_read_from_alarms(plan) <= 300, json.dumps(plan, indent=1)
