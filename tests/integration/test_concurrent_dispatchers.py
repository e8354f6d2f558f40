"""Several alarmd instances on one database never claim or publish an instance twice within its lease.

Each ``AlarmQueue`` (and each ``Dispatcher``) here has an engine of its own, as
separate alarmd processes would. On PostgreSQL the claim is ``FOR UPDATE SKIP
LOCKED``; on SQLite the claiming UPDATE re-checks the due condition, so a row
is claimed by one statement only. Besides what the claimers were told, the
checks read the database itself (``attempts``, ``claimed_by``, the ``published``
history), so a row claimed twice shows even if one claimer lost its answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AckOutcome, AlarmQueue, ClaimedAlarm
from common.db.tables import alarm_history, alarms
from common.ens import AckStatus, Subscription
from common.settings import AlarmdSettings
from tests.buses import Buses, Tally, open_buses
from tests.calendars import display, event, utc

NOW = utc("2026-11-23T10:00:00Z")  # when the calendar is enqueued
START = NOW + timedelta(minutes=15)
DUE = START - timedelta(minutes=5)  # every instance is due at this one instant
LEASE = timedelta(minutes=10)  # far longer than any test runs: no claim may expire by itself
INSTANCES = 300
BATCH = 10
OWNERS = ("alarmd-a", "alarmd-b", "alarmd-c")
ALARMS_PER_EVENT = 3  # fewer objects to store: enqueueing is the slow part of these tests
PRODID = "PRODID:-//calalarm//tests//EN\r\n"

Claims = dict[str, list[ClaimedAlarm]]


# ------------------------------------------------------------------ helpers


def calendar(count: int, *, start: datetime = START, prefix: str = "c") -> str:
    """One iCalendar text of ``count`` instances due 5 minutes before ``start``: events with three alarms each."""
    assert count % ALARMS_PER_EVENT == 0
    alarms = [display("-PT5M")] * ALARMS_PER_EVENT
    objects = "".join(
        event(f"{prefix}{i:03d}", start, *alarms).split(PRODID, 1)[1].replace("END:VCALENDAR\r\n", "")
        for i in range(count // ALARMS_PER_EVENT)
    )
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{PRODID}{objects}END:VCALENDAR\r\n"


def enqueue(queue: AlarmQueue, count: int = INSTANCES, *, start: datetime = START, prefix: str = "c") -> set[int]:
    """Put ``count`` instances due 5 minutes before ``start`` (``DUE`` by default); return their ids."""
    before = {r.id for r in queue.list_alarms(limit=100_000)}
    result = queue.put("jac", calendar(count, start=start, prefix=prefix), now=NOW, owner="jac@example.com")
    assert not result.errors
    assert result.added == count
    records = [r for r in queue.list_alarms(limit=100_000) if r.id not in before]
    assert len(records) == count
    assert {(r.state, r.next_at) for r in records} == {("pending", start - timedelta(minutes=5))}
    return {r.id for r in records}


@dataclass
class SideBySide:
    """What ``claim_side_by_side`` saw."""

    claims: Claims = field(default_factory=dict)  # owner -> what its claims returned
    sizes: list[int] = field(default_factory=list)  # the size of every non-empty claim
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # owner -> (first claim began, last ended)

    @property
    def shares(self) -> dict[str, int]:
        return {owner: len(claimed) for owner, claimed in self.claims.items()}

    def overlapped(self) -> bool:
        """Whether there was a moment when every claimer was busy claiming."""
        return max(begin for begin, _ in self.spans.values()) < min(end for _, end in self.spans.values())


def claim_side_by_side(queues: Sequence[AlarmQueue], *, now: datetime) -> SideBySide:
    """Each queue claims in a thread of its own, ``BATCH`` at a time, until a claim comes back empty."""
    barrier = threading.Barrier(len(queues))
    seen = SideBySide()
    lock = threading.Lock()

    def claimer(queue: AlarmQueue, owner: str) -> list[ClaimedAlarm]:
        mine: list[ClaimedAlarm] = []
        barrier.wait(timeout=10)  # start together, so the claims really overlap
        began = time.monotonic()
        while batch := queue.claim_due(now=now, limit=BATCH, lease=LEASE, owner=owner):
            mine.extend(batch)
            with lock:
                seen.sizes.append(len(batch))
        with lock:
            seen.spans[owner] = (began, time.monotonic())
        return mine

    with ThreadPoolExecutor(max_workers=len(queues)) as pool:
        futures = {owner: pool.submit(claimer, q, owner) for q, owner in zip(queues, OWNERS, strict=True)}
        seen.claims = {owner: future.result(timeout=60) for owner, future in futures.items()}
    return seen


class PauseClaim:
    """Stops the first claiming UPDATE on ``engine`` right after it ran: its rows are updated
    (locked, on PostgreSQL; the write lock held, on SQLite) and its transaction is still open."""

    def __init__(self, engine: sa.Engine) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self._armed = True
        sa.event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if self._armed and "UPDATE ALARMS" in statement.upper() and "claimed_by" in statement:
            self._armed = False
            self.reached.set()
            self.release.wait(timeout=30)


def claimed_more_than_once(claims: Mapping[str, Sequence[ClaimedAlarm]]) -> dict[int, int]:
    """Instance id -> number of claims, for every instance claimed more than once."""
    counts = Counter(c.id for batch in claims.values() for c in batch)
    return {alarm_id: n for alarm_id, n in counts.items() if n > 1}


def alarm_rows(queue: AlarmQueue) -> dict[int, tuple[str, int, str | None]]:
    """Instance id -> (state, attempts, claimed_by), as stored."""
    query = sa.select(alarms.c.id, alarms.c.state, alarms.c.attempts, alarms.c.claimed_by)
    with queue.engine.connect() as conn:
        return {r.id: (r.state, r.attempts, r.claimed_by) for r in conn.execute(query)}


def published_events(queue: AlarmQueue) -> Counter[tuple[int, int]]:
    """(instance id, attempt) -> number of ``published`` history rows."""
    query = sa.select(alarm_history.c.alarm_id, alarm_history.c.attempt).where(alarm_history.c.event == "published")
    with queue.engine.connect() as conn:
        return Counter((r.alarm_id, r.attempt) for r in conn.execute(query))


def assert_claimed_once(queue: AlarmQueue, claims: Claims, expected: set[int], *, attempt: int) -> None:
    """Every id in ``expected`` was claimed exactly once, as ``attempt``, and nothing else was claimed."""
    assert claimed_more_than_once(claims) == {}
    claimed = [c for batch in claims.values() for c in batch]
    assert {c.id for c in claimed} == expected
    assert len(claimed) == len(expected)
    assert {c.attempt for c in claimed} == {attempt}
    # The database agrees: one more attempt per claim, recorded for the owner that was told.
    rows = alarm_rows(queue)
    for owner, batch in claims.items():
        for c in batch:
            assert rows[c.id] == ("inflight", attempt, owner), c.id
    history = published_events(queue)
    assert {key: n for key, n in history.items() if key[1] == attempt} == {(i, attempt): 1 for i in expected}


@pytest.fixture
def queues(database_url: str) -> Iterator[list[AlarmQueue]]:
    """Three queues on one database, each with an engine of its own (three alarmd processes)."""
    made = [AlarmQueue.from_url(database_url) for _ in OWNERS]
    assert len({id(q.engine) for q in made}) == len(OWNERS)
    yield made
    for q in made:
        q.close()


# ------------------------------------------------------------------ claims


def test_claims_come_in_batches_of_at_most_limit(queues: list[AlarmQueue]) -> None:
    """Claims come in batches: one claim takes at most ``limit`` instances, alone or beside two other alarmd.

    On PostgreSQL this ran into a planner trap: ``id IN (SELECT … LIMIT n FOR UPDATE SKIP
    LOCKED)`` planned as a nested-loop semi join re-runs the subquery for every outer row,
    each run skipping the rows the statement has already updated, so one claim took every
    due row. It is chosen when the table has no statistics yet, as in this fresh test database.
    """
    ids = enqueue(queues[0])
    assert len(queues[0].claim_due(now=DUE, limit=BATCH, lease=LEASE, owner=OWNERS[0])) == BATCH
    run = claim_side_by_side(queues, now=DUE)
    assert max(run.sizes) <= BATCH, run.sizes
    assert sum(run.sizes) == len(ids) - BATCH


def test_three_alarmd_claim_every_due_instance_once_within_the_lease(queues: list[AlarmQueue]) -> None:
    """Tests 1 (PostgreSQL) and 2 (SQLite): 300 instances due at once, three claimers side by side."""
    ids = enqueue(queues[0])
    run = claim_side_by_side(queues, now=DUE)
    assert_claimed_once(queues[0], run.claims, ids, attempt=1)
    # They ran side by side: there was a moment when all three were claiming, and the work
    # was shared. On PostgreSQL (SKIP LOCKED, in parallel) each of the three got a share in
    # every trial run (at least 80 of 300, 40 runs). On SQLite they queue for the one write
    # lock, and SQLite's busy wait is not fair: a claimer can sleep in it until the other
    # two have taken everything (one claimer got nothing in 3 of 60 trial runs), so on
    # SQLite only two of the three must have a share.
    assert run.overlapped(), (run.spans, run.shares)
    postgres = queues[0].engine.dialect.name == "postgresql"
    assert sum(n > 0 for n in run.shares.values()) >= (3 if postgres else 2), run.shares
    # Still within the lease (up to its last instant): no one can claim anything.
    assert claim_side_by_side(queues, now=DUE + LEASE - timedelta(milliseconds=1)).claims == {o: [] for o in OWNERS}
    assert published_events(queues[0]).total() == INSTANCES


def test_a_claim_in_progress_keeps_its_rows_from_a_second_alarmd(queues: list[AlarmQueue]) -> None:
    """A deterministic interleaving: alarmd A is stopped inside its claim (rows updated, not committed)
    while alarmd B claims. PostgreSQL: B does not wait for A (SKIP LOCKED) and takes other rows.
    SQLite: B waits for A's write lock, then its conditional UPDATE takes only rows still due."""
    first = enqueue(queues[0], 9)  # due at DUE: A's claim takes all of them
    later = enqueue(queues[0], 30, start=START + timedelta(minutes=1), prefix="d")  # due a minute later
    pause = PauseClaim(queues[0].engine)
    postgres = queues[0].engine.dialect.name == "postgresql"
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            a = pool.submit(queues[0].claim_due, now=DUE, limit=BATCH, lease=LEASE, owner=OWNERS[0])
            assert pause.reached.wait(timeout=10), "A never reached its claiming UPDATE"
            b = pool.submit(
                queues[1].claim_due, now=DUE + timedelta(minutes=1), limit=BATCH, lease=LEASE, owner=OWNERS[1]
            )
            if postgres:
                wait([b], timeout=10)
                assert b.done(), "B waited for the rows A holds (no SKIP LOCKED?)"
            else:
                time.sleep(0.5)
                assert not b.done(), "B claimed while A held the write lock"
            assert not a.done()
        finally:
            pause.release.set()
        claims = {OWNERS[0]: a.result(timeout=10), OWNERS[1]: b.result(timeout=40)}
    assert {c.id for c in claims[OWNERS[0]]} == first
    assert claims[OWNERS[1]], "B found nothing to claim"
    assert {c.id for c in claims[OWNERS[1]]} <= later
    # C takes the rest; every instance was claimed once in all.
    claims[OWNERS[2]] = []
    while batch := queues[2].claim_due(now=DUE + timedelta(minutes=1), limit=BATCH, lease=LEASE, owner=OWNERS[2]):
        claims[OWNERS[2]].extend(batch)
    assert_claimed_once(queues[0], claims, first | later, attempt=1)


