"""In-process bus for the embedded deployment and for tests.

By default messages cross it as JSON bytes, exactly as on AMQP, so codec bugs show in
tests too. The embedded deployment (``memory://``, :func:`common.ens.create_bus`) hands
the envelopes over as they are (``encode=False``): publisher and subscriber are one
process, and the JSON round trip of a notification and its ack was a tenth of that
process's CPU per reminder (``tests/benchmarks/dispatch_burst``), checking nothing the
publisher had not built itself. Neither side changes an envelope once it is sent (they
are frozen; their dicts are only read). Raw messages (:meth:`MemoryBus.publish_raw`)
are bytes and decoded either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from common.ens.abc import (
    AckHandler,
    Bus,
    BusUnavailable,
    NotificationHandler,
    Subscription,
    as_subscription,
)
from common.ens.acks import hand_over
from common.ens.envelope import Ack, EnvelopeError, Notification
from common.ens.poison import reject_poison
from common.ens.reference import EventReference

__all__ = ["MemoryBus", "reject_poison"]

log = logging.getLogger(__name__)


class _Queue:
    """One queue: a subscription's own, a pool's shared one, or an ack address."""

    def __init__(self, binding: EventReference | None) -> None:
        self.binding = binding
        self.items: asyncio.Queue[bytes | Notification | Ack] = asyncio.Queue()
        self.consumers: set[asyncio.Task[None]] = set()


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, queue_name: str, task: asyncio.Task[None]) -> None:
        self._bus = bus
        self._queue_name = queue_name
        self._task = task

    async def cancel(self) -> None:
        await self._bus._stop_consumer(self._queue_name, self._task)


class MemoryBus(Bus):
    """``prefetch`` handlers of one subscription run at once, as on AMQP; ``encode``: see the module doc."""

    def __init__(self, *, prefetch: int = 64, close_timeout: float = 10.0, encode: bool = True) -> None:
        self.encode = encode
        self._queues: dict[str, _Queue] = {}
        self._closed = False
        self._prefetch = prefetch
        self._close_timeout = close_timeout
        self._handlers: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for name, queue in list(self._queues.items()):
            for task in list(queue.consumers):
                await self._stop_consumer(name, task)
        current = asyncio.current_task()
        running = {t for t in self._handlers if t is not current}
        if running:
            _done, pending = await asyncio.wait(running, timeout=self._close_timeout)
            for handler in pending:
                log.warning("handler still running after %.0fs at close; cancelling it", self._close_timeout)
                handler.cancel()

    async def publish(self, notification: Notification) -> None:
        if self._closed:
            raise BusUnavailable("the in-process bus is closed")
        body = notification.to_json() if self.encode else notification
        for queue in self._queues.values():
            if queue.binding is not None and queue.binding.matches(notification.ref):
                queue.items.put_nowait(body)

    async def subscribe(self, subscription: str | EventReference, handler: NotificationHandler) -> Subscription:
        sub = as_subscription(subscription)
        name = sub.queue_suffix() if sub.pool is not None else f"sub.{uuid.uuid4().hex}.{sub.queue_suffix()}"
        queue = self._queues.setdefault(name, _Queue(sub.without_pool()))
        return self._start_consumer(name, queue, lambda body: self._deliver(body, handler))

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Put ``body`` as is on every queue bound with ``routing_key`` (tests and tools).

        ``renl.ADDRESS`` reaches the ack queue of ``ADDRESS`` if it is consumed, as on AMQP.
        """
        if self._closed:
            raise BusUnavailable("the in-process bus is closed")
        if routing_key.startswith("renl."):
            if (acks := self._queues.get(routing_key)) is not None:
                acks.items.put_nowait(body)
            return
        for queue in self._queues.values():
            if queue.binding is not None and queue.binding.routing_key == routing_key:
                queue.items.put_nowait(body)

    async def send_ack(self, ack_to: str, ack: Ack, *, batch: bool = False) -> None:
        # ``batch`` changes nothing here: a message costs nothing in one process.
        if self._closed:
            raise BusUnavailable("the in-process bus is closed")
        # As on AMQP: an ack goes to the queue its publisher consumes; with none, it is
        # dropped (a queue per made-up ack_to would let forged notifications grow the bus).
        queue = self._queues.get(f"renl.{ack_to}")
        if queue is None:
            log.debug("dropped an ack to %r: nobody consumes acks for that address", ack_to[:100])
            return
        queue.items.put_nowait(ack.to_json() if self.encode else ack)

    async def consume_acks(self, ack_to: str, handler: AckHandler) -> Subscription:
        name = f"renl.{ack_to}"
        queue = self._queues.setdefault(name, _Queue(None))
        return self._start_consumer(name, queue, lambda body: hand_over(body, handler))

    def _start_consumer(
        self, name: str, queue: _Queue, deliver: Callable[[Any], Coroutine[Any, Any, object]]
    ) -> Subscription:
        slots = asyncio.Semaphore(self._prefetch)

        def finished(task: asyncio.Task[object]) -> None:
            self._handlers.discard(task)
            slots.release()

        async def consume() -> None:
            while True:
                await slots.acquire()
                try:
                    body = await queue.items.get()
                except asyncio.CancelledError:
                    slots.release()
                    raise
                handler_task = asyncio.create_task(deliver(body), name=f"memory-bus-handler:{name}")
                self._handlers.add(handler_task)
                handler_task.add_done_callback(finished)
                await asyncio.sleep(0)  # let the other members of a pool take their turn

        task = asyncio.create_task(consume(), name=f"memory-bus:{name}")
        queue.consumers.add(task)
        return _MemorySubscription(self, name, task)

    async def _stop_consumer(self, name: str, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        queue = self._queues.get(name)
        if queue is not None:
            queue.consumers.discard(task)
            if not queue.consumers and queue.binding is not None and not name.startswith("pool."):
                del self._queues[name]  # a plain subscription's queue dies with it

    async def _deliver(self, body: bytes | Notification, handler: NotificationHandler) -> None:
        if isinstance(body, Notification):
            notification = body
        else:
            try:
                notification = Notification.from_json(body)
            except EnvelopeError as exc:
                await reject_poison(self, body, exc)
                return
        try:
            await handler(notification)
        except Exception:
            log.exception("subscriber failed on %s; message rejected, the publisher will resend", notification.ref)
