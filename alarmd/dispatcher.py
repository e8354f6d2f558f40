"""The dispatch loop: sleep until the next due instant, claim, publish with RENL, apply acks.

I/O only: decisions (what is due, what an ack does) belong to ``AlarmQueue`` and
``alarmd.policy``. Database calls run in worker threads so the event loop stays
free for the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import timedelta

from alarmd.policy import PUBLISH_RETRY, parse_renl_id, retry_delay
from alarmd.queue import AckOutcome, AlarmQueue, ClaimedAlarm
from common.clock import Clock, utcnow
from common.ens.abc import Bus, Subscription
from common.ens.envelope import Ack, Notification, Renl, standard_properties
from common.settings import AlarmdSettings

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        queue: AlarmQueue,
        bus: Bus,
        settings: AlarmdSettings,
        *,
        clock: Clock = utcnow,
        node: str | None = None,
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
        queue.add_listener(self.wake)

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
            claimed = await self.dispatch_once()
            if claimed >= self.settings.batch_size:
                continue  # more may be due right now
            await self._sleep_until_due()

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
        await self._ack_subscription.cancel()
        self._ack_subscription = None

    async def dispatch_once(self) -> int:
        """Claim one batch and publish it; return how many were claimed."""
        now = self.clock()
        batch = await asyncio.to_thread(
            self.queue.claim_due,
            now=now,
            limit=self.settings.batch_size,
            lease=timedelta(seconds=self.settings.ack_timeout),
            owner=self.node,
        )
        if not batch:
            return 0
        results = await asyncio.gather(*(self._publish(c) for c in batch), return_exceptions=True)
        failed = [c for c, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            reason = f"publish failed: {next(r for r in results if isinstance(r, BaseException))}"
            log.warning(
                "%d of %d notifications not published (%s); retrying in %s",
                len(failed),
                len(batch),
                reason,
                PUBLISH_RETRY,
            )
            await asyncio.to_thread(self.queue.release, failed, now=self.clock(), delay=PUBLISH_RETRY, reason=reason)
        self.published += len(batch) - len(failed)
        return len(batch)

    async def _publish(self, claimed: ClaimedAlarm) -> None:
        notification = Notification(
            ref=claimed.ref,
            payload=claimed.payload,
            properties=standard_properties("alarmd", self.clock()),
            renl=Renl(self.settings.ack_to, claimed.renl_id, self.settings.ack_timeout),
        )
        self._outstanding.add(claimed.renl_id)  # before publishing: the ack may beat publish() back
        try:
            await self.bus.publish(notification)
        except BaseException:
            self._outstanding.discard(claimed.renl_id)
            raise
        log.info("published alarm=%d attempt=%d ref=%s", claimed.id, claimed.attempt, claimed.ref)

    async def _sleep_until_due(self) -> None:
        self._wake.clear()  # before the query: a wake-up during it must not be lost
        next_due = await asyncio.to_thread(self.queue.next_due_at)
        delay = self.settings.safety_poll
        if next_due is not None:
            delay = min(delay, max(0.0, (next_due - self.clock()).total_seconds()))
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _on_ack(self, ack: Ack) -> None:
        self._outstanding.discard(ack.renl_id)
        if not self._outstanding:
            self._all_acked.set()
        ids = parse_renl_id(ack.renl_id)
        if ids is None:
            log.warning("ignored an ack with a renl_id not ours: %r", ack.renl_id)
            return
        alarm_id, attempt = ids
        try:
            outcome = await asyncio.to_thread(
                self.queue.ack,
                alarm_id,
                attempt,
                ack.status,
                ack.reason,
                now=self.clock(),
                retry_delay=retry_delay(attempt),
            )
        except Exception:
            log.exception("could not record the ack for alarm=%d; it will be republished after its lease", alarm_id)
            raise
        self.acked[outcome.value] = self.acked.get(outcome.value, 0) + 1
        level = logging.WARNING if outcome in (AckOutcome.UNKNOWN, AckOutcome.FAILED) else logging.INFO
        log.log(
            level,
            "ack alarm=%d attempt=%d status=%s -> %s %s",
            alarm_id,
            attempt,
            ack.status.value,
            outcome.value,
            ack.reason[:200],
        )
