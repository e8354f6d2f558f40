"""RabbitMQ adapter of the bus port (aio-pika, robust connection).

Layout on the broker, for an exchange named ``ens`` (``?exchange=NAME`` in the URL):

- one durable topic exchange ``ens``; a notification is published with the routing
  key of its reference base (``/ics/eventalarm`` → ``ics.eventalarm``);
- a pool subscription ``enp+pool.P:///ics/eventalarm`` consumes the durable queue
  ``ens.pool.P.ics.eventalarm``, shared by every member of the pool, so messages wait
  there while no member is connected (``ens.`` + ``EventReference.queue_suffix()``;
  a subscription with parameters, ``…?calid=jac``, has characters AMQP does not allow
  in a queue name, so its queue is ``ens.pool.P.ics.eventalarm/calid:jac@<hash>``,
  see :func:`queue_name`);
- a plain subscription gets an exclusive, auto-delete queue of its own
  (``ens.sub.<routing key>.<random>``; the name is chosen here, not by the server,
  so the robust connection can declare it again after a reconnect);
- acks for the RENL address ``A`` are published with routing key ``renl.A`` and
  wait in the durable queue ``ens.renl.A``. Acks to a publisher that takes them in
  batches (its RENL request says ``batch_acks``) are gathered: those sent while the
  previous message to ``A`` awaits its confirm go out together, up to
  :data:`ACK_BATCH_MAX`, as one message of type ``acks``. A lone ack is a message of
  its own, without delay. In a burst that is one broker message per batch instead of
  one per reminder, for the broker, the sender and the reader.

Bindings select by base only; parameter matching happens in the consumer, which
acks and ignores a message its subscription does not select. Up to ``prefetch``
handlers of one subscription run at once.

When the connection drops (a broker restarted, a network blip), aio-pika's robust
connection reconnects in the background (every 5 s) and restores the channels, the
exchange, the queues and their consumers. Meanwhile an operation (publish, ack,
subscribe) waits for that, up to ``timeout`` seconds, and only then fails with
:class:`BusUnavailable`: a broker back within that time costs a delay, not an error
(aio-pika leaves that wait to the application, "Connection or channel loss can make
publication fail, including on robust connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
    ConsumerTag,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError
from yarl import URL

from common.batching import Batcher
from common.ens.abc import (
    AckHandler,
    Bus,
    BusError,
    BusUnavailable,
    NotificationHandler,
    Subscription,
    as_subscription,
)
from common.ens.acks import hand_over
from common.ens.envelope import MAX_MESSAGE_BYTES, Ack, EnvelopeError, Notification, acks_to_json
from common.ens.poison import reject_poison
from common.ens.reference import EventReference

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "ens"
ACK_ROUTING_PREFIX = "renl."
_EXCHANGE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,127}$")
_NOT_QUEUE_NAME_CHAR = re.compile(r"[^A-Za-z0-9_.:@,/+-]")
_MAX_NAME_BYTES = 255  # AMQP short string: queue names and routing keys
_BROKER_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError)
ACK_BATCH_MAX = 100  # acks in one message at most (see the module doc)
# Addresses whose acks are gathered, at most: the ack_to of a message is the sender's to
# choose, and each address keeps a Batcher; acks to any further address go one a message.
ACK_BATCH_ADDRESSES = 16

Deliver = Callable[[AbstractIncomingMessage], Awaitable[None]]


def split_url(url: str) -> tuple[str, str]:
    """``amqp://…?exchange=NAME&heartbeat=30`` → (``amqp://…?heartbeat=30``, ``NAME``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [value for key, value in query if key == "exchange"]
    exchange = names[-1] if names else DEFAULT_EXCHANGE
    if not _EXCHANGE_NAME.match(exchange) or exchange.startswith("amq."):
        raise BusError(
            f"bus url: exchange {exchange!r} must be 1-127 letters, digits, '_', '-', '.' or ':' "
            "and must not start with 'amq.'"
        )
    rest = urlencode([(key, value) for key, value in query if key != "exchange"])
    return urlunsplit(parts._replace(query=rest)), exchange


