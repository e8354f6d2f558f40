"""AlarmQueue's administration methods (what alarmctl calls), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from alarmd.ical import parse_calendar
from alarmd.queue import AckOutcome, AlarmQueue, ClaimPolicy, PutResult
from common.ens.envelope import AckStatus
from tests.calendars import display, event, utc

NOW = utc("2026-11-23T10:00:00Z")
LEASE = timedelta(seconds=60)
NO_DELAY = timedelta(0)


def put(queue: AlarmQueue, uid: str, minutes: int, calid: str = "jac") -> None:
    """One event starting ``minutes`` after NOW with one alarm 5 minutes before it."""
    result = queue.put(calid, event(uid, NOW + timedelta(minutes=minutes), display("-PT5M")), now=NOW)
    assert (result.added, result.errors) == (1, [])


def fail(queue: AlarmQueue, at: datetime, reasons: dict[str, str]) -> dict[str, int]:
    """Claim what is due at ``at`` and ack the instance of each uid in ``reasons`` failed
    with its reason (the others stay in flight); their ids by uid."""
    claimed = {c.uid: c for c in queue.claim_due(now=at, limit=100, lease=LEASE, owner="t")}
    for uid, reason in reasons.items():
        c = claimed[uid]
        assert queue.ack(c.id, c.attempt, AckStatus.FAILED, reason, now=at, retry_delay=NO_DELAY) is AckOutcome.FAILED
    return {uid: claimed[uid].id for uid in reasons}


def events(queue: AlarmQueue, alarm_id: int) -> list[str]:
    return [h["event"] for h in queue.history(alarm_id)]


def test_list_filters_by_due_window_sorts_either_way_and_pages_without_overlap(queue: AlarmQueue) -> None:
    for i, minutes in enumerate((30, 10, 20, 40, 50)):
        put(queue, f"e{i}", minutes, calid="jac" if i % 2 == 0 else "ops")
    # next_at = trigger = start - 5 min: 10:25, 10:05, 10:15, 10:35, 10:45
    window = queue.list_alarms(due_after=utc("2026-11-23T10:15:00Z"), due_before=utc("2026-11-23T10:35:00Z"))
    assert [r.uid for r in window] == ["e2", "e0"]  # the lower bound is inclusive, the upper exclusive
    assert [r.uid for r in queue.list_alarms(sort="trigger", descending=True)] == ["e4", "e3", "e0", "e2", "e1"]
    assert [r.uid for r in queue.list_alarms(calid="ops")] == ["e1", "e3"]
    pages = [queue.list_alarms(sort="trigger", limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [[r.uid for r in page] for page in pages] == [["e1", "e2"], ["e0", "e3"], ["e4"]]
    with pytest.raises(ValueError, match="sort must be one of"):
        queue.list_alarms(sort="payload")


def test_alarm_shows_the_payload_and_history_outlives_the_row(queue: AlarmQueue) -> None:
    put(queue, "e1", 15)
    (record,) = queue.list_alarms()
    shown = queue.alarm(record.id)
    assert shown is not None
    assert (shown["id"], shown["state"], shown["created_at"]) == (record.id, "pending", "2026-11-23T10:00:00.000Z")
    assert shown["payload"]["uid"] == "e1"
    assert shown["payload"]["trigger"] == "2026-11-23T10:10:00Z"
    assert queue.delete(now=NOW, alarm_id=record.id) == (1, 0)
    assert queue.alarm(record.id) is None
    assert events(queue, record.id) == ["queued", "removed"]


def test_retry_requeues_a_failed_instance_due_now_with_attempts_reset_and_says_so_in_history(
    queue: AlarmQueue,
) -> None:
    put(queue, "a", 15)
    put(queue, "b", 30)
    due = utc("2026-11-23T10:10:00Z")
    failed = fail(queue, due, {"a": "550 5.1.1 no such user"})["a"]
    assert queue.retry(now=due, alarm_id=queue.list_alarms(uid="b")[0].id) == []  # pending: nothing to retry

    later = due + timedelta(minutes=3)
    assert [r.id for r in queue.retry(now=later, alarm_id=failed)] == [failed]
    (record,) = queue.list_alarms(uid="a")
    assert (record.state, record.next_at, record.attempts) == ("pending", later, 0)
    requeued = queue.history(failed)[-1]
    assert (requeued["event"], requeued["at"]) == ("requeued", "2026-11-23T10:13:00.000Z")
    assert requeued["detail"] == "by an operator; was failed: 550 5.1.1 no such user"
    # Due at once, as a first attempt again, and delivered like any other.
    (claimed,) = queue.claim_due(now=later, limit=10, lease=LEASE, owner="t")
    assert (claimed.id, claimed.attempt) == (failed, 1)
    queue.ack(failed, 1, AckStatus.DELIVERED, "250 ok", now=later, retry_delay=NO_DELAY)
    assert events(queue, failed) == ["queued", "published", "failed", "requeued", "published", "delivered"]


def test_retry_of_every_failed_instance_optionally_of_one_calendar_and_of_expired_ones(queue: AlarmQueue) -> None:
    for uid, calid in (("a", "jac"), ("b", "jac"), ("c", "ops")):
        put(queue, uid, 15, calid=calid)
    put(queue, "late", 6)  # trigger 10:01
    due = utc("2026-11-23T10:10:00Z")
    expired = queue.claim(
        now=due, limit=0, owner="t", policy=ClaimPolicy(lease=LEASE, max_lateness=timedelta(minutes=5))
    ).expired
    assert expired == 1
    ids = fail(queue, due, {uid: f"550 {uid}" for uid in ("a", "b", "c")})

    assert [r.id for r in queue.retry(now=due, calid="ops")] == [ids["c"]]
    assert sorted(r.id for r in queue.retry(now=due)) == sorted([ids["a"], ids["b"]])  # failed only, by default
    assert {r.uid: r.state for r in queue.list_alarms()} == {
        "a": "pending",
        "b": "pending",
        "c": "pending",
        "late": "expired",
    }
    (late,) = queue.retry(now=due, states=["expired"])
    assert (late.uid, late.state, late.next_at, late.attempts) == ("late", "pending", due, 0)
    assert queue.history(late.id)[-1]["detail"].startswith("by an operator; was expired: not sent:")
    # Its trigger is still long past, but it became due at the retry: sent, not expired again.
    policy = ClaimPolicy(lease=LEASE, max_lateness=timedelta(minutes=5))
    claim = queue.claim(now=due + timedelta(minutes=4), limit=10, owner="t", policy=policy)
    assert (claim.expired, {c.uid for c in claim.claimed}) == (0, {"a", "b", "c", "late"})
    with pytest.raises(ValueError, match="only failed and expired"):
        queue.retry(now=due, states=["pending"])


def test_delete_one_instance_or_a_calendar_with_its_objects_recording_removed(queue: AlarmQueue) -> None:
    put(queue, "a", 15)
    put(queue, "b", 20)
    put(queue, "c", 25)
    put(queue, "x", 15, calid="ops")
    due = utc("2026-11-23T10:10:00Z")
    failed = fail(queue, due, {"a": "550 gone"})["a"]
    assert queue.stats(now=due)["sources"] == 4

    assert queue.delete(now=due, calid="jac", uid="b") == (1, 1)
    deleted, objects = queue.delete(now=due, calid="jac")  # the failed record too, and the objects left
    assert (deleted, objects) == (2, 2)
    assert [r.uid for r in queue.list_alarms()] == ["x"]
    assert queue.stats(now=due)["sources"] == 1
    assert queue.history(failed)[-1]["event"] == "removed"
    assert queue.history(failed)[-1]["detail"] == "deleted by an operator (was failed)"
    assert queue.delete(now=due, alarm_id=failed) == (0, 0)
    with pytest.raises(ValueError, match="alarm_id or calid"):
        queue.delete(now=due)


def test_purge_removes_old_failed_and_expired_rows_in_batches_and_keeps_their_history(queue: AlarmQueue) -> None:
    for i in range(5):
        put(queue, f"f{i}", 15)
    put(queue, "late", 6)
    put(queue, "fresh", 30)
    due = utc("2026-11-23T10:10:00Z")
    queue.claim(now=due, limit=0, owner="t", policy=ClaimPolicy(lease=LEASE, max_lateness=timedelta(minutes=5)))
    failed = list(fail(queue, due, {f"f{i}": "550 no" for i in range(5)}).values())
    fresh = fail(queue, utc("2026-11-23T10:25:00Z"), {"fresh": "550 no"})["fresh"]

    at = utc("2026-11-23T10:30:00Z")
    # Only rows failed at least 10 minutes ago: not "fresh" (failed 5 minutes ago), not the expired one.
    assert queue.purge(now=at, states=["failed"], older_than=timedelta(minutes=10), batch=2) == 5
    assert sorted(r.uid for r in queue.list_alarms()) == ["fresh", "late"]
    assert queue.history(failed[0])[-1]["event"] == "removed"
    assert queue.history(failed[0])[-1]["detail"] == "purged by an operator; was failed: 550 no"
    assert events(queue, failed[0])[:3] == ["queued", "published", "failed"]
    assert queue.purge(now=at, states=["failed", "expired"], older_than=timedelta(0)) == 2
    assert queue.list_alarms() == []
    assert events(queue, fresh)[-1] == "removed"
    with pytest.raises(ValueError, match="only failed and expired"):
        queue.purge(now=at, states=["pending"], older_than=timedelta(0))


def test_overview_counts_in_flight_overdue_failure_reasons_and_depth_by_hour(queue: AlarmQueue) -> None:
    put(queue, "soon", 15)  # 10:10
    put(queue, "in-an-hour", 95)  # 11:30
    put(queue, "tomorrow", 24 * 60 + 5)  # 10:00 tomorrow
    for uid in ("r1", "r2", "r3"):
        put(queue, uid, 14)  # 10:09
    due = utc("2026-11-23T10:09:00Z")
    refused = "all 1 recipients refused: {}: 550 5.1.1 no such user"
    # r3 stays in flight, its lease ending 10:10.
    fail(queue, due, {"r1": refused.format("ann@example.com"), "r2": refused.format("bob@example.com")})
    at = utc("2026-11-23T10:30:00Z")  # "soon" is overdue, and r3's ack is late

    body = queue.overview(now=at, top=3, hours=3)
    assert body["states"] == {"pending": 3, "inflight": 1, "failed": 2, "expired": 0}
    assert (body["inflight"], body["overdue"]) == (1, 2)
    assert body["oldest_overdue"] == "2026-11-23T10:10:00.000Z"
    assert body["failure_reasons"] == [
        {"reason": "all 1 recipients refused: <address>: 550 5.1.1 no such user", "count": 2}
    ]
    assert body["due_by_hour"] == [
        {"from": "2026-11-23T10:30:00.000Z", "until": "2026-11-23T11:30:00.000Z", "pending": 0},
        {"from": "2026-11-23T11:30:00.000Z", "until": "2026-11-23T12:30:00.000Z", "pending": 1},
        {"from": "2026-11-23T12:30:00.000Z", "until": "2026-11-23T13:30:00.000Z", "pending": 0},
    ]
    assert body["due_later"] == 1


def test_activity_counts_events_lateness_and_latest_failures_in_the_window(queue: AlarmQueue) -> None:
    for uid in ("a", "b", "c"):
        put(queue, uid, 15)  # 10:10
    claimed_at = utc("2026-11-23T10:10:02Z")
    a, b, c = queue.claim_due(now=claimed_at, limit=10, lease=LEASE, owner="t")
    queue.ack(a.id, 1, AckStatus.DELIVERED, "", now=claimed_at, retry_delay=NO_DELAY)
    queue.ack(b.id, 1, AckStatus.RETRY, "451 later", now=claimed_at, retry_delay=timedelta(seconds=30))
    queue.ack(c.id, 1, AckStatus.FAILED, "550 no", now=claimed_at, retry_delay=NO_DELAY)

    seen = queue.activity(since=utc("2026-11-23T10:10:00Z"), now=utc("2026-11-23T10:11:00Z"), failures=5)
    assert seen["events"] == {"published": 3, "delivered": 1, "retry": 1, "failed": 1}
    assert seen["lateness"] == [2.0, 2.0, 2.0]
    assert [(f["uid"], f["event"], f["detail"]) for f in seen["failures"]] == [
        ("c", "failed", "550 no"),
        ("b", "retry", "451 later"),
    ]
    # c, retried by an operator, is published as attempt 1 again: not a dispatcher's lateness.
    queue.retry(now=claimed_at, alarm_id=c.id)
    (again,) = [x for x in queue.claim_due(now=claimed_at, limit=10, lease=LEASE, owner="t") if x.id == c.id]
    assert again.attempt == 1
    assert queue.activity(since=utc("2026-11-23T10:10:00Z"), now=utc("2026-11-23T10:11:00Z"))["lateness"] == [
        2.0,
        2.0,
        2.0,
    ]
    earlier = queue.activity(since=NOW, now=utc("2026-11-23T10:05:00Z"))
    assert earlier["events"] == {"queued": 3}
    assert (earlier["lateness"], earlier["failures"]) == ([], [])


def test_put_objects_reports_progress_after_each_object(queue: AlarmQueue) -> None:
    text = "".join(
        event(f"e{i}", NOW + timedelta(minutes=15), display("-PT5M"))
        .split("PRODID:-//calalarm//tests//EN\r\n")[1]
        .replace("END:VCALENDAR\r\n", "")
        for i in range(4)
    )
    parsed = parse_calendar("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:t\r\n" + text + "END:VCALENDAR\r\n")
    seen: list[int] = []

    def progress(result: PutResult) -> None:
        seen.append(result.objects)

    result = queue.put_objects("jac", parsed.objects, now=NOW, owner="jac@example.com", progress=progress)
    assert (result.objects, result.added, seen) == (4, 4, [1, 2, 3, 4])
    assert len(queue.list_alarms()) == 4
