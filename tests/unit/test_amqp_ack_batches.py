"""How the AMQP bus gathers acks, up to the broker (no broker: publishing is recorded)."""

from __future__ import annotations

import asyncio
import json

from common.ens.amqp import ACK_BATCH_ADDRESSES, ACK_BATCH_MAX
from common.ens.envelope import MAX_MESSAGE_BYTES, Ack, AckStatus
from tests.buses import RecordingAmqpBus


def acks_in(bus: RecordingAmqpBus) -> list[str]:
    out: list[str] = []
    for _key, message in bus.sent:
        body = json.loads(message.body)
        out += [body["renl_id"]] if body["type"] == "ack" else [a["renl_id"] for a in body["acks"]]
    return out


async def test_a_message_holds_at_most_ack_batch_max_acks() -> None:
    bus = RecordingAmqpBus()
    acks = [Ack(f"{i}:1", AckStatus.DELIVERED) for i in range(ACK_BATCH_MAX * 2 + 1)]
    await asyncio.gather(*(bus.send_ack("alarmd", ack, batch=True) for ack in acks))
    assert [len(json.loads(m.body).get("acks", [None])) for _key, m in bus.sent] == [ACK_BATCH_MAX, ACK_BATCH_MAX, 1]
    assert sorted(acks_in(bus), key=lambda r: int(r.split(":")[0])) == [a.renl_id for a in acks]


async def test_a_batch_over_half_the_message_limit_goes_in_halves() -> None:
    bus = RecordingAmqpBus()
    reason = "x" * (MAX_MESSAGE_BYTES // 8)  # 4 such acks pass half the limit; 2 do not
    acks = [Ack(f"{i}:1", AckStatus.FAILED, reason) for i in range(4)]
    await asyncio.gather(*(bus.send_ack("alarmd", ack, batch=True) for ack in acks))
    assert [json.loads(m.body)["type"] for _key, m in bus.sent] == ["acks", "acks"]
    assert all(len(m.body) <= MAX_MESSAGE_BYTES // 2 for _key, m in bus.sent)
    assert sorted(acks_in(bus)) == [a.renl_id for a in acks]


async def test_acks_are_gathered_for_a_bounded_number_of_addresses() -> None:
    """The ack_to of a notification is its sender's to choose: made-up addresses must not
    make the bus keep a batcher each without end."""
    bus = RecordingAmqpBus()
    addresses = [f"alarmd-{i}" for i in range(ACK_BATCH_ADDRESSES + 4)]
    for address in addresses:
        await bus.send_ack(address, Ack(f"{address}:1", AckStatus.DELIVERED), batch=True)
    assert len(bus._ack_batchers) == ACK_BATCH_ADDRESSES
    assert [key for key, _message in bus.sent] == [f"renl.{address}" for address in addresses]
