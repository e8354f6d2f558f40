"""AlarmQueue.enqueue: single alarms in bulk, without a calendar object (SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from alarmd import AlarmPayload, AlarmQueue, InvalidAlarm
from alarmd.queue import ClaimPolicy
from common.db.tables import alarm_history
from common.payload import format_utc
from tests.calendars import utc

NOW = utc("2026-11-23T10:00:00Z")
LEASE = timedelta(seconds=60)


def alarm(uid: str, trigger_in: timedelta = timedelta(minutes=5), **changes: Any) -> AlarmPayload:
    payload = AlarmPayload(
        calid="jac",
        uid=uid,
        rid="",
        aid="1",
        component="event",
        action="DISPLAY",
        trigger=format_utc(NOW + trigger_in),
        summary="Team meeting",
        start=format_utc(NOW + trigger_in + timedelta(minutes=15)),
        owner="jac@example.com",
    )
    return replace(payload, **changes)


def test_enqueued_alarms_are_claimed_at_their_trigger_with_their_payload(queue: AlarmQueue) -> None:
    result = queue.enqueue([alarm("a"), alarm("b", timedelta(minutes=10))], now=NOW)
    assert (result.added, result.skipped) == (2, 0)
    assert queue.next_due_at() == NOW + timedelta(minutes=5)
    (claimed,) = queue.claim(now=NOW + timedelta(minutes=5), limit=10, owner="t", policy=ClaimPolicy(LEASE)).claimed
    assert claimed.uid == "a"
    assert AlarmPayload.from_dict(claimed.payload) == alarm("a")
    assert str(claimed.ref) == "enp:///ics/eventalarm?calid=jac&uid=a&rid=&aid=1"


def test_enqueue_is_idempotent_and_skips_past_triggers(queue: AlarmQueue) -> None:
    queue.enqueue([alarm("a")], now=NOW)
    result = queue.enqueue([alarm("a"), alarm("old", -timedelta(seconds=1)), alarm("c")], now=NOW)
    assert (result.added, result.skipped) == (1, 2)
    assert sorted(r.uid for r in queue.list_alarms()) == ["a", "c"]
    with queue.engine.connect() as conn:
        events = conn.execute(sa.select(alarm_history.c.uid, alarm_history.c.event).order_by(alarm_history.c.id)).all()
    assert [tuple(e) for e in events] == [("a", "queued"), ("c", "queued")]


def test_many_alarms_go_in_chunks(queue: AlarmQueue) -> None:
    result = queue.enqueue((alarm(f"u{n}", timedelta(seconds=n + 1)) for n in range(2500)), now=NOW, chunk=1000)
    assert (result.added, result.skipped) == (2500, 0)
    assert queue.stats(now=NOW)["states"]["pending"] == 2500


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"component": "journal"}, "'component' must be event or todo"),
        ({"trigger": "tomorrow"}, "not an ISO 8601 UTC instant"),
        ({"uid": ""}, "must not be empty"),
        ({"rid": "x" * 33}, "rid is over 32 characters"),
    ],
)
def test_an_invalid_alarm_is_refused_and_its_chunk_is_not_written(
    queue: AlarmQueue, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidAlarm, match=message):
        queue.enqueue([alarm("fine"), replace(alarm("bad"), **changes)], now=NOW)
    assert queue.list_alarms() == []


def test_a_trigger_is_stored_and_sent_in_one_spelling(queue: AlarmQueue) -> None:
    """notifyd's dedup key includes the trigger text: an offset or a short form must not change it."""
    queue.enqueue([alarm("a", trigger="2026-11-23T11:05+01:00")], now=NOW)
    queue.enqueue([alarm("b", trigger="2026-11-23T10:05:00.5+00:00")], now=NOW)
    claimed = queue.claim(now=NOW + timedelta(minutes=6), limit=10, owner="t", policy=ClaimPolicy(LEASE)).claimed
    assert {c.uid: c.payload["trigger"] for c in claimed} == {
        "a": "2026-11-23T10:05:00Z",
        "b": "2026-11-23T10:05:00.500Z",
    }


def test_remove_forgets_enqueued_alarms(queue: AlarmQueue) -> None:
    queue.enqueue([alarm("a"), alarm("a", timedelta(minutes=6), aid="2"), alarm("b")], now=NOW)
    assert queue.remove("jac", "a", now=NOW) == 2
    assert [r.uid for r in queue.list_alarms()] == ["b"]


def test_enqueue_on_postgresql_wakes_listening_dispatchers(postgres_url: str) -> None:
    import psycopg

    from alarmd.wakeup import libpq_url

    queue = AlarmQueue.from_url(postgres_url)
    try:
        with psycopg.connect(libpq_url(postgres_url), autocommit=True) as listener:
            listener.execute("LISTEN calalarm_queue")
            queue.enqueue([alarm("wake-1")], now=NOW)
            notices = list(listener.notifies(timeout=2.0, stop_after=1))
            queue.enqueue([alarm("wake-1")], now=NOW)  # nothing new: nobody to wake
            again = list(listener.notifies(timeout=0.5, stop_after=1))
    finally:
        queue.close()
    assert [n.channel for n in notices] == ["calalarm_queue"]
    assert again == []
