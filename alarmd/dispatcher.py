"""The dispatch loop: sleep until the next due instant, claim, publish with RENL, apply acks.

I/O only: decisions (what is due, what an ack does) belong to ``AlarmQueue`` and
``alarmd.policy``. Database calls run in worker threads so the event loop stays
free for the bus.

Faults never end the loop:

- the bus refuses a publish: the batch's unpublished claims are handed back (due again
  in ``PUBLISH_RETRY``) and claiming pauses, with backoff, probing with one instance at
  a time until a publish succeeds: nothing is claimed that cannot be published;
- the database fails: the claim (or the sleep's query) is retried with backoff; an
  instance claimed but not published is due again when its lease ends.

Backlog (instances due longer than ``alarmd.late_after`` ago: after a downtime or a
forward clock jump) is published at ``alarmd.catchup_rate`` per second, most recent
first, while on-time instances go first at full speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections import Counter

import sqlalchemy as sa

from alarmd.policy import PUBLISH_RETRY, TokenBucket, jittered_backoff, parse_renl_id
from alarmd.queue import AckOutcome, AckRequest, AlarmQueue, ClaimedAlarm, ClaimPolicy
from common.batching import GroupCommit
from common.clock import Clock, utcnow
from common.ens.abc import Bus, Subscription
from common.ens.envelope import NOT_BEFORE, PUBLICATION, Ack, Notification, Renl, standard_properties
from common.logs import without_addresses
from common.metrics import AlarmdMetrics
from common.settings import AlarmdSettings

log = logging.getLogger(__name__)

FAULT_BACKOFF_MIN = 0.5  # seconds before the first retry after a database or bus fault
FAULT_BACKOFF_MAX = 30.0
# Seconds a batch of acks waits for company before its transaction. Nothing waits on an
# ack's row but the lease (alarmd.ack_timeout, a minute), so the batches can be large: on
# SQLite a transaction costs about 0.4 ms besides 24 µs per ack, and at 2 ms a burst's
# batches were of 9 or 10. An ack holds one of the bus's prefetch slots (64) until its
# batch is committed, so one alarmd applies up to about 64 / (linger + transaction),
# some 2,500 acks/s; more wait at the broker, harmless well within the lease.
ACK_LINGER = 0.02


class Dispatcher:
    def __init__(
        self,
        queue: AlarmQueue,
        bus: Bus,
        settings: AlarmdSettings,
        *,
        clock: Clock = utcnow,
        node: str | None = None,
        metrics: AlarmdMetrics | None = None,
    ) -> None:
        self.queue = queue
        self.bus = bus
        self.settings = settings
        self.clock = clock
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self.published = 0
        self.acked: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ack_subscription: Subscription | None = None
        self._outstanding: set[str] = set()  # renl ids published by this process, not yet acked
        self._all_acked = asyncio.Event()
        self._backoff = jittered_backoff(settings.retry_base, settings.retry_cap)
        self.policy = ClaimPolicy.from_settings(settings)
        self._catchup = TokenBucket.full(settings.catchup_rate, max(settings.catchup_rate, 1.0), clock())
        self._backlog_waiting = False  # the last claim left backlog for want of catch-up tokens
        self._bus_backoff = 0.0  # > 0 while publishing fails: claim one at a time, after this pause
        self._db_backoff = 0.0
        self.expired = 0
        self.failed = 0
        # Acks that arrive together are applied in one transaction (a burst of 10,000
        # spent a third of alarmd's CPU on one transaction per ack).
        self._acks: GroupCommit[AckRequest, AckOutcome] = GroupCommit(
            self._apply_acks, name="alarmd:acks", linger=ACK_LINGER
        )
        queue.add_listener(self.wake)
        self.metrics = metrics if metrics is not None else AlarmdMetrics()
        queue.add_added_listener(self.metrics.enqueued.inc)

    def wake(self) -> None:
        """Re-check the queue now (safe to call from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until :meth:`stop`; returns after acks in flight are consumed."""
        self._loop = asyncio.get_running_loop()
        self._ack_subscription = await self.bus.consume_acks(self.settings.ack_to, self._on_ack)
        log.info("alarmd dispatching as %s (ack_to=%s)", self.node, self.settings.ack_to)
        while not self._stopping.is_set():
            try:
                claimed = await self.dispatch_once()
                self._db_backoff = 0.0
            except sa.exc.SQLAlchemyError as exc:
                self._db_backoff = _next_backoff(self._db_backoff)
                log.warning("database error while claiming (%s); retrying in %.1fs", _short(exc), self._db_backoff)
                await self._fault_pause(self._db_backoff)
                continue
            if self._bus_backoff:
                await self._fault_pause(self._bus_backoff)
                continue
            if claimed >= self.settings.batch_size:
                continue  # more may be due right now
            try:
                await self._sleep_until_due()
            except sa.exc.SQLAlchemyError as exc:
                self._db_backoff = _next_backoff(self._db_backoff)
                log.warning("database error while waiting (%s); retrying in %.1fs", _short(exc), self._db_backoff)
                await self._fault_pause(self._db_backoff)

    async def close(self, grace: float = 5.0) -> None:
        """Wait up to ``grace`` seconds for acks of what this process published, then stop consuming acks.

        Anything still unacknowledged is due again when its lease ends, for this
        or another alarmd.
        """
        self.stop()
        if self._ack_subscription is None:
            return
        if self._outstanding:
            self._all_acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_acked.wait(), timeout=grace)
        if self._outstanding:
            log.info(
                "%d notification(s) unacknowledged at shutdown; due again after their lease", len(self._outstanding)
            )
        await self._acks.drain()  # the acks received are applied before the consumer goes
        await self._ack_subscription.cancel()
        self._ack_subscription = None

    async def dispatch_once(self) -> int:
        """Claim one batch and publish it; return how many were claimed."""
        now = self.clock()
        limit = 1 if self._bus_backoff else self.settings.batch_size
        batch = await asyncio.to_thread(
            self.queue.claim,
            now=now,
            limit=limit,
            owner=self.node,
            policy=self.policy,
            late_limit=self._catchup.available(now),
        )
        self._catchup.take(batch.late)
        self._backlog_waiting = batch.late_limited
        self.expired += batch.expired
        self.failed += batch.failed
        self.metrics.observe_claim(batch.expired, batch.failed)
        if not batch.claimed:
            return 0
        results = await asyncio.gather(*(self._publish(c) for c in batch.claimed), return_exceptions=True)
        failed = [c for c, r in zip(batch.claimed, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            reason = f"publish failed: {next(r for r in results if isinstance(r, BaseException))}"
            self._bus_backoff = _next_backoff(self._bus_backoff)
            self.metrics.unpublished.inc(len(failed))
            log.warning(
                "%d of %d notifications not published (%s); due again in %s, claiming paused for %.1fs",
                len(failed),
                len(batch.claimed),
                reason,
                PUBLISH_RETRY,
                self._bus_backoff,
            )
            await asyncio.to_thread(self.queue.release, failed, now=self.clock(), delay=PUBLISH_RETRY, reason=reason)
        elif self._bus_backoff:
            log.info("publishing works again; claiming resumes")
            self._bus_backoff = 0.0
        published = len(batch.claimed) - len(failed)
        self.published += published
        if published:
            republished = sum(1 for c in batch.claimed if c.attempt > 1) - sum(1 for c in failed if c.attempt > 1)
            log.info("published batch", extra={"count": published, "republished": republished})
        return len(batch.claimed)

    async def _publish(self, claimed: ClaimedAlarm) -> None:
        now = self.clock()
        properties = {**standard_properties("alarmd", now), PUBLICATION: claimed.publication}
        if claimed.trigger > now:  # claimed up to publish_ahead early: the subscriber holds it until then
            properties[NOT_BEFORE] = math.ceil(claimed.trigger.timestamp() * 1000)  # never a ms early
        notification = Notification(
            ref=claimed.ref,
            payload=claimed.payload,
            properties=properties,
            # The lease runs from publish_ahead after the claim: the subscriber may hold it that long.
            renl=Renl(
                self.settings.ack_to,
                claimed.renl_id,
                self.settings.ack_timeout + self.settings.publish_ahead,
                batch_acks=True,  # its acks are applied in batches anyway (ACK_LINGER)
            ),
        )
        self._outstanding.add(claimed.renl_id)  # before publishing: the ack may beat publish() back
        try:
            await self.bus.publish(notification)
        except BaseException:
            self._outstanding.discard(claimed.renl_id)
            raise
        self.metrics.observe_publish(claimed.attempt, (self.clock() - claimed.trigger).total_seconds())
        # A first publication is routine: its line is DEBUG, and the batch's INFO line counts
        # it (alarm_history keeps every one). A republication means an ack did not come.
        level = logging.DEBUG if claimed.attempt == 1 else logging.INFO
        if log.isEnabledFor(level):  # no fields built for nothing in a burst
            log.log(level, "published", extra=_fields(claimed))

    async def _sleep_until_due(self) -> None:
        self._wake.clear()  # before the query: a wake-up during it must not be lost
        now = self.clock()
        late_after = self.policy.late_after
        if self._backlog_waiting and late_after is not None:
            # Backlog is waiting for catch-up tokens: wake when a batch of them is saved
            # up (a second at most) or for the next on-time instance, whichever is first.
            next_due = await asyncio.to_thread(self.queue.next_due_at, not_before=now - late_after)
            delay = min(self._catchup.seconds_until(self.settings.batch_size), 1.0)
        else:
            next_due = await asyncio.to_thread(self.queue.next_due_at)
            delay = self.settings.safety_poll
        if next_due is not None:
            # Claimed publish_ahead before it is due. A clock set back makes this long: the
            # safety poll bounds it.
            until = (next_due - self.clock()).total_seconds() - self.settings.publish_ahead
            delay = min(delay, max(0.0, until))
        if delay <= 0:
            return
        await self._pause(delay)

    async def _fault_pause(self, seconds: float) -> None:
        """Sleep out a fault's backoff: only :meth:`stop` ends it early. An enqueue's
        wake-up must not: each would start another failing try and double the backoff
        (seven enqueues during a short outage made it 30 s)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a wake-up or :meth:`stop` ends it early."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _apply_ack(self, request: AckRequest) -> AckOutcome:
        """Apply one ack (in a batch); while the database fails, try again with backoff for up
        to ``alarmd.ack_timeout`` (the ack stays unsettled at the broker meanwhile). Dropped
        after that, or at stop: the instance is then republished after its lease, and
        notifyd's delivery record answers the republication without a second email."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.settings.ack_timeout
        delay = 0.0
        while True:
            try:
                return await self._acks.submit(request)
            except sa.exc.SQLAlchemyError as exc:
                delay = _next_backoff(delay)
                if self._stopping.is_set() or loop.time() + delay > give_up:
                    # A batch's failure reaches each of its acks: one line each, no traceback.
                    log.warning(
                        "could not record the ack for alarm=%d (%s); it will be republished after its lease",
                        request.alarm_id,
                        _short(exc),
                    )
                    raise
                if delay == FAULT_BACKOFF_MIN:
                    log.info(
                        "database error applying the ack for alarm=%d (%s); retrying", request.alarm_id, _short(exc)
                    )
                await self._fault_pause(delay)

    def _apply_acks(self, requests: list[AckRequest]) -> list[AckOutcome]:
        outcomes = self.queue.ack_many(requests, now=self.clock(), max_attempts=self.settings.max_attempts)
        if log.isEnabledFor(logging.INFO):
            counts = Counter(outcome.value for outcome in outcomes)
            log.info("acks applied", extra={"count": len(outcomes), **{k: counts[k] for k in sorted(counts)}})
        return outcomes

    async def _on_ack(self, ack: Ack) -> None:
        self._outstanding.discard(ack.renl_id)
        if not self._outstanding:
            self._all_acked.set()
        ids = parse_renl_id(ack.renl_id)
        if ids is None:
            shown = ack.renl_id if len(ack.renl_id) <= 80 else ack.renl_id[:80] + "…"
            log.warning("ignored an ack with a renl_id not ours: %r", shown)
            return
        alarm_id, attempt = ids
        request = AckRequest(alarm_id, attempt, ack.status, ack.reason, self._backoff(attempt))
        outcome = await self._apply_ack(request)
        self.acked[outcome.value] = self.acked.get(outcome.value, 0) + 1
        self.metrics.observe_ack(ack.status.value, outcome.value)
        # A delivered ack that deletes its instance is routine: DEBUG (the batch's "acks
        # applied" line counts it); the rest are worth a line each.
        if outcome in (AckOutcome.UNKNOWN, AckOutcome.FAILED):
            level = logging.WARNING
        else:
            level = logging.DEBUG if outcome is AckOutcome.DELETED else logging.INFO
        if outcome is AckOutcome.UNKNOWN and ack.redelivered:
            # The broker brought it back after a lost connection: almost always an ack
            # this dispatcher (or another) applied before the connection went. Harmless.
            level = logging.INFO
        if log.isEnabledFor(level):
            fields = {"alarm": alarm_id, "attempt": attempt, "status": ack.status.value, "outcome": outcome.value}
            if ack.redelivered:
                fields["redelivered"] = True
            if ack.reason:  # notifyd's reasons quote server replies, which name recipients
                fields["reason"] = without_addresses(ack.reason)[:200]
            log.log(level, "ack", extra=fields)


def _fields(claimed: ClaimedAlarm) -> dict[str, object]:
    """The ids of a claimed instance, as log fields (never its payload: addresses, summary)."""
    return {
        "alarm": claimed.id,
        "attempt": claimed.attempt,
        "component": claimed.component,
        "calid": claimed.calid,
        "uid": claimed.uid,
        "rid": claimed.rid,
        "aid": claimed.aid,
    }


def _next_backoff(current: float) -> float:
    return min(max(current * 2, FAULT_BACKOFF_MIN), FAULT_BACKOFF_MAX)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