def test_after_the_lease_unacked_instances_are_claimed_again_once_each_as_attempt_2(
    queues: list[AlarmQueue],
) -> None:
    ids = enqueue(queues[0])
    assert_claimed_once(queues[0], claim_side_by_side(queues, now=DUE).claims, ids, attempt=1)
    # A third of them are acked (by whichever alarmd receives the ack); those are gone for good.
    delivered = set(sorted(ids)[::3])
    for n, alarm_id in enumerate(sorted(delivered)):
        outcome = queues[n % len(queues)].ack(
            alarm_id, 1, AckStatus.DELIVERED, "", now=DUE, retry_delay=timedelta(seconds=30)
        )
        assert outcome is AckOutcome.DELETED
    unacked = ids - delivered

    expired = DUE + LEASE + timedelta(seconds=1)
    again = claim_side_by_side(queues, now=expired)
    assert_claimed_once(queues[0], again.claims, unacked, attempt=2)
    assert again.overlapped(), (again.spans, again.shares)
    assert set(alarm_rows(queues[0])) == unacked
    # The new lease runs from the new claim: at the same instant nothing is due any more.
    assert claim_side_by_side(queues, now=expired).claims == {o: [] for o in OWNERS}
    assert published_events(queues[0]).total() == INSTANCES + len(unacked)


