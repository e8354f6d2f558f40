"""AlarmQueue.enqueue: single alarms in bulk, without a calendar object (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from alarmd import AlarmPayload, AlarmQueue, InvalidAlarm, MissingPrivilege
from alarmd.queue import ClaimPolicy
from common.db.tables import alarm_history
from common.payload import format_utc
from tests.calendars import display, event, utc

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


def test_chunks_count_what_each_added_and_skipped(queue: AlarmQueue) -> None:
    # On PostgreSQL one chunk is written while the next is built: the counts must still add up.
    queue.enqueue((alarm(f"u{n}", timedelta(seconds=n + 1)) for n in range(0, 2500, 2)), now=NOW)
    result = queue.enqueue((alarm(f"u{n}", timedelta(seconds=n + 1)) for n in range(2500)), now=NOW, chunk=300)
    assert (result.added, result.skipped) == (1250, 1250)
    assert queue.stats(now=NOW)["states"]["pending"] == 2500


def test_an_invalid_alarm_in_a_later_chunk_keeps_the_chunks_before_it(queue: AlarmQueue) -> None:
    told: list[int] = []
    queue.add_added_listener(told.append)
    payloads = [alarm(f"u{n}", timedelta(seconds=n + 1)) for n in range(250)]
    payloads[230] = replace(payloads[230], component="journal")
    with pytest.raises(InvalidAlarm, match="'component' must be event or todo"):
        queue.enqueue(payloads, now=NOW, chunk=100)
    assert queue.stats(now=NOW)["states"]["pending"] == 200  # the chunks before the bad one; not its own
    assert told == [200]


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


def test_awkward_text_is_stored_and_claimed_back_as_given(queue: AlarmQueue) -> None:
    # PostgreSQL takes the rows through COPY's text format: its separators, escapes and
    # null marker must arrive as plain characters.
    awkward = "tab\there\nnew line \\N \\ back\\slash \"quoted\" 'single' ümlaut 日本 😀 \r"
    sent = alarm(f"uid {awkward}", calid=f"cal\t{awkward}", summary=awkward, description=awkward, location="\\N")
    assert queue.enqueue([sent], now=NOW).added == 1
    (claimed,) = queue.claim(now=NOW + timedelta(minutes=5), limit=10, owner="t", policy=ClaimPolicy(LEASE)).claimed
    assert (claimed.calid, claimed.uid) == (sent.calid, sent.uid)
    assert AlarmPayload.from_dict(claimed.payload) == sent


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


def test_a_role_that_may_not_create_temporary_tables_is_told_the_grant(clean_postgres_url: str) -> None:
    url = make_url(clean_postgres_url)
    database, role = url.database, f"calalarm_no_temp_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
        conn.execute(sa.text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"'))
        conn.execute(sa.text(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    queue = AlarmQueue.from_url(url.set(username=role).render_as_string(hide_password=False))
    try:
        with pytest.raises(MissingPrivilege, match=f"GRANT TEMPORARY ON DATABASE {database} TO {role}"):
            queue.enqueue([alarm("a")], now=NOW)
        assert queue.list_alarms() == []
        ics = event("e1", NOW + timedelta(hours=1), display("-PT15M"))
        assert queue.put("jac", ics, now=NOW).added == 1  # the rest of the queue works for that role
    finally:
        queue.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'GRANT TEMPORARY ON DATABASE "{database}" TO PUBLIC'))
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        admin.dispose()
