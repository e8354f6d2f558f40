"""The notifier: alarm notifications in, reminder emails out, an end-to-end ack for each.

One notification is handled as: validate the payload, pick the recipients, render the
email, send it, ack the RENL with the outcome. A bad notification is acked ``failed``
with the reason and never stops the subscription; the only error that leaves the
handler is :class:`BusUnavailable` for the ack itself (the publisher's RENL timeout
then makes it send the notification again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol

from common.ens.abc import Bus, BusUnavailable, Subscription
from common.ens.envelope import AckStatus, Notification, standard_properties
from common.ens.reference import EVENT_ALARM, TODO_ALARM
from common.payload import AlarmPayload, PayloadError
from common.settings import Settings
from notifyd.email import render_reminder
from notifyd.smtp import SendResult

log = logging.getLogger(__name__)

PROCESS = "notifyd"
STOP_GRACE = 30.0
_ADDRESS = re.compile(r"\S+@\S+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class MailSender(Protocol):
    """What the notifier needs from an SMTP client (:class:`notifyd.smtp.SmtpSender`)."""

    async def send(self, message: EmailMessage, recipients: list[str]) -> SendResult: ...


DeliveredCallback = Callable[[AlarmPayload, str], None]


class Notifier:
    """Subscribes to alarm notifications as a member of the notifyd pool and emails them."""

    def __init__(
        self,
        bus: Bus,
        sender: MailSender,
        settings: Settings,
        clock: Callable[[], datetime],
        on_delivered: DeliveredCallback | None = None,
    ) -> None:
        self._bus = bus
        self._sender = sender
        self._settings = settings
        self._clock = clock
        self.on_delivered = on_delivered
        self._semaphore = asyncio.Semaphore(settings.notifyd.concurrency)
        self._subscriptions: list[Subscription] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed = 0
        self.retried = 0

    @property
    def subscriptions(self) -> list[str]:
        pool = self._settings.notifyd.pool
        return [f"enp+pool.{pool}://{base}" for base in (EVENT_ALARM, TODO_ALARM)]

    async def start(self) -> None:
        """Subscribe to event and to-do alarms. Idempotent."""
        if self._subscriptions:
            return
        for subscription in self.subscriptions:
            self._subscriptions.append(await self._bus.subscribe(subscription, self._on_notification))
        log.info("notifier subscribed as pool %r", self._settings.notifyd.pool)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop taking notifications, then let those in hand finish (up to ``grace`` seconds)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            try:
                await subscription.cancel()
            except Exception:
                log.exception("could not cancel a subscription")
        pending = set(self._inflight)
        if pending:
            log.info("waiting for %d notification(s) in hand", len(pending))
            _done, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if pending:
            log.warning("stopped with %d notification(s) unfinished; the publisher will resend them", len(pending))

    async def _on_notification(self, notification: Notification) -> None:
        # The work runs in a task of its own so that cancelling the subscription (stop)
        # does not cut a message off half sent: stop() waits for these tasks.
        task = asyncio.create_task(self.handle(notification), name=f"notifyd:{notification.id}")
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            # Marks the error seen: the handler that awaits the task re-raises it to the
            # bus, which logs it; after stop() nobody awaits it and it was logged already.
            task.exception()

    async def handle(self, notification: Notification) -> None:
        """Process one notification and ack it; see the module doc."""
        async with self._semaphore:
            ref = str(notification.ref)
            payload: AlarmPayload | None = None
            try:
                payload = AlarmPayload.from_dict(notification.payload)
            except PayloadError as exc:
                result = SendResult(AckStatus.FAILED, f"invalid payload: {exc}")
            else:
                result = await self._deliver(payload, ref)
            await self._ack(notification, ref, result)
            if result.status is AckStatus.DELIVERED and payload is not None and self.on_delivered is not None:
                try:
                    self.on_delivered(payload, ref)
                except Exception:
                    log.exception("the on_delivered callback failed for %s", ref)

    async def _deliver(self, payload: AlarmPayload, ref: str) -> SendResult:
        recipients = _recipients(payload)
        if not recipients:
            return SendResult(AckStatus.FAILED, "no recipient: the alarm names no recipients and the calendar no owner")
        try:
            message = render_reminder(payload, ref, self._settings.smtp.sender, recipients, self._clock())
        except Exception as exc:
            log.exception("cannot render the reminder for %s", ref)
            return SendResult(AckStatus.FAILED, f"cannot render the reminder: {type(exc).__name__}: {exc}")
        try:
            return await self._sender.send(message, recipients)
        except Exception as exc:
            log.exception("the mail sender failed on %s", ref)
            return SendResult(AckStatus.RETRY, f"mail sender error: {type(exc).__name__}: {exc}")

    async def _ack(self, notification: Notification, ref: str, result: SendResult) -> None:
        renl = notification.renl.renl_id if notification.renl else "-"
        try:
            await self._bus.ack(notification, result.status, result.reason, standard_properties(PROCESS, self._clock()))
        except BusUnavailable as exc:
            log.warning("could not ack %s (renl %s, %s): %s; the publisher will resend", ref, renl, result.status, exc)
            raise
        if result.status is AckStatus.DELIVERED:
            self.delivered += 1
        elif result.status is AckStatus.FAILED:
            self.failed += 1
        else:
            self.retried += 1
        if result.status is AckStatus.DELIVERED and not result.rejected:
            log.info("%s renl=%s %s", ref, renl, result.status)
        else:
            # Reasons can quote server replies naming recipients: keep addresses out of the log.
            log.info("%s renl=%s %s: %s", ref, renl, result.status, _loggable(result.reason))


def _loggable(reason: str) -> str:
    """``reason`` on one line with every address replaced by ``<address>``."""
    return _ADDRESS.sub("<address>", " ".join(_CONTROLS.sub(" ", reason).split()))


def _recipients(payload: AlarmPayload) -> list[str]:
    """The alarm's recipients, else the calendar owner; blanks and repeats dropped."""
    out: list[str] = []
    for candidate in payload.recipients:
        address = candidate.strip()
        if address and address not in out:
            out.append(address)
    owner = payload.owner.strip()
    return out or ([owner] if owner else [])
