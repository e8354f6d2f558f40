"""AlarmQueue.claim with a policy: staleness, attempt limit, backoff of unanswered attempts,
the on-time and backlog lanes, and the history purge (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from alarmd.queue import AckOutcome, AlarmQueue, ClaimedAlarm, ClaimPolicy, State
from common.db.tables import alarm_history, alarms
from common.ens.envelope import AckStatus
from tests.calendars import display, event, utc

NOW = utc("2026-11-23T10:00:00Z")
LEASE = timedelta(seconds=60)
HOUR = timedelta(hours=1)


def put_due(queue: AlarmQueue, uid: str, trigger: datetime) -> None:
    """One event whose single DISPLAY alarm fires at ``trigger`` (5 minutes before the start)."""
    result = queue.put("jac", event(uid, trigger + timedelta(minutes=5), display("-PT5M")), now=trigger - HOUR)
    assert not result.errors


def state_of(queue: AlarmQueue, uid: str) -> tuple[str, int, str | None, datetime]:
    with queue.engine.connect() as conn:
        row = conn.execute(
            sa.select(alarms.c.state, alarms.c.attempts, alarms.c.last_error, alarms.c.next_at).where(
                alarms.c.uid == uid
            )
        ).one()
    return row.state, row.attempts, row.last_error, row.next_at


def events_of(queue: AlarmQueue, uid: str) -> list[str]:
    with queue.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(alarm_history.c.event).where(alarm_history.c.uid == uid).order_by(alarm_history.c.id)
            ).scalars()
        )


def uids(claimed: list[ClaimedAlarm]) -> list[str]:
    return [c.uid for c in claimed]


# --- staleness -----------------------------------------------------------------------------


def test_a_never_sent_instance_too_late_is_expired_not_claimed(queue: AlarmQueue) -> None:
    put_due(queue, "old", NOW - HOUR - timedelta(seconds=1))
    put_due(queue, "late", NOW - HOUR + timedelta(seconds=1))
    batch = queue.claim(now=NOW, limit=10, owner="t", policy=ClaimPolicy(LEASE, max_lateness=HOUR))
    assert uids(batch.claimed) == ["late"]
    assert batch.expired == 1
    state, attempts, reason, _ = state_of(queue, "old")
    assert (state, attempts) == (State.EXPIRED, 0)
    assert reason == "not sent: more than 1 h overdue (alarmd.max_lateness)"
    assert events_of(queue, "old") == ["queued", "expired"]
    # Expired instances stay for the operator and are never claimed later.
    (late,) = batch.claimed
    queue.ack(late.id, 1, AckStatus.DELIVERED, "", now=NOW, retry_delay=LEASE)
    later = queue.claim(now=NOW + HOUR, limit=10, owner="t", policy=ClaimPolicy(LEASE, max_lateness=HOUR))
    assert later.claimed == []
    assert [r.uid for r in queue.list_alarms(state="expired")] == ["old"]


def test_max_lateness_zero_always_sends(queue: AlarmQueue) -> None:
    put_due(queue, "ancient", NOW - timedelta(days=30))
    batch = queue.claim(now=NOW, limit=10, owner="t", policy=ClaimPolicy(LEASE, max_lateness=timedelta(0)))
    assert uids(batch.claimed) == ["ancient"]
    assert batch.expired == 0


def test_an_instance_already_tried_is_not_expired(queue: AlarmQueue) -> None:
    put_due(queue, "tried", NOW - 2 * HOUR)
    policy = ClaimPolicy(LEASE, max_lateness=HOUR)
    (first,) = queue.claim(now=NOW - 2 * HOUR, limit=10, owner="t", policy=policy).claimed
    queue.ack(first.id, 1, AckStatus.RETRY, "451 busy", now=NOW - 2 * HOUR, retry_delay=HOUR)
    # Its retry falls due an hour later, two hours after its trigger: it is sent, not expired.
    batch = queue.claim(now=NOW, limit=10, owner="t", policy=policy)
    assert [(c.uid, c.attempt) for c in batch.claimed] == [("tried", 2)]


# --- attempts ------------------------------------------------------------------------------


def test_the_last_unanswered_attempt_fails_with_the_last_reason(queue: AlarmQueue) -> None:
    put_due(queue, "e1", NOW)
    policy = ClaimPolicy(LEASE, max_attempts=2)
    (first,) = queue.claim(now=NOW, limit=10, owner="t", policy=policy).claimed
    queue.ack(first.id, 1, AckStatus.RETRY, "451 try later", now=NOW, retry_delay=timedelta(0))
    (second,) = queue.claim(now=NOW, limit=10, owner="t", policy=policy).claimed
    assert second.attempt == 2
    batch = queue.claim(now=NOW + LEASE, limit=10, owner="t", policy=policy)  # no ack for attempt 2
    assert (batch.claimed, batch.failed) == ([], 1)
    state, attempts, reason, _ = state_of(queue, "e1")
    assert (state, attempts) == (State.FAILED, 2)
    assert reason == "no ack after 2 attempts (alarmd.max_attempts); last: 451 try later"
    assert events_of(queue, "e1")[-1] == "failed"


def test_a_retry_ack_on_the_last_attempt_fails_the_instance(queue: AlarmQueue) -> None:
    put_due(queue, "e1", NOW)
    (first,) = queue.claim(now=NOW, limit=10, owner="t", policy=ClaimPolicy(LEASE, max_attempts=1)).claimed
    outcome = queue.ack(first.id, 1, AckStatus.RETRY, "421 closing", now=NOW, retry_delay=LEASE, max_attempts=1)
    assert outcome is AckOutcome.FAILED
    state, _, reason, _ = state_of(queue, "e1")
    assert state == State.FAILED
    assert reason == "gave up after 1 attempts (alarmd.max_attempts); last: 421 closing"


def test_an_unanswered_attempt_backs_off_before_the_next(queue: AlarmQueue) -> None:
    put_due(queue, "e1", NOW)
    policy = ClaimPolicy(LEASE, backoff=lambda attempt: timedelta(seconds=30 * attempt))
    queue.claim(now=NOW, limit=10, owner="t", policy=policy)
    assert state_of(queue, "e1")[3] == NOW + LEASE  # the first attempt: its lease only
    again = NOW + LEASE
    (second,) = queue.claim(now=again, limit=10, owner="t", policy=policy).claimed
    assert second.attempt == 2
    assert state_of(queue, "e1")[3] == again + LEASE + timedelta(seconds=30)
    assert queue.claim(now=again + LEASE, limit=10, owner="t", policy=policy).claimed == []
    (third,) = queue.claim(now=again + LEASE + timedelta(seconds=30), limit=10, owner="t", policy=policy).claimed
    assert third.attempt == 3


# --- lanes -----------------------------------------------------------------------------------


def test_ahead_claims_what_falls_due_that_soon_and_the_lease_counts_from_then(queue: AlarmQueue) -> None:
    ahead = timedelta(seconds=1)
    put_due(queue, "soon", NOW + timedelta(seconds=1))  # triggers are whole seconds
    put_due(queue, "later", NOW + timedelta(seconds=3))
    policy = ClaimPolicy(LEASE, ahead=ahead, late_after=timedelta(seconds=60))
    assert uids(queue.claim(now=NOW - timedelta(milliseconds=1), limit=10, owner="t", policy=policy).claimed) == []
    [claimed] = queue.claim(now=NOW, limit=10, owner="t", policy=policy).claimed
    assert (claimed.uid, claimed.trigger) == ("soon", NOW + timedelta(seconds=1))
    assert state_of(queue, "soon")[:2] == (State.INFLIGHT, 1)
    assert state_of(queue, "soon")[3] == NOW + ahead + LEASE
    # due again when that lease ends, claimed ``ahead`` before it as well
    assert uids(
        queue.claim(now=NOW + LEASE - timedelta(milliseconds=1), limit=10, owner="t", policy=policy).claimed
    ) == ["later"]
    assert uids(queue.claim(now=NOW + LEASE, limit=10, owner="t", policy=policy).claimed) == ["soon"]


def test_on_time_first_then_backlog_most_recent_first_within_the_limit(queue: AlarmQueue) -> None:
    for minutes in (50, 40, 30, 20, 10):
        put_due(queue, f"late{minutes}", NOW - timedelta(minutes=minutes))
    put_due(queue, "now1", NOW - timedelta(seconds=30))
    put_due(queue, "now2", NOW)
    policy = ClaimPolicy(LEASE, late_after=timedelta(seconds=60))
    batch = queue.claim(now=NOW, limit=10, owner="t", policy=policy, late_limit=2)
    # Claimed: both on-time ones and the two most recent of the backlog; sorted by trigger.
    assert uids(batch.claimed) == ["late20", "late10", "now1", "now2"]
    assert (batch.late, batch.late_limited) == (2, True)
    rest = queue.claim(now=NOW, limit=10, owner="t", policy=policy, late_limit=10)
    assert uids(rest.claimed) == ["late50", "late40", "late30"]
    assert (rest.late, rest.late_limited) == (3, False)


def test_the_batch_limit_counts_both_lanes(queue: AlarmQueue) -> None:
    for n in range(3):
        put_due(queue, f"now{n}", NOW)
        put_due(queue, f"late{n}", NOW - timedelta(minutes=10 + n))
    policy = ClaimPolicy(LEASE, late_after=timedelta(seconds=60))
    batch = queue.claim(now=NOW, limit=4, owner="t", policy=policy, late_limit=10)
    assert sorted(uids(batch.claimed)) == ["late0", "now0", "now1", "now2"]


def test_next_due_at_can_skip_the_backlog(queue: AlarmQueue) -> None:
    put_due(queue, "late", NOW - timedelta(minutes=10))
    put_due(queue, "soon", NOW + timedelta(minutes=1))
    assert queue.next_due_at() == NOW - timedelta(minutes=10)
    assert queue.next_due_at(not_before=NOW - timedelta(seconds=60)) == NOW + timedelta(minutes=1)


# --- history ---------------------------------------------------------------------------------


def test_purge_history_deletes_only_older_rows(queue: AlarmQueue) -> None:
    put_due(queue, "old", NOW - timedelta(days=40))  # queued 40 days and an hour ago
    put_due(queue, "new", NOW)
    (claimed,) = queue.claim_due(now=NOW - timedelta(days=40), limit=10, lease=LEASE, owner="t")
    queue.ack(claimed.id, 1, AckStatus.DELIVERED, "", now=NOW - timedelta(days=40), retry_delay=LEASE)
    assert events_of(queue, "old") == ["queued", "published", "delivered"]
    assert queue.purge_history(before=NOW - timedelta(days=30), batch=2) == 3
    assert events_of(queue, "old") == []
    assert events_of(queue, "new") == ["queued"]
    assert queue.purge_history(before=NOW - timedelta(days=30)) == 0
