"""The notifier: alarm notifications in, reminder emails out, an end-to-end ack for each.

One notification is handled as: validate the payload; if it came before its property
``not_before`` (alarmd publishes up to ``alarmd.publish_ahead`` before the trigger), pick
the recipients and render the email at once and hold it until then; look its instance key up in the
delivery log (a recorded one is acked ``delivered`` without a second email; the first
copy of an instance, its first publication not redelivered by the bus, cannot have been
mailed and skips the lookup), pick the recipients (:mod:`notifyd.recipients`), render
the email (:mod:`notifyd.email`), send it (:mod:`notifyd.smtp`), record the delivery,
then ack the RENL with the outcome, in a task of its own. A bad notification is acked
``failed`` with the reason and never stops the subscription. An ack that cannot be sent
(:class:`BusUnavailable`) is logged; the publisher's RENL timeout then makes it send the
notification again, and the delivery record keeps that from mailing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa

from common.ens.abc import Bus, BusUnavailable, Subscription
from common.ens.envelope import AckStatus, Notification, standard_properties
from common.ens.reference import EVENT_ALARM, TODO_ALARM
from common.logs import without_addresses
from common.metrics import NotifydMetrics
from common.payload import AlarmPayload, PayloadError, format_utc
from common.settings import PUBLISH_AHEAD_MAX, Settings
from notifyd.dedup import Delivery, DeliveryLog, MemoryDeliveryLog, SqlDeliveryLog, instance_key
from notifyd.email import render_reminder, sample_context
from notifyd.recipients import Addressing, Directory, RecipientPolicy, address_reminder
from notifyd.smtp import SendResult, SmtpSender, list_refusals
from notifyd.templates import Templates

log = logging.getLogger(__name__)

PROCESS = "notifyd"
STOP_GRACE = 30.0
PURGE_EVERY = 3600.0  # seconds between purges of expired delivery records
DUPLICATE = "duplicate: "  # how the reason of an ack for a reminder mailed before begins


class MailSender(Protocol):
    """What the notifier needs from an SMTP client (:class:`notifyd.smtp.SmtpSender`)."""

    async def send(self, message: bytes, recipients: list[str]) -> SendResult: ...


DeliveredCallback = Callable[[AlarmPayload, str], None]
# A reminder ready to send (its addressing and message bytes), or the result that ends it.
_Prepared = tuple[Addressing, bytes] | SendResult


class Notifier:
    """Subscribes to alarm notifications as a member of the notifyd pool and emails them."""

    def __init__(
        self,
        bus: Bus,
        sender: MailSender,
        settings: Settings,
        clock: Callable[[], datetime],
        on_delivered: DeliveredCallback | None = None,
        *,
        templates: Templates | None = None,
        directory: Directory | None = None,
        deliveries: DeliveryLog | None = None,
        metrics: NotifydMetrics | None = None,
    ) -> None:
        options = settings.notifyd
        self._bus = bus
        self._sender = sender
        self._settings = settings
        self._clock = clock
        self.on_delivered = on_delivered
        self._templates = templates or Templates(options.templates, options.locale)
        self._directory = directory or (Directory.load(options.directory) if options.directory else Directory())
        self._policy = RecipientPolicy(options.allowed_domains)
        self._deliveries = deliveries or MemoryDeliveryLog(timedelta(seconds=options.dedup_retention))
        self._semaphore = asyncio.Semaphore(options.concurrency)
        self._subscriptions: list[Subscription] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._purger: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.retried = 0
        self.duplicates = 0
        self.metrics = metrics if metrics is not None else NotifydMetrics()

    @property
    def deliveries(self) -> DeliveryLog:
        return self._deliveries

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
        self._purger = asyncio.create_task(self._purge_periodically(), name="notifyd:purge")
        log.info("notifier subscribed as pool %r", self._settings.notifyd.pool)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop taking notifications, then let those in hand finish (up to ``grace`` seconds)."""
        subscriptions, self._subscriptions = self._subscriptions, []
        purger, self._purger = self._purger, None
        if purger is not None:
            purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await purger
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
        self._deliveries.close()

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
        """Process one notification and start its ack; see the module doc.

        One that comes before its ``not_before`` is prepared (recipients, rendering) and
        held until then, outside the concurrency slots, at most
        :data:`~common.settings.PUBLISH_AHEAD_MAX` seconds: one due later than that (the
        publisher's clock ahead of ours) is sent then, with a warning.

        ``notifyd.concurrency`` bounds the work up to the delivery record, so the crash
        window holds at most that many reminders. The ack then goes out in a task of its
        own: the broker's confirm of it (milliseconds to tens of them for a persistent
        message) holds neither a slot nor the notification's place in the prefetch
        window. Should the ack be lost after the notification was settled, the publisher
        sends the notification again at its RENL timeout, and the delivery record makes
        that an ack without a second email.
        """
        ref = str(notification.ref)
        payload: AlarmPayload | None = None
        try:
            payload = AlarmPayload.from_dict(notification.payload)
        except PayloadError as exc:
            result = SendResult(AckStatus.FAILED, f"invalid payload: {exc}")
        else:
            prepared = await self._hold(notification, payload, ref)
            async with self._semaphore:
                result = await self._process(payload, ref, notification.first_copy, prepared)
        ack = asyncio.create_task(self._ack(notification, ref, result), name=f"notifyd:ack:{notification.id}")
        self._inflight.add(ack)  # stop() waits for acks as for notifications in hand
        ack.add_done_callback(self._finished)
        if result.status is AckStatus.DELIVERED and payload is not None and self.on_delivered is not None:
            try:
                self.on_delivered(payload, ref)
            except Exception:
                log.exception("the on_delivered callback failed for %s", ref)

    async def _hold(self, notification: Notification, payload: AlarmPayload, ref: str) -> _Prepared | None:
        """Until the notification's ``not_before``, when it is still ahead: the reminder
        prepared meanwhile."""
        not_before = notification.not_before()
        if not_before is None:
            return None
        now = self._clock()
        ahead = (not_before - now).total_seconds()
        if ahead <= 0:
            return None
        if ahead > PUBLISH_AHEAD_MAX:
            log.warning(
                "%s came %.1f s before its not_before (more than %g s: is the publisher's clock ahead?); "
                "sending it after %g s",
                ref,
                ahead,
                PUBLISH_AHEAD_MAX,
                PUBLISH_AHEAD_MAX,
            )
            ahead = PUBLISH_AHEAD_MAX
        prepared = self._prepare(payload, ref, now + timedelta(seconds=ahead))  # dated when sent
        await asyncio.sleep(ahead)
        return prepared

    async def _process(
        self, payload: AlarmPayload, ref: str, first_copy: bool = False, prepared: _Prepared | None = None
    ) -> SendResult:
        """Dedup, deliver, record (see the module doc). The first copy of an instance
        (its first publication, not redelivered) cannot have been mailed: no lookup."""
        key = instance_key(payload)
        sent_at = None
        if not first_copy:
            try:
                sent_at = await self._deliveries.sent_at(key, self._clock())
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not hold the reminder back
                log.warning("%s: cannot read the delivery log (%s); sending without the duplicate check", ref, exc)
        if sent_at is not None:
            self.duplicates += 1
            return SendResult(
                AckStatus.DELIVERED, f"{DUPLICATE}already mailed at {format_utc(sent_at)}; not sent again"
            )
        result = await self._deliver(payload, ref, prepared)
        if result.status is AckStatus.DELIVERED:
            delivery = Delivery(key, ref, payload.trigger_at, self._clock(), result.reason[:1000])
            try:
                await self._deliveries.record(delivery)
            except Exception as exc:  # noqa: BLE001 - the mail went out; the ack must say so
                log.warning(
                    "%s: mailed, but the delivery log cannot record it (%s); a resend would repeat it", ref, exc
                )
        return result

    def _prepare(self, payload: AlarmPayload, ref: str, now: datetime) -> _Prepared:
        """The recipients and the rendered message, or the result that ends it (no recipient,
        or a template that fails). Pure work, no I/O."""
        options = self._settings.notifyd
        addressing = address_reminder(payload, self._directory.entry(payload.calid), self._policy)
        if not addressing.recipients:
            if addressing.refused:
                return _with_refusals(SendResult(AckStatus.FAILED), addressing)
            return SendResult(
                AckStatus.FAILED,
                "no recipient: the alarm names no attendee and the calendar no owner "
                "(enqueue with an owner, or add the calendar to notifyd.directory)",
            )
        try:
            message = render_reminder(
                payload,
                ref,
                self._settings.smtp.sender,
                addressing.recipients,
                now,
                templates=self._templates,
                locale=addressing.locale,
                tz=addressing.tz,
                description_max=options.description_max,
                attach_ics=options.attach_ics,
            )
        except Exception as exc:
            log.exception("cannot render the reminder for %s", ref)
            return SendResult(AckStatus.FAILED, f"cannot render the reminder: {type(exc).__name__}: {exc}")
        return addressing, message

    async def _deliver(self, payload: AlarmPayload, ref: str, prepared: _Prepared | None = None) -> SendResult:
        if prepared is None:
            prepared = self._prepare(payload, ref, self._clock())
        if isinstance(prepared, SendResult):
            return prepared
        addressing, message = prepared
        try:
            result = await self._sender.send(message, addressing.recipients)
        except Exception as exc:
            log.exception("the mail sender failed on %s", ref)
            return SendResult(AckStatus.RETRY, f"mail sender error: {type(exc).__name__}: {exc}")
        return _with_refusals(result, addressing)

    async def _purge_periodically(self) -> None:
        while True:
            try:
                purged = await self._deliveries.purge(self._clock())
            except Exception as exc:  # noqa: BLE001 - retried at the next period
                log.warning("cannot purge expired delivery records: %s", exc)
            else:
                if purged:
                    log.info("purged %d expired delivery record(s)", purged)
            await asyncio.sleep(PURGE_EVERY)

    async def _ack(self, notification: Notification, ref: str, result: SendResult) -> None:
        renl = notification.renl.renl_id if notification.renl else "-"
        try:
            await self._bus.ack(notification, result.status, result.reason, standard_properties(PROCESS, self._clock()))
        except BusUnavailable as exc:
            log.warning("could not ack %s (renl %s, %s): %s; the publisher will resend", ref, renl, result.status, exc)
            return
        if result.status is AckStatus.DELIVERED:
            self.delivered += 1
        elif result.status is AckStatus.FAILED:
            self.failed += 1
        else:
            self.retried += 1
        duplicate = result.status is AckStatus.DELIVERED and result.reason.startswith(DUPLICATE)
        outcome = "duplicate" if duplicate else result.status.value
        self.metrics.notifications[outcome].inc()
        if not log.isEnabledFor(logging.INFO):
            return
        r = notification.ref
        fields = {"calid": r.get("calid"), "uid": r.get("uid"), "rid": r.get("rid"), "aid": r.get("aid")}
        fields.update(renl=renl, status=result.status.value, outcome=outcome)
        if result.status is AckStatus.DELIVERED and not result.rejected:
            log.info("acked renl=%s %s", renl, result.status, extra=fields)
        else:
            # Reasons can quote server replies naming recipients: keep addresses out of the log.
            log.info("acked renl=%s %s: %s", renl, result.status, without_addresses(result.reason), extra=fields)