def test_the_checks_catch_an_instance_claimed_twice(queues: list[AlarmQueue]) -> None:
    """A claim with no lease leaves the row due, so every alarmd claims it: the checks must say so."""
    ids = enqueue(queues[0], 30)
    claims = {
        owner: q.claim_due(now=DUE, limit=100, lease=timedelta(0), owner=owner)
        for q, owner in zip(queues, OWNERS, strict=True)
    }
    assert claimed_more_than_once(claims) == dict.fromkeys(ids, 3)
    with pytest.raises(AssertionError):
        assert_claimed_once(queues[0], claims, ids, attempt=1)
    # One claimer's answer alone looks fine (every id, once, attempt 1); the database shows the other claims.
    assert claimed_more_than_once({OWNERS[0]: claims[OWNERS[0]]}) == {}
    with pytest.raises(AssertionError):
        assert_claimed_once(queues[0], {OWNERS[0]: claims[OWNERS[0]]}, ids, attempt=1)
    assert {(state, attempts) for state, attempts, _ in alarm_rows(queues[0]).values()} == {("inflight", 3)}


# ------------------------------------------------------------------ dispatchers


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
async def medium(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    """Buses for three alarmd and one subscriber: the one in-process bus, or RabbitMQ connections."""
    async with open_buses(request.param) as made:
        yield made


async def dispatch_side_by_side(dispatchers: Sequence[Dispatcher], *, rounds: int = 50) -> list[list[int]]:
    """``dispatch_once`` on every dispatcher at once, round after round, until a round claims nothing."""
    claimed: list[list[int]] = []
    for _ in range(rounds):
        claimed.append(list(await asyncio.gather(*(d.dispatch_once() for d in dispatchers))))
        if not any(claimed[-1]):
            return claimed
    raise AssertionError(f"still claiming after {rounds} rounds: {claimed}")


async def test_three_dispatchers_publish_every_instance_once_within_the_lease(
    clean_postgres_url: str, medium: Buses
) -> None:
    """Test 4: three alarmd (own engine, own bus connection) on one PostgreSQL, one subscriber that never acks."""
    settings = replace(AlarmdSettings(), batch_size=BATCH, ack_timeout=LEASE.total_seconds())
    queues = [AlarmQueue.from_url(clean_postgres_url) for _ in OWNERS]
    dispatchers: list[Dispatcher] = []
    subscription: Subscription | None = None
    try:
        tally = Tally()
        subscription = await (await medium.new()).subscribe("enp:///ics/eventalarm", tally)
        # The clock stands still at the instant everything is due: no lease can run out during the test.
        for q, owner in zip(queues, OWNERS, strict=True):
            dispatchers.append(Dispatcher(q, await medium.new(), settings, clock=lambda: DUE, node=owner))
        ids = await asyncio.to_thread(enqueue, queues[0])
        # In each round the three claims run at once, each in a worker thread (asyncio.to_thread).
        rounds = await dispatch_side_by_side(dispatchers)
        rounds += await dispatch_side_by_side(dispatchers)  # once more, all still within the lease
        assert rounds[-2:] == [[0, 0, 0], [0, 0, 0]]
        assert rounds[0] == [BATCH] * len(OWNERS)  # each took a batch of its own in the first round
        assert sum(map(sum, rounds)) == INSTANCES
        assert sum(d.published for d in dispatchers) == INSTANCES

        await tally.wait_for(INSTANCES)
        await asyncio.sleep(0.3)  # room for a duplicate still on its way
        assert tally.received == INSTANCES
        assert set(tally.by_ref.values()) == {1}
        assert len(tally.by_ref) == INSTANCES
        assert set(tally.by_renl) == {f"{i}:1" for i in ids}
        assert set(tally.by_renl.values()) == {1}

        rows = await asyncio.to_thread(alarm_rows, queues[0])
        assert set(rows) == ids  # nothing was acked, so nothing was removed
        assert {(state, attempts) for state, attempts, _ in rows.values()} == {("inflight", 1)}
        assert {owner for _, _, owner in rows.values()} <= set(OWNERS)
    finally:
        for d in dispatchers:
            await d.close(grace=0)
        if subscription is not None:
            await subscription.cancel()
        for q in queues:
            q.close()
