"""The bus port. ``memory`` and ``amqp`` are its adapters; contract tests run on both.

Delivery contract, the same on every adapter:

- ``publish`` returns once the bus has taken responsibility for the notification
  (a publisher confirm on AMQP). It raises :class:`BusUnavailable` when it cannot.
- Each plain subscription receives its own copy of every matching notification.
  Subscriptions written ``enp+pool.NAME:///…`` with the same pool name and the same
  reference share one queue: each notification goes to exactly one of them.
- A handler that returns settles the message. A handler that raises has the
  message rejected (not redelivered by the bus; the RENL timeout makes the
  publisher send it again) and the error logged. A message that is not a valid
  envelope is dropped with a log line; if its RENL can be read it is acked
  ``failed`` with the reason, so the publisher does not retry it for ever.
- ``ack`` sends an :class:`Ack` to the notification's ``renl.ack_to`` address;
  acks wait in a durable queue per address until ``consume_acks`` reads them. When the
  RENL request says ``batch_acks``, an adapter may carry acks sent together to one
  address in one message; ``consume_acks`` hands each to the handler all the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from common.ens.envelope import Ack, AckStatus, Notification, Properties
from common.ens.reference import EventReference

NotificationHandler = Callable[[Notification], Awaitable[None]]
AckHandler = Callable[[Ack], Awaitable[None]]


class BusError(Exception):
    """Base class of bus errors."""


class BusUnavailable(BusError):
    """The bus cannot take a message now (broker down, connection lost); retry later."""


class Subscription(ABC):
    """A live subscription; ``cancel`` stops delivery to its handler."""

    @abstractmethod
    async def cancel(self) -> None: ...


class Bus(ABC):
    """Publish/subscribe with end-to-end acknowledgment (ENS with RENL)."""

    @abstractmethod
    async def start(self) -> None:
        """Connect and declare what is needed. Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Stop every subscription and disconnect."""

    @abstractmethod
    async def publish(self, notification: Notification) -> None:
        """Send ``notification`` to every matching subscription; return once it is safe."""

    @abstractmethod
    async def subscribe(self, subscription: str | EventReference, handler: NotificationHandler) -> Subscription:
        """Deliver matching notifications to ``handler`` (see the module doc for pools)."""

    @abstractmethod
    async def send_ack(self, ack_to: str, ack: Ack, *, batch: bool = False) -> None:
        """Send ``ack`` to the RENL address ``ack_to``; ``batch``: the reader there takes
        several acks to a message (its RENL request said ``batch_acks``)."""

    @abstractmethod
    async def consume_acks(self, ack_to: str, handler: AckHandler) -> Subscription:
        """Deliver acks sent to ``ack_to`` to ``handler``."""

    async def ack(
        self,
        notification: Notification,
        status: AckStatus,
        reason: str = "",
        properties: Properties | None = None,
    ) -> None:
        """Acknowledge ``notification`` end to end; does nothing if it asked for no RENL."""
        if notification.renl is None:
            return
        ack = Ack(notification.renl.renl_id, status, reason, properties or {})
        await self.send_ack(notification.renl.ack_to, ack, batch=notification.renl.batch_acks)

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def as_subscription(subscription: str | EventReference) -> EventReference:
    return EventReference.parse(subscription) if isinstance(subscription, str) else subscription
