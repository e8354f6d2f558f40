"""The delivery contract of ``common/ens/abc.py``, run on every adapter.

The ``buses`` fixture hands out buses that talk to each other: the one in-process
bus (JSON across, as tests use it, and envelopes handed over, as the embedded
deployment runs it), or separate RabbitMQ connections on an exchange of the test's
own (deleted, with every durable queue the test created, at teardown).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import pytest

from common.ens import Ack, AckStatus, Bus, BusUnavailable, EventReference, Notification, Renl
from common.ens.abc import NotificationHandler
from common.ens.amqp import AmqpBus, split_url
from common.ens.memory import MemoryBus
from tests.buses import Buses, open_buses

T = TypeVar("T")
WAIT = 5.0  # the longest any single expectation may take; normally milliseconds
ACK_TO = "alarmd"


class Inbox(Generic[T]):
    """A handler that records what it gets and lets the test wait for a count."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    async def __call__(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, count: int, within: float = WAIT) -> list[T]:
        async def until() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), within)
        return self.items


@pytest.fixture(params=["memory", "memory-objects", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    async with open_buses(request.param, amqp_timeout=WAIT) as made:
        yield made


def notification(
    calid: str = "jac",
    base: str = "/ics/eventalarm",
    *,
    renl: bool = False,
    **payload: Any,
) -> Notification:
    uid = uuid.uuid4().hex[:8]
    ref = EventReference(base, (("calid", calid), ("uid", uid), ("rid", ""), ("aid", "1")))
    request = Renl(ACK_TO, f"{uid}:1", 30.0) if renl else None
    return Notification(ref, dict(payload), {"process": "test", "pid": 1}, request)


def raw(bus: Bus) -> MemoryBus | AmqpBus:
    """The bus as an adapter with ``publish_raw``."""
    assert isinstance(bus, MemoryBus | AmqpBus)
    return bus


def ids(items: list[Notification]) -> list[str]:
    return [n.id for n in items]


async def test_plain_subscribers_each_get_a_copy(buses: Buses) -> None:
    publisher, first_bus, second_bus = await buses.new(), await buses.new(), await buses.new()
    first: Inbox[Notification] = Inbox()
    second: Inbox[Notification] = Inbox()
    await first_bus.subscribe("enp:///ics/eventalarm", first)
    await second_bus.subscribe("enp:///ics/eventalarm", second)

    sent = [notification(payload_no=i) for i in range(3)]
    for n in sent:
        await publisher.publish(n)

    assert sorted(ids(await first.wait_for(3))) == sorted(ids(sent))
    assert sorted(ids(await second.wait_for(3))) == sorted(ids(sent))
    received = {n.id: n for n in first.items}
    assert received[sent[1].id].payload == {"payload_no": 1}
    assert received[sent[1].id].ref == sent[1].ref


async def test_pool_members_compete_while_plain_subscriber_gets_all(buses: Buses) -> None:
    publisher, member_a_bus, member_b_bus, watcher_bus = [await buses.new() for _ in range(4)]
    member_a: list[str] = []
    member_b: list[str] = []
    pool: Inbox[Notification] = Inbox()
    watcher: Inbox[Notification] = Inbox()

    def member(seen: list[str]) -> NotificationHandler:
        async def handle(n: Notification) -> None:
            seen.append(n.id)
            await pool(n)
            await asyncio.sleep(0.001)  # a real member takes time, so the other one gets work

        return handle

    await member_a_bus.subscribe("enp+pool.workers:///ics/eventalarm", member(member_a))
    await member_b_bus.subscribe("enp+pool.workers:///ics/eventalarm", member(member_b))
    await watcher_bus.subscribe("enp:///ics/eventalarm", watcher)

    count = 40
    sent = [notification() for _ in range(count)]
    for n in sent:
        await publisher.publish(n)

    assert sorted(ids(await watcher.wait_for(count))) == sorted(ids(sent))
    await pool.wait_for(count)
    # A late duplicate would come through the shared queue before this sentinel.
    sentinel = notification()
    await publisher.publish(sentinel)
    await pool.wait_for(count + 1)

    delivered = Counter(member_a + member_b)
    assert set(delivered) == {*ids(sent), sentinel.id}
    assert all(times == 1 for times in delivered.values()), delivered.most_common(3)
    assert len(pool.items) == count + 1
    assert member_a, f"member a got none of {count}"
    assert member_b, f"member b got none of {count}"


async def test_subscription_parameters_select_a_subset(buses: Buses) -> None:
    publisher, subscriber = await buses.new(), await buses.new()
    jac: Inbox[Notification] = Inbox()
    jac_first_alarm: Inbox[Notification] = Inbox()
    jac_pool: Inbox[Notification] = Inbox()
    todos: Inbox[Notification] = Inbox()
    everything: Inbox[Notification] = Inbox()
    await subscriber.subscribe("enp:///ics/eventalarm?calid=jac", jac)
    await subscriber.subscribe("enp:///ics/eventalarm?aid=1&calid=jac", jac_first_alarm)
    await subscriber.subscribe("enp+pool.jacs:///ics/eventalarm?calid=jac", jac_pool)
    await subscriber.subscribe("enp:///ics/todoalarm", todos)
    await subscriber.subscribe(EventReference.parse("enp:///ics/eventalarm"), everything)

    bob, jacs = notification("bob"), notification("jac")
    jac_todo = notification("jac", "/ics/todoalarm")
    for n in (bob, jacs, jac_todo):
        await publisher.publish(n)

    # Each queue is FIFO: once the later message is in, the earlier one was decided.
    assert ids(await everything.wait_for(2)) == [bob.id, jacs.id]
    assert ids(await jac.wait_for(1)) == [jacs.id]
    assert ids(await jac_first_alarm.wait_for(1)) == [jacs.id]
    assert ids(await jac_pool.wait_for(1)) == [jacs.id]
    assert ids(await todos.wait_for(1)) == [jac_todo.id]
    sentinel = notification("jac")
    await publisher.publish(sentinel)
    await jac.wait_for(2)
    await jac_pool.wait_for(2)
    assert ids(jac.items) == [jacs.id, sentinel.id]
    assert ids(jac_pool.items) == [jacs.id, sentinel.id]
    assert ids(todos.items) == [jac_todo.id]


async def test_ack_round_trip_carries_status_and_reason(buses: Buses) -> None:
    publisher, notifier = await buses.new(), await buses.new()
    acks: Inbox[Ack] = Inbox()
    await publisher.consume_acks(ACK_TO, acks)

    async def notify(n: Notification) -> None:
        status = AckStatus(n.payload["status"])
        await notifier.ack(n, status, n.payload.get("reason", ""), {"process": "notifyd", "sent": 2})

    await notifier.subscribe("enp+pool.notifyd:///ics/eventalarm", notify)
    delivered = notification(renl=True, status="delivered")
    failed = notification(renl=True, status="failed", reason="550 5.1.1 jac@example.com: no such user")
    retry = notification(renl=True, status="retry", reason="421 try later")
    unasked = notification(renl=False, status="delivered")  # asks for no ack: none is sent
    for n in (unasked, delivered, failed, retry):
        await publisher.publish(n)

    got = {a.renl_id: a for a in await acks.wait_for(3)}
    assert delivered.renl is not None
    assert failed.renl is not None
    assert retry.renl is not None
    assert got[delivered.renl.renl_id].status is AckStatus.DELIVERED
    assert got[delivered.renl.renl_id].reason == ""
    assert got[failed.renl.renl_id].status is AckStatus.FAILED
    assert got[failed.renl.renl_id].reason == "550 5.1.1 jac@example.com: no such user"
    assert got[retry.renl.renl_id].status is AckStatus.RETRY
    assert got[retry.renl.renl_id].reason == "421 try later"
    assert got[failed.renl.renl_id].properties == {"process": "notifyd", "sent": 2}
    assert len(acks.items) == 3


async def test_acks_sent_together_to_a_publisher_that_takes_batches_each_arrive_once(
    buses: Buses, caplog: pytest.LogCaptureFixture
) -> None:
    """On AMQP they share messages (fewer than the acks); a message of several acks with a bad
    one among them loses only that one; the handler failing on one ack loses only that one."""
    publisher, notifier = await buses.new(), await buses.new()
    acks: Inbox[Ack] = Inbox()

    async def handler(ack: Ack) -> None:
        if ack.reason == "refuse me":
            raise RuntimeError("the database said no")
        await acks(ack)

    await publisher.consume_acks(ACK_TO, handler)
    sent = [Ack(f"{i}:1", AckStatus.DELIVERED if i % 3 else AckStatus.RETRY, f"r{i}") for i in range(60)]
    await asyncio.gather(*(notifier.send_ack(ACK_TO, ack, batch=True) for ack in sent))
    got = await acks.wait_for(60)
    assert sorted(got, key=lambda a: int(a.renl_id.split(":")[0])) == sent
    if isinstance(notifier, AmqpBus):
        assert notifier._ack_batchers[ACK_TO].batches < 60

    caplog.set_level(logging.WARNING, logger="common.ens")
    mixed = {
        "v": 1,
        "type": "acks",
        "acks": [
            {"renl_id": "a:1", "status": "delivered"},
            {"renl_id": "b:1", "status": "maybe"},
            {"renl_id": "c:1", "status": "failed", "reason": "refuse me"},
            {"renl_id": "d:1", "status": "failed", "reason": "550"},
        ],
    }
    await raw(notifier).publish_raw(f"renl.{ACK_TO}", json.dumps(mixed).encode())
    got = await acks.wait_for(62)
    assert [(a.renl_id, a.status) for a in got[60:]] == [("a:1", AckStatus.DELIVERED), ("d:1", AckStatus.FAILED)]
    logged = [r.getMessage() for r in caplog.records]
    assert "dropped an invalid ack: ack 2 of 4: ack 'status' 'maybe' is not one of delivered, failed, retry" in logged
    assert "ack handler failed on renl_id=c:1; ack dropped" in logged
    await notifier.send_ack(ACK_TO, Ack("e:1", AckStatus.DELIVERED), batch=True)  # still consuming
    assert (await acks.wait_for(63))[-1].renl_id == "e:1"


async def test_a_notifier_batches_acks_only_for_a_publisher_that_asked(buses: Buses) -> None:
    """A RENL request without ``batch_acks`` (an older publisher) gets one ack per message."""
    publisher, notifier = await buses.new(), await buses.new()
    acks: Inbox[Ack] = Inbox()
    await publisher.consume_acks(ACK_TO, acks)
    old = [notification(renl=True) for _ in range(20)]
    new = [dataclasses.replace(n, renl=dataclasses.replace(n.renl, batch_acks=True)) for n in old if n.renl]
    await asyncio.gather(*(notifier.ack(n, AckStatus.DELIVERED) for n in old))
    await acks.wait_for(20)
    if isinstance(notifier, AmqpBus):
        assert notifier._ack_batchers == {}
    await asyncio.gather(*(notifier.ack(n, AckStatus.DELIVERED) for n in new))
    await acks.wait_for(40)
    if isinstance(notifier, AmqpBus):
        assert notifier._ack_batchers[ACK_TO].batches < 20


async def test_acks_sent_while_their_publisher_is_away_wait_and_acks_to_nobody_are_dropped(buses: Buses) -> None:
    first = await buses.new()
    away = await first.consume_acks(ACK_TO, Inbox[Ack]())  # the publisher's ack queue exists from its start
    await away.cancel()
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"

    notifier = await buses.new()
    await notifier.send_ack(ACK_TO, Ack("1:1", AckStatus.DELIVERED))
    await raw(notifier).publish_raw(f"renl.{ACK_TO}", b'{"v": 1, "type": "ack"}')  # invalid: dropped
    await notifier.send_ack(ACK_TO, Ack("2:1", AckStatus.FAILED, "no recipients"))
    await notifier.send_ack(nobody, Ack("3:1", AckStatus.DELIVERED))  # no queue: not kept, none made

    publisher = await buses.new()  # the publisher comes back only now
    acks: Inbox[Ack] = Inbox()
    await publisher.consume_acks(ACK_TO, acks)
    got = await acks.wait_for(2)
    assert [(a.renl_id, a.status, a.reason) for a in got] == [
        ("1:1", AckStatus.DELIVERED, ""),
        ("2:1", AckStatus.FAILED, "no recipients"),
    ]
    await notifier.send_ack(ACK_TO, Ack("4:1", AckStatus.RETRY))  # still consuming after the bad one
    assert [a.renl_id for a in await acks.wait_for(3)] == ["1:1", "2:1", "4:1"]

    # Had the notifier made a queue for ``nobody`` (a forged ack_to could name any), the
    # ack would wait in it for this consumer.
    stray: Inbox[Ack] = Inbox()
    await publisher.consume_acks(nobody, stray)
    await notifier.send_ack(ACK_TO, Ack("5:1", AckStatus.DELIVERED))
    await acks.wait_for(4)
    await asyncio.sleep(0.2)
    assert stray.items == []


async def test_failing_handler_does_not_stop_later_deliveries(buses: Buses, caplog: pytest.LogCaptureFixture) -> None:
    publisher, subscriber = await buses.new(), await buses.new()
    calls: Inbox[Notification] = Inbox()
    failing_acks: Inbox[Ack] = Inbox()

    async def handler(n: Notification) -> None:
        await calls(n)
        if n.payload.get("boom"):
            raise RuntimeError("template exploded")

    await subscriber.subscribe("enp+pool.notifyd:///ics/eventalarm", handler)
    await subscriber.subscribe("enp:///ics/eventalarm", failing_handler(failing_acks))
    boom, after = notification(boom=True), notification()
    with caplog.at_level(logging.ERROR):
        await publisher.publish(boom)
        await publisher.publish(after)
        await calls.wait_for(2)
        await failing_acks.wait_for(2)
        sentinel = notification()
        await publisher.publish(sentinel)
        await calls.wait_for(3)

    # Rejected, not redelivered by the bus: the RENL timeout is the retry.
    assert Counter(ids(calls.items)) == {boom.id: 1, after.id: 1, sentinel.id: 1}
    failures = [r for r in caplog.records if "template exploded" in str(r.exc_info and r.exc_info[1])]
    assert failures, "the handler's error was not logged with its traceback"


def failing_handler(inbox: Inbox[Ack]) -> NotificationHandler:
    """A handler that always raises: it must not stop its own subscription either."""

    async def handler(n: Notification) -> None:
        await inbox(Ack(n.id, AckStatus.FAILED))
        raise ValueError("always fails")

    return handler


async def test_poison_message_is_acked_failed_or_dropped(buses: Buses) -> None:
    publisher, subscriber = await buses.new(), await buses.new()
    got: Inbox[Notification] = Inbox()
    acks: Inbox[Ack] = Inbox()
    await publisher.consume_acks(ACK_TO, acks)
    await subscriber.subscribe("enp:///ics/eventalarm", got)

    poison_with_renl = {
        "v": 1,
        "type": "notification",
        "id": "x",
        "ref": "http://not-an-enp-reference",
        "payload": {},
        "renl": {"ack_to": ACK_TO, "renl_id": "77:3", "timeout": 60},
    }
    await raw(publisher).publish_raw("ics.eventalarm", json.dumps(poison_with_renl).encode())
    await raw(publisher).publish_raw("ics.eventalarm", b"\xff\xfe not json, no renl")
    await raw(publisher).publish_raw("ics.eventalarm", b'{"v": 99, "type": "notification"}')
    good = notification()
    await publisher.publish(good)

    assert ids(await got.wait_for(1)) == [good.id]
    [ack] = await acks.wait_for(1)
    assert ack.renl_id == "77:3"
    assert ack.status is AckStatus.FAILED
    assert "invalid notification" in ack.reason
    assert "ref" in ack.reason

    again = notification()  # the subscription survived all three
    await publisher.publish(again)
    assert ids(await got.wait_for(2)) == [good.id, again.id]
    assert len(acks.items) == 1


async def test_cancel_stops_delivery(buses: Buses) -> None:
    publisher, subscriber = await buses.new(), await buses.new()
    cancelled: Inbox[Notification] = Inbox()
    kept: Inbox[Notification] = Inbox()
    cancelled_pool: Inbox[Notification] = Inbox()
    kept_pool: Inbox[Notification] = Inbox()
    subscription = await subscriber.subscribe("enp:///ics/eventalarm", cancelled)
    pool_subscription = await subscriber.subscribe("enp+pool.p:///ics/eventalarm", cancelled_pool)
    await subscriber.subscribe("enp:///ics/eventalarm", kept)
    await publisher.publish(first := notification())
    await cancelled.wait_for(1)
    await cancelled_pool.wait_for(1)

    await subscription.cancel()
    await pool_subscription.cancel()
    await subscription.cancel()  # twice is harmless
    await subscriber.subscribe("enp+pool.p:///ics/eventalarm", kept_pool)
    second = notification()
    await publisher.publish(second)

    assert ids(await kept.wait_for(2)) == [first.id, second.id]
    assert ids(await kept_pool.wait_for(1)) == [second.id]
    assert ids(cancelled.items) == [first.id]
    assert ids(cancelled_pool.items) == [first.id]


async def test_pool_queue_keeps_messages_while_no_member_listens(buses: Buses) -> None:
    publisher = await buses.new()
    member = await buses.new()
    first_life: Inbox[Notification] = Inbox()
    subscription = await member.subscribe("enp+pool.notifyd:///ics/eventalarm?calid=jac", first_life)
    await subscription.cancel()
    if buses.kind == "amqp":
        await member.close()  # the only member's process is gone

    waiting = [notification("jac"), notification("bob"), notification("jac")]
    for n in waiting:
        await publisher.publish(n)

    second_life: Inbox[Notification] = Inbox()
    restarted = await buses.new()
    await restarted.subscribe("enp+pool.notifyd:///ics/eventalarm?calid=jac", second_life)
    assert ids(await second_life.wait_for(2)) == [waiting[0].id, waiting[2].id]
    assert first_life.items == []


async def test_a_message_whose_member_died_unsettled_comes_again_marked_redelivered(buses: Buses) -> None:
    """``redelivered`` lets notifyd skip its delivery-log lookup only for a first copy."""
    publisher = await buses.new()
    pool = "enp+pool.notifyd:///ics/eventalarm"
    if buses.kind == "amqp":
        # A member whose handler never returns: its process dies with the message unsettled.
        dying = AmqpBus(buses.url, timeout=WAIT, close_timeout=0.2)
        buses.made.append(dying)
        await dying.start()
        taken: Inbox[Notification] = Inbox()

        async def hang(item: Notification) -> None:
            await taken(item)
            await asyncio.Event().wait()

        await dying.subscribe(pool, hang)
        await publisher.publish(first := notification())
        [held] = await taken.wait_for(1)
        assert (held.id, held.redelivered) == (first.id, False)
        await dying.close()  # the handler is cancelled: the broker requeues the message
    survivor: Inbox[Notification] = Inbox()
    await (await buses.new()).subscribe(pool, survivor)
    await publisher.publish(fresh := notification())
    got = await survivor.wait_for(2 if buses.kind == "amqp" else 1)
    assert {n.id: n.redelivered for n in got} == (
        {first.id: True, fresh.id: False} if buses.kind == "amqp" else {fresh.id: False}
    )


@pytest.mark.rabbitmq
async def test_an_ack_whose_publisher_died_unsettled_comes_again_marked_redelivered() -> None:
    """alarmd logs an unknown instance's ack quietly when the broker redelivered it."""
    async with open_buses("amqp", amqp_timeout=WAIT) as buses:
        sender = await buses.new()
        dying = AmqpBus(buses.url, timeout=WAIT, close_timeout=0.2)
        buses.made.append(dying)
        await dying.start()
        taken: Inbox[Ack] = Inbox()

        async def hang(ack: Ack) -> None:
            await taken(ack)
            await asyncio.Event().wait()

        await dying.consume_acks(ACK_TO, hang)
        await sender.send_ack(ACK_TO, Ack("7:1", AckStatus.DELIVERED))
        [held] = await taken.wait_for(1)
        assert held.redelivered is False
        await dying.close()  # the handler is cancelled: the broker requeues the ack
        again: Inbox[Ack] = Inbox()
        await (await buses.new()).consume_acks(ACK_TO, again)
        await sender.send_ack(ACK_TO, Ack("8:1", AckStatus.DELIVERED))
        got = await again.wait_for(2)
        assert {a.renl_id: a.redelivered for a in got} == {"7:1": True, "8:1": False}


async def test_closed_bus_refuses_with_bus_unavailable(buses: Buses) -> None:
    bus = await buses.new()
    await bus.start()  # idempotent
    await bus.close()
    await bus.close()  # idempotent
    with pytest.raises(BusUnavailable):
        await bus.publish(notification())
    with pytest.raises(BusUnavailable):
        await bus.send_ack(ACK_TO, Ack("1:1", AckStatus.DELIVERED))
    await bus.start()  # and it can come back
    got: Inbox[Notification] = Inbox()
    await bus.subscribe("enp:///ics/eventalarm", got)
    await bus.publish(n := notification())
    assert ids(await got.wait_for(1)) == [n.id]


async def test_amqp_unreachable_broker_raises_bus_unavailable_quickly() -> None:
    bus = AmqpBus("amqp://guest:secret@127.0.0.1:1/?exchange=nowhere", timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as failure:
        await bus.publish(notification())
    assert time.monotonic() - started < 3.0
    assert "127.0.0.1:1" in str(failure.value)
    assert "secret" not in str(failure.value)
    with pytest.raises(BusUnavailable):
        await bus.start()
    await bus.close()


def test_amqp_url_names_the_exchange() -> None:
    assert split_url("amqp://u:p@h:5672/vh?exchange=ens-prod&heartbeat=30") == (
        "amqp://u:p@h:5672/vh?heartbeat=30",
        "ens-prod",
    )
    assert split_url("amqp://guest:guest@127.0.0.1/") == ("amqp://guest:guest@127.0.0.1/", "ens")