def redacted(url: str) -> str:
    """The URL with its password hidden, for log lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def queue_name(text: str) -> str:
    """A valid AMQP queue name for ``text`` (a stable function: pool members must agree).

    ``text`` itself when it is already valid; otherwise a readable form (``?`` → ``/``,
    ``&`` → ``,``, ``=`` → ``:``, anything else outside the allowed characters → ``_``)
    cut to 200 characters, plus ``@`` and a hash of ``text`` so distinct texts keep
    distinct queues: ``ens.pool.notifyd.ics.eventalarm?calid=jac`` →
    ``ens.pool.notifyd.ics.eventalarm/calid:jac@<12 hex digits>``.
    """
    if not _NOT_QUEUE_NAME_CHAR.search(text) and len(text.encode()) <= _MAX_NAME_BYTES:
        return text
    readable = _NOT_QUEUE_NAME_CHAR.sub("_", text.replace("?", "/").replace("&", ",").replace("=", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{readable[:200]}@{digest}"


class _AmqpSubscription(Subscription):
    """One consumer on one queue; ``cancel`` stops it (and deletes a private queue)."""

    def __init__(self, bus: AmqpBus, description: str, *, private: bool) -> None:
        self._bus = bus
        self.description = description
        self.private = private  # the queue belongs to this subscription alone
        self.queue: AbstractRobustQueue | None = None
        self.tag: ConsumerTag | None = None
        self.cancelled = False

    async def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        await self._bus._stop(self)

    def __repr__(self) -> str:
        return f"<AmqpSubscription {self.description}{' cancelled' if self.cancelled else ''}>"


class AmqpBus(Bus):
    """The bus on RabbitMQ. ``url`` is ``amqp[s]://user:pass@host:port/vhost[?exchange=NAME]``."""

    def __init__(
        self,
        url: str,
        *,
        prefetch: int = 64,
        timeout: float = 10.0,
        close_timeout: float = 10.0,
    ) -> None:
        if prefetch < 0:
            raise ValueError("prefetch must be 0 (unlimited) or more")
        self._url, self.exchange_name = split_url(url)
        self._prefetch = prefetch
        self._timeout = timeout  # longest wait for the broker in one operation
        self._close_timeout = close_timeout  # how long close() lets running handlers finish
        self._lock = asyncio.Lock()
        self._closed = False
        self._closing = asyncio.Event()  # set by close(): operations waiting for a reconnect give up
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._consume_channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._durable_queues: dict[str, AbstractRobustQueue] = {}
        self._durable_names: set[str] = set()  # every durable queue ever declared, for tools and tests
        self._subscriptions: set[_AmqpSubscription] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._ack_batchers: dict[str, Batcher[Ack, None]] = {}  # per RENL address

    def __repr__(self) -> str:
        return f"<AmqpBus {redacted(self._url)} exchange={self.exchange_name!r}>"

    @property
    def durable_queues(self) -> frozenset[str]:
        """Names of the durable queues (pool and ack queues) this bus has declared since it was made."""
        return frozenset(self._durable_names)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            self._closed = False
            self._closing.clear()
            if self._connection is not None:
                return
            # What aio_pika.connect_robust() does, but holding the connection object:
            # when the first attempt fails, connect_robust() raises and leaves that
            # object reconnecting in the background for ever; here it is closed.
            connection = aio_pika.RobustConnection(
                URL(self._url), client_properties={"connection_name": f"calalarm ens/{self.exchange_name}"}
            )
            try:
                async with asyncio.timeout(self._timeout):
                    await connection.connect(timeout=self._timeout)
                    publish_channel = await connection.channel(publisher_confirms=True)
                    consume_channel = await connection.channel(publisher_confirms=False)
                    await consume_channel.set_qos(prefetch_count=self._prefetch)
                    exchange = await publish_channel.declare_exchange(
                        self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                    # Declared on the consuming channel too, so that channel's own
                    # recovery re-creates it before re-binding its queues.
                    await consume_channel.declare_exchange(
                        self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                    )
            except asyncio.CancelledError:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await connection.close()
                raise
            except _BROKER_ERRORS as exc:
                with contextlib.suppress(*_BROKER_ERRORS):
                    await connection.close()
                raise BusUnavailable(f"cannot reach RabbitMQ at {redacted(self._url)}: {_describe(exc)}") from exc
            self._connection = connection
            self._publish_channel = publish_channel
            self._consume_channel = consume_channel
            self._exchange = exchange
            log.info("connected to RabbitMQ at %s, exchange %r", redacted(self._url), self.exchange_name)

    async def close(self) -> None:
        self._closing.set()
        async with self._lock:
            self._closed = True
            connection = self._connection
            if connection is None:
                return
            for subscription in list(self._subscriptions):
                subscription.cancelled = True
                await self._stop(subscription)
            for batcher in self._ack_batchers.values():  # acks already handed over go out
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(batcher.drain(), timeout=self._close_timeout)
            running = self._handlers - {asyncio.current_task()}  # close() may be called by a handler
            if running:
                _done, pending = await asyncio.wait(running, timeout=self._close_timeout)
                for task in pending:
                    log.warning("handler still running after %.0fs at close; cancelling it", self._close_timeout)
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            self._connection = None
            self._publish_channel = self._consume_channel = None
            self._exchange = None
            self._durable_queues.clear()
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()
            log.info("disconnected from RabbitMQ at %s", redacted(self._url))

    async def _ready(self) -> tuple[AbstractRobustChannel, AbstractRobustChannel, AbstractRobustExchange]:
        """The channels and exchange, connecting first if start() was never called."""
        if self._connection is None:
            if self._closed:
                raise BusUnavailable("the AMQP bus is closed")
            await self.start()
        connection = self._connection
        if connection is None or self._publish_channel is None or self._consume_channel is None:
            raise BusUnavailable("the AMQP bus is closed")
        if self._exchange is None:
            raise BusUnavailable("the AMQP bus is closed")
        publish_channel, consume_channel = self._publish_channel, self._consume_channel
        if not connection.connected.is_set() or publish_channel.is_closed or consume_channel.is_closed:
            await self._wait_restored(publish_channel, consume_channel)
        return publish_channel, consume_channel, self._exchange

    async def _wait_restored(self, *channels: AbstractRobustChannel) -> None:
        """Wait until the robust connection is back and has restored ``channels`` (their
        exchanges, queues and consumers); BusUnavailable after ``timeout`` or on close()."""
        restored: asyncio.Future[object] = asyncio.ensure_future(self._all_ready(channels))
        closing: asyncio.Future[object] = asyncio.ensure_future(self._closing.wait())
        try:
            done, _pending = await asyncio.wait(
                (restored, closing), timeout=self._timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (restored, closing):
                task.cancel()
            await asyncio.gather(restored, closing, return_exceptions=True)
        if restored in done and not restored.cancelled() and restored.exception() is None:
            return
        if closing in done:
            raise BusUnavailable("the AMQP bus is closed")
        raise BusUnavailable(
            f"not connected to RabbitMQ at {redacted(self._url)} (reconnecting; not back within {self._timeout:g}s)"
        )

    @staticmethod
    async def _all_ready(channels: tuple[AbstractRobustChannel, ...]) -> None:
        for channel in channels:
            await channel.ready()

    # -- publishing --------------------------------------------------------------

    async def publish(self, notification: Notification) -> None:
        routing_key = notification.ref.routing_key
        _check_not_reserved(notification.ref)
        message = aio_pika.Message(
            notification.to_json(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=notification.id,
            type="notification",
        )
        await self._publish(routing_key, message, f"notification {notification.ref}")

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Publish ``body`` as is (tests inject garbage with it; tools replay messages)."""
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self._publish(routing_key, message, f"raw message to {routing_key!r}")

    async def send_ack(self, ack_to: str, ack: Ack, *, batch: bool = False) -> None:
        # Not declared here: the publisher declares its ack queue before it publishes
        # anything, so a genuine ack has a queue. Declaring it for whatever ack_to a
        # notification names let forged notifications create durable queues without end;
        # an ack to an address nobody consumes is now dropped by the broker (unroutable).
        routing_key = _ack_routing_key(ack_to)
        batcher = self._ack_batchers.get(ack_to) if batch else None
        if batch and batcher is None and len(self._ack_batchers) < ACK_BATCH_ADDRESSES:
            # linger 0: a batch is what arrived while the previous one awaited its confirm.
            batcher = Batcher(
                functools.partial(self._publish_acks, ack_to),
                name=f"ens:acks:{ack_to[:50]}",
                linger=0.0,
                max_batch=ACK_BATCH_MAX,
            )
            self._ack_batchers[ack_to] = batcher
        if batcher is not None:
            await batcher.submit(ack)
            return
        message = aio_pika.Message(
            ack.to_json(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=ack.renl_id,
            type="ack",
        )
        await self._publish(routing_key, message, f"ack {ack.renl_id} to {ack_to!r}")

    async def _publish_acks(self, ack_to: str, acks: list[Ack]) -> list[None]:
        """Publish ``acks`` to ``ack_to`` as one message of type ``acks`` (halves of it, should
        that pass half the message size limit); one alone as a plain ack."""
        if len(acks) == 1:
            await self.send_ack(ack_to, acks[0])
            return [None]
        body = acks_to_json(acks)
        if len(body) > MAX_MESSAGE_BYTES // 2:
            half = len(acks) // 2
            await asyncio.gather(self._publish_acks(ack_to, acks[:half]), self._publish_acks(ack_to, acks[half:]))
            return [None] * len(acks)
        message = aio_pika.Message(
            body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type="acks"
        )
        await self._publish(_ack_routing_key(ack_to), message, f"{len(acks)} acks to {ack_to!r}")
        return [None] * len(acks)

    async def _publish(self, routing_key: str, message: aio_pika.Message, what: str) -> None:
        _publish_channel, _consume_channel, exchange = await self._ready()
        try:
            async with asyncio.timeout(self._timeout):
                await exchange.publish(message, routing_key, mandatory=False)
        except DeliveryError as exc:
            raise BusUnavailable(f"RabbitMQ refused {what} (nack): {_describe(exc)}") from exc
        except _BROKER_ERRORS as exc:
            raise BusUnavailable(f"could not publish {what}: {_describe(exc)}") from exc

    def _ack_queue_name(self, ack_to: str) -> str:
        return queue_name(f"{self.exchange_name}.{_ack_routing_key(ack_to)}")

    # -- consuming ---------------------------------------------------------------

    async def subscribe(self, subscription: str | EventReference, handler: NotificationHandler) -> Subscription:
        sub = as_subscription(subscription)
        _check_not_reserved(sub)
        if sub.pool is not None:
            name = queue_name(f"{self.exchange_name}.{sub.queue_suffix()}")
            state = _AmqpSubscription(self, f"{sub} on {name}", private=False)
        else:
            name = queue_name(f"{self.exchange_name}.sub.{sub.routing_key}.{uuid.uuid4().hex[:12]}")
            state = _AmqpSubscription(self, f"{sub} on {name}", private=True)

        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._deliver_notification(state, sub, handler, message)

        await self._consume(state, name, sub.routing_key, deliver, durable=sub.pool is not None)
        return state

    async def consume_acks(self, ack_to: str, handler: AckHandler) -> Subscription:
        name = self._ack_queue_name(ack_to)
        state = _AmqpSubscription(self, f"acks for {ack_to!r} on {name}", private=False)

        async def deliver(message: AbstractIncomingMessage) -> None:
            await self._deliver_ack(state, handler, message)

        await self._consume(state, name, _ack_routing_key(ack_to), deliver, durable=True)
        return state

    async def _consume(
        self, state: _AmqpSubscription, name: str, routing_key: str, deliver: Deliver, *, durable: bool
    ) -> None:
        _publish_channel, consume_channel, _exchange = await self._ready()
        if durable:
            self._durable_names.add(name)
        try:
            async with asyncio.timeout(self._timeout):
                queue = self._durable_queues.get(name) if durable else None
                if queue is None:
                    if durable:
                        queue = await consume_channel.declare_queue(name, durable=True)
                    else:
                        queue = await consume_channel.declare_queue(name, exclusive=True, auto_delete=True)
                    await queue.bind(self.exchange_name, routing_key)
                    if durable:
                        self._durable_queues[name] = queue
                state.queue = queue
                state.tag = await queue.consume(self._tracked(deliver))
        except _BROKER_ERRORS as exc:
            if state.private and state.queue is not None:
                with contextlib.suppress(*_BROKER_ERRORS):
                    async with asyncio.timeout(self._timeout):
                        await state.queue.delete(if_unused=False, if_empty=False)
            raise BusUnavailable(f"could not subscribe ({state.description}): {_describe(exc)}") from exc
        self._subscriptions.add(state)
        log.debug("consuming %s", state.description)

    def _tracked(self, deliver: Deliver) -> Deliver:
        """Wrap a consumer callback so close() can wait for the handlers it runs."""

        async def callback(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handlers.add(task)
            try:
                await deliver(message)
            finally:
                if task is not None:
                    self._handlers.discard(task)

        return callback

    async def _stop(self, state: _AmqpSubscription) -> None:
        """Cancel the consumer of ``state``; delete its queue if it is private. Never raises."""
        self._subscriptions.discard(state)
        queue, tag = state.queue, state.tag
        if queue is None or tag is None:
            return
        connection = self._connection
        connected = connection is not None and connection.connected.is_set()
        try:
            async with asyncio.timeout(self._timeout if connected else 0.1):
                await queue.cancel(tag)
                if state.private:
                    await queue.delete(if_unused=False, if_empty=False)
        except _BROKER_ERRORS as exc:
            # Off the broker the consumer is gone with the connection; the robust
            # queue forgot the tag before the await, so it is not restored either.
            log.info("could not cancel %s cleanly: %s", state.description, _describe(exc))
        log.debug("stopped consuming %s", state.description)

    async def _deliver_notification(
        self,
        state: _AmqpSubscription,
        sub: EventReference,
        handler: NotificationHandler,
        message: AbstractIncomingMessage,
    ) -> None:
        if state.cancelled:
            # Arrived between cancel() and the broker's cancel-ok: hand it back so
            # another pool member (or a later subscriber) gets it.
            await _settle(message, message.reject(requeue=True))
            return
        try:
            notification = Notification.from_json(message.body)
        except EnvelopeError as exc:
            await reject_poison(self, message.body, exc)
            await _settle(message, message.ack())
            return
        if message.redelivered:
            notification = dataclasses.replace(notification, redelivered=True)
        if not sub.matches(notification.ref):
            await _settle(message, message.ack())
            return
        try:
            await handler(notification)
        except Exception:
            log.exception(
                "subscriber failed on %s (id %s); message rejected, the publisher will resend",
                notification.ref,
                notification.id,
            )
            await _settle(message, message.reject(requeue=False))
            return
        await _settle(message, message.ack())

    async def _deliver_ack(
        self, state: _AmqpSubscription, handler: AckHandler, message: AbstractIncomingMessage
    ) -> None:
        if state.cancelled:
            await _settle(message, message.reject(requeue=True))
            return
        if await hand_over(message.body, handler, redelivered=bool(message.redelivered)):
            await _settle(message, message.ack())
        else:  # dead-lettered for inspection where the broker's policy says so
            await _settle(message, message.reject(requeue=False))


async def _settle(message: AbstractIncomingMessage, action: Awaitable[None]) -> None:
    """Ack or reject ``message``; when the channel is gone the broker redelivers it anyway."""
    try:
        await action
    except _BROKER_ERRORS as exc:
        log.warning(
            "could not settle message %s (%s); the broker will redeliver it",
            message.message_id or message.delivery_tag,
            _describe(exc),
        )


def _ack_routing_key(ack_to: str) -> str:
    """``renl.ADDRESS``; refuses addresses a topic binding would read as a pattern."""
    key = ACK_ROUTING_PREFIX + ack_to
    words = ack_to.split(".")
    if not ack_to or "*" in words or "#" in words or len(key.encode()) > _MAX_NAME_BYTES:
        raise BusError(f"RENL address {ack_to!r} is not usable (empty, a '*'/'#' word, or over 250 bytes)")
    return key


def _check_not_reserved(ref: EventReference) -> None:
    if ref.routing_key == "renl" or ref.routing_key.startswith(ACK_ROUTING_PREFIX):
        raise BusError(f"reference base {ref.base!r} is reserved: routing keys renl.* carry acks")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
