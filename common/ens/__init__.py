"""The ENS-style event bus: references, envelopes, the Bus port and its adapters."""

from common.ens.abc import Bus, BusError, BusUnavailable, Subscription
from common.ens.envelope import Ack, AckStatus, EnvelopeError, Notification, Renl, standard_properties
from common.ens.reference import EventReference, InvalidReference

__all__ = [
    "Ack",
    "AckStatus",
    "Bus",
    "BusError",
    "BusUnavailable",
    "EnvelopeError",
    "EventReference",
    "InvalidReference",
    "Notification",
    "Renl",
    "Subscription",
    "create_bus",
    "standard_properties",
]


def create_bus(url: str, *, prefetch: int = 64) -> Bus:
    """``memory://`` → in-process bus; ``amqp://…`` / ``amqps://…`` → RabbitMQ.

    ``prefetch``: messages of one subscription handed to its handlers at once. The
    in-process bus hands envelopes over without JSON (see :mod:`common.ens.memory`).
    """
    if url.startswith("memory:"):
        from common.ens.memory import MemoryBus

        return MemoryBus(prefetch=prefetch, encode=False)
    if url.startswith(("amqp://", "amqps://")):
        from common.ens.amqp import AmqpBus

        return AmqpBus(url, prefetch=prefetch)
    raise BusError(f"bus url {url!r}: use memory:// or amqp://user:pass@host:port/vhost")
