"""Buses for tests: the one in-process bus, or AMQP connections on an exchange of the test's own
(its durable queues and the exchange deleted at the end), behind one interface."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika

from common.ens.abc import Bus
from common.ens.amqp import AmqpBus
from common.ens.envelope import AckStatus, Notification
from common.ens.memory import MemoryBus
from tests.services import RABBITMQ_URL, require_rabbitmq, unique_exchange


class RecordingAmqpBus(AmqpBus):
    """The AMQP bus up to the broker: keeps what it would publish (routing key, message)
    instead of talking to RabbitMQ."""

    def __init__(self, url: str = "amqp://guest:guest@127.0.0.1:5672/") -> None:
        super().__init__(url)
        self.sent: list[tuple[str, aio_pika.Message]] = []

    async def _publish(self, routing_key: str, message: aio_pika.Message, what: str) -> None:
        self.sent.append((routing_key, message))

    def bodies(self) -> list[Any]:
        return [json.loads(message.body) for _key, message in self.sent]


class Buses:
    """Makes buses on one medium: the shared in-process bus, or AMQP connections on one exchange."""

    def __init__(self, kind: str, *, timeout: float = 5.0) -> None:
        self.kind = kind
        self.timeout = timeout
        self.exchange = unique_exchange()
        self.made: list[Bus] = []
        # "memory": JSON across, as tests use it; "memory-objects": envelopes handed over, as embedded runs it
        self._memory = MemoryBus(encode=kind != "memory-objects")

    @property
    def url(self) -> str:
        return f"{RABBITMQ_URL}?exchange={self.exchange}"

    async def new(self) -> Bus:
        """A started bus; under AMQP a new connection (another process, as it were)."""
        bus: Bus = AmqpBus(self.url, timeout=self.timeout) if self.kind == "amqp" else self._memory
        await bus.start()
        self.made.append(bus)
        return bus

    async def aclose(self) -> None:
        for bus in self.made:
            await bus.close()
        await self._memory.close()
        if self.kind == "amqp":
            queues = set().union(*(bus.durable_queues for bus in self.made if isinstance(bus, AmqpBus)))
            await delete_from_broker(self.exchange, queues)


async def delete_from_broker(exchange: str, queues: set[str]) -> None:
    """Remove a test's exchange and durable queues from RabbitMQ."""
    failures: list[str] = []
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        for name, delete in [*((q, "queue") for q in sorted(queues)), (exchange, "exchange")]:
            try:  # a channel of its own each time: a failed delete closes its channel
                async with connection.channel() as channel:
                    if delete == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
            except (aio_pika.exceptions.AMQPError, ValueError) as exc:
                failures.append(f"{delete} {name!r}: {exc!r}")
    finally:
        await connection.close()
    assert not failures, f"could not clean up RabbitMQ: {failures}"


@asynccontextmanager
async def open_buses(kind: str, *, amqp_timeout: float = 5.0) -> AsyncIterator[Buses]:
    """``Buses`` of ``kind`` ("memory", "memory-objects" or "amqp"; the last skips, or fails under CI, without
    RabbitMQ), closed and cleaned up afterwards."""
    if kind == "amqp":
        require_rabbitmq()
    made = Buses(kind, timeout=amqp_timeout)
    try:
        yield made
    finally:
        await made.aclose()


class Tally:
    """A subscriber that counts what it receives. It never acks end to end (so nothing is
    removed) unless given ``acks_on``: then it acks each notification ``delivered`` on that bus."""

    def __init__(self, acks_on: Bus | None = None) -> None:
        self.acks_on = acks_on
        self.by_renl: Counter[str] = Counter()
        self.by_ref: Counter[str] = Counter()
        self.received = 0
        self._changed = asyncio.Event()

    async def __call__(self, notification: Notification) -> None:
        assert notification.renl is not None
        self.by_renl[notification.renl.renl_id] += 1
        self.by_ref[str(notification.ref)] += 1
        self.received += 1
        self._changed.set()
        if self.acks_on is not None:
            await self.acks_on.ack(notification, AckStatus.DELIVERED)

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        async def until() -> None:
            while self.received < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), within)
