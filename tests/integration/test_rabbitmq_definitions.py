"""deploy/rabbitmq/definitions*.json imported into the real broker, then used by the real AMQP bus.

Each file is imported (``rabbitmqctl import_definitions``) under a throwaway vhost and
user; the bus then declares its exchange and queues on top of the imported ones (a
declaration that disagreed would fail with PRECONDITION_FAILED), delivers a
notification and an ack with the user's permissions, and a notification, and a message of
acks, whose handler fails land in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import uuid

import aio_pika
import pytest

from common.ens import BusError
from common.ens.amqp import AmqpBus
from common.ens.envelope import Ack, AckStatus, Notification, acks_from_json
from common.ens.reference import EVENT_ALARM, TODO_ALARM, EventReference
from common.settings import AlarmdSettings, NotifydSettings
from tests.payloads import sample_payload
from tests.services import require_rabbitmq
from tests.unit.test_deploy_files import DEFINITIONS, code_queues, definitions

WAIT = 10.0


def rabbitmqctl(*args: str) -> str:
    path = shutil.which("rabbitmqctl")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmqctl is missing; CI runs RabbitMQ on this machine")
        pytest.skip("rabbitmqctl is not installed here")
    result = subprocess.run([path, "-q", *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def throwaway_copy(name: str, vhost: str, user: str, password: str) -> str:
    """The definitions with their vhost and user renamed, and a password for the user."""
    data = definitions(name)
    data["vhosts"][0]["name"] = vhost
    for section in ("permissions", "exchanges", "queues", "bindings", "policies"):
        for entry in data[section]:
            entry["vhost"] = vhost
    for entry in data["permissions"]:
        entry["user"] = user
    data["users"][0] |= {"name": user, "password": password}
    return json.dumps(data)


async def started(bus: AmqpBus) -> None:
    """Start ``bus`` once the (asynchronous) import has created the vhost and the user."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await bus.start()
                return
            except BusError:
                await asyncio.sleep(0.2)


@pytest.mark.parametrize("name", DEFINITIONS)
async def test_the_definitions_import_and_the_bus_works_on_top_of_them(name: str) -> None:
    require_rabbitmq()
    tag = uuid.uuid4().hex[:10]
    vhost, user, password = f"calalarm-test-{tag}", f"calalarm-test-{tag}", uuid.uuid4().hex
    # Debian's rabbitmqctl runs as the rabbitmq user: the file must be readable by it.
    with tempfile.NamedTemporaryFile("w", prefix="calalarm-definitions-", suffix=".json") as file:
        file.write(throwaway_copy(name, vhost, user, password))
        file.flush()
        os.chmod(file.name, 0o644)
        rabbitmqctl("import_definitions", file.name)
    url = f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"
    bus = AmqpBus(url, timeout=5.0, close_timeout=1.0)
    try:
        await started(bus)
        notifications: asyncio.Queue[Notification] = asyncio.Queue()
        acks: asyncio.Queue[Ack] = asyncio.Queue()

        async def on_notification(notification: Notification) -> None:
            notifications.put_nowait(notification)
            if notification.payload.get("uid") == "poison":
                raise RuntimeError("this handler fails: the message is rejected and dead-lettered")

        async def on_ack(ack: Ack) -> None:
            acks.put_nowait(ack)
            if ack.renl_id == "poison:1":
                raise RuntimeError("this handler fails: the message of acks is rejected and dead-lettered")

        pool, ack_to = NotifydSettings().pool, AlarmdSettings().ack_to
        for base in (EVENT_ALARM, TODO_ALARM):
            await bus.subscribe(f"enp+pool.{pool}://{base}", on_notification)
        await bus.consume_acks(ack_to, on_ack)
        assert bus.durable_queues == set(code_queues())

        ref = EventReference.alarm("event", "jac", "poison", "", "1")
        await bus.publish(Notification(ref=ref, payload=sample_payload(calid="jac", uid="poison").to_dict()))
        await bus.send_ack(ack_to, Ack("1:1", AckStatus.DELIVERED))
        assert (await asyncio.wait_for(notifications.get(), WAIT)).ref == ref
        assert (await asyncio.wait_for(acks.get(), WAIT)).renl_id == "1:1"
        await asyncio.gather(
            *(bus.send_ack(ack_to, Ack(renl, AckStatus.DELIVERED), batch=True) for renl in ("2:1", "poison:1", "3:1"))
        )
        assert sorted([(await asyncio.wait_for(acks.get(), WAIT)).renl_id for _ in range(3)]) == [
            "2:1",
            "3:1",
            "poison:1",
        ]

        [policy] = definitions(name)["policies"]
        dead = policy["definition"]["dead-letter-exchange"]
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(dead, passive=True)
            bodies: list[bytes] = []
            async with asyncio.timeout(WAIT), queue.iterator(no_ack=True) as messages:
                async for message in messages:
                    bodies.append(message.body)
                    if len(bodies) == 2:
                        break
            assert Notification.from_json(next(b for b in bodies if b"notification" in b)).ref == ref
            dead_acks, _errors = acks_from_json(next(b for b in bodies if b'"acks"' in b))
            assert [a.renl_id for a in dead_acks] == ["2:1", "poison:1", "3:1"]
    finally:
        await bus.close()
        rabbitmqctl("delete_vhost", vhost)
        rabbitmqctl("delete_user", user)