def _with_refusals(result: SendResult, addressing: Addressing) -> SendResult:
    """``result`` for the addresses sent to, extended by those refused before sending."""
    if not addressing.refused or result.status is AckStatus.RETRY:
        return result
    rejected = {**result.rejected, **addressing.refused}
    if result.status is AckStatus.FAILED:
        return SendResult(
            AckStatus.FAILED, f"all {addressing.total} recipients refused: " + list_refusals(rejected), rejected
        )
    accepted = addressing.total - len(rejected)
    return SendResult(
        AckStatus.DELIVERED,
        f"delivered to {accepted} of {addressing.total} recipients; refused: " + list_refusals(rejected),
        rejected,
    )


def notifier_from_settings(
    bus: Bus,
    settings: Settings,
    clock: Callable[[], datetime],
    *,
    engine: sa.Engine,
    metrics: NotifydMetrics | None = None,
) -> tuple[Notifier, SmtpSender]:
    """The production notifier: pooled SMTP, delivery records in the database at ``engine``,
    templates checked and the directory read (:class:`ConfigError` says what is wrong); ``metrics``
    for both the notifier and its sender (a set of their own when not given)."""
    options = settings.notifyd
    templates = Templates(options.templates, options.locale)
    templates.check(sample_context())
    directory = Directory.load(options.directory) if options.directory else Directory()
    deliveries = SqlDeliveryLog(engine, timedelta(seconds=options.dedup_retention))
    metrics = metrics if metrics is not None else NotifydMetrics()
    sender = SmtpSender(settings.smtp, metrics=metrics)
    notifier = Notifier(
        bus, sender, settings, clock, templates=templates, directory=directory, deliveries=deliveries, metrics=metrics
    )
    return notifier, sender
