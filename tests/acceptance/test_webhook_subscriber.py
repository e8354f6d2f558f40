"""deploy/examples/webhook_subscriber.py as a real process on the real RabbitMQ, posting to a
local HTTP server, with acks read back the way alarmd reads them."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aio_pika

from common.ens import Ack, AckStatus, Bus, EventReference, Notification, Renl, standard_properties
from common.ens.amqp import AmqpBus, queue_name
from common.payload import AlarmPayload
from tests.buses import delete_from_broker, open_buses
from tests.payloads import sample_payload
from tests.processes import base_env, read_log, spawn, terminate, wait_for_log
from tests.services import RABBITMQ_URL
from tests.waiting import eventually

SCRIPT = Path(__file__).parents[2] / "deploy" / "examples" / "webhook_subscriber.py"
WAIT = 10.0


class Hook:
    """An HTTP server that answers each POST with the next scripted status, and keeps the bodies."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.posted: list[tuple[str, str, Any]] = []  # (path, content type, JSON body)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posted.append((self.path, self.headers["Content-Type"], json.loads(body)))
                status = hook.statuses.pop(0)
                text = {500: b"database unavailable", 400: b"unknown channel #reminders"}.get(status, b"")
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/reminders"


@contextmanager
def serving(hook: Hook) -> Iterator[Hook]:
    thread = threading.Thread(target=hook.server.serve_forever, name="hook", daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        thread.join(5)


@asynccontextmanager
async def acks_at(bus: Bus, ack_to: str) -> AsyncIterator[asyncio.Queue[Ack]]:
    """The acks sent to ``ack_to``, as alarmd's dispatcher consumes them (before it publishes)."""
    received: asyncio.Queue[Ack] = asyncio.Queue()

    async def on_ack(ack: Ack) -> None:
        received.put_nowait(ack)

    subscription = await bus.consume_acks(ack_to, on_ack)
    try:
        yield received
    finally:
        await subscription.cancel()


async def messages_in(queues: set[str]) -> dict[str, int]:
    """How many messages each of ``queues`` holds (a missing queue fails the test)."""
    connection = await aio_pika.connect(RABBITMQ_URL)
    try:
        channel = await connection.channel()
        counts: dict[str, int] = {}
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            counts[name] = queue.declaration_result.message_count or 0
        return counts
    finally:
        await connection.close()


def as_alarmd_publishes(payload: AlarmPayload, renl_id: str) -> Notification:
    """A notification built the way alarmd's dispatcher builds one (RENL to ``alarmd``)."""
    ref = EventReference.alarm(payload.component, payload.calid, payload.uid, payload.rid, payload.aid)
    properties = {**standard_properties("alarmd", datetime.now(UTC)), "publication": 1}
    return Notification(ref, payload.to_dict(), properties, Renl("alarmd", renl_id, 60.0))


async def test_the_webhook_subscriber_posts_each_alarm_and_acks_its_outcome(tmp_path: Path) -> None:
    log = tmp_path / "webhook.log"
    meeting = sample_payload(recipients=["bob@example.com"])
    series = sample_payload(uid="standup", rid="20261124T083000Z", summary="Stand-up", start="2026-11-24T08:30:00Z")
    taxes = sample_payload(
        component="todo", uid="taxes", summary="File taxes", start="", trigger="2026-11-26T16:00:00Z"
    )
    async with open_buses("amqp") as buses:
        pools = {queue_name(f"{buses.exchange}.pool.webhook.ics.{kind}alarm") for kind in ("event", "todo")}
        bus = await buses.new()
        process = None
        try:
            with serving(Hook(200, 500, 200, 400)) as hook:
                async with acks_at(bus, "alarmd") as acks:
                    process = spawn("python", base_env(), log, str(SCRIPT), "--bus", buses.url, "--url", hook.url)
                    await wait_for_log(log, "subscribed as pool 'webhook'", WAIT)
                    assert await messages_in(pools) == {name: 0 for name in pools}  # durable, shared by the pool

                    async def outcome(notification: Notification) -> tuple[str, AckStatus, str]:
                        await bus.publish(notification)  # one at a time: the server answers in order
                        ack = await asyncio.wait_for(acks.get(), WAIT)
                        return ack.renl_id, ack.status, ack.reason

                    assert await outcome(as_alarmd_publishes(meeting, "1:1")) == (
                        "1:1",
                        AckStatus.DELIVERED,
                        "HTTP 200",
                    )
                    assert await outcome(as_alarmd_publishes(series, "2:1")) == (
                        "2:1",
                        AckStatus.RETRY,
                        "HTTP 500 Internal Server Error: database unavailable",
                    )
                    # alarmd publishes a retried alarm again, under its next attempt
                    assert await outcome(as_alarmd_publishes(series, "2:2")) == ("2:2", AckStatus.DELIVERED, "HTTP 200")
                    assert await outcome(as_alarmd_publishes(taxes, "3:1")) == (
                        "3:1",
                        AckStatus.FAILED,
                        "HTTP 400 Bad Request: unknown channel #reminders",
                    )

                    # Bad messages: acked failed with the reason, nothing posted, the subscriber lives on.
                    bad = as_alarmd_publishes(meeting, "4:1")
                    bad = Notification(bad.ref, {**bad.payload, "recipients": "bob@example.com"}, renl=bad.renl)
                    renl_id, status, reason = await outcome(bad)
                    assert (renl_id, status) == ("4:1", AckStatus.FAILED)
                    assert reason == "invalid payload: payload 'recipients' must be a list of strings"
                    assert isinstance(bus, AmqpBus)
                    garbage = {
                        "v": 1,
                        "type": "notification",
                        "renl": {"ack_to": "alarmd", "renl_id": "5:1", "timeout": 60},
                    }
                    await bus.publish_raw("ics.eventalarm", json.dumps(garbage).encode())  # no id, ref, payload
                    ack = await asyncio.wait_for(acks.get(), WAIT)
                    assert (ack.renl_id, ack.status) == ("5:1", AckStatus.FAILED)
                    assert ack.reason.startswith("invalid notification:"), ack.reason
                    assert ack.properties == {}

                    assert await terminate(process) == 0, read_log(log)
            assert [(path, kind) for path, kind, _body in hook.posted] == [("/hooks/reminders", "application/json")] * 4
            assert [body for _path, _kind, body in hook.posted] == [
                {
                    "ref": "enp:///ics/eventalarm?calid=jac&uid=u1&rid=&aid=1",
                    "summary": "Team meeting",
                    "trigger": "2026-11-23T09:45:00Z",
                    "start": "2026-11-23T10:00:00Z",
                    "recipients": ["bob@example.com"],
                },
                *[
                    {
                        "ref": "enp:///ics/eventalarm?calid=jac&uid=standup&rid=20261124T083000Z&aid=1",
                        "summary": "Stand-up",
                        "trigger": "2026-11-23T09:45:00Z",
                        "start": "2026-11-24T08:30:00Z",
                        "recipients": [],
                    }
                ]
                * 2,
                {
                    "ref": "enp:///ics/todoalarm?calid=jac&uid=taxes&rid=&aid=1",
                    "summary": "File taxes",
                    "trigger": "2026-11-26T16:00:00Z",
                    "start": "",
                    "recipients": [],
                },
            ]
            text = read_log(log)
            assert "Traceback" not in text, text
            assert text.rstrip().endswith("stopped"), text
        finally:
            if process is not None and process.poll() is None:
                await terminate(process)
            await delete_from_broker(buses.exchange, pools)  # the pool's durable queues; the exchange goes again after


async def test_an_unreachable_webhook_is_acked_retry(tmp_path: Path) -> None:
    log = tmp_path / "webhook.log"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    async with open_buses("amqp") as buses:
        pools = {queue_name(f"{buses.exchange}.pool.sms.ics.{kind}alarm") for kind in ("event", "todo")}
        bus = await buses.new()
        process = None
        try:
            async with acks_at(bus, "alarmd") as acks:
                args = ("--bus", buses.url, "--url", closed, "--pool", "sms")
                process = spawn("python", base_env(), log, str(SCRIPT), *args)
                await wait_for_log(log, "subscribed as pool 'sms'", WAIT)
                await bus.publish(as_alarmd_publishes(sample_payload(), "1:1"))
                ack = await asyncio.wait_for(acks.get(), WAIT)
                assert (ack.renl_id, ack.status) == ("1:1", AckStatus.RETRY)
                assert ack.reason.startswith(f"cannot POST to {closed}: "), ack.reason
                assert ack.properties["process"] == "webhook"
                assert await terminate(process) == 0, read_log(log)
        finally:
            if process is not None and process.poll() is None:
                await terminate(process)
            await delete_from_broker(buses.exchange, pools)


async def test_with_no_ack_it_posts_and_leaves_the_verdict_to_notifyd(tmp_path: Path) -> None:
    log = tmp_path / "webhook.log"
    async with open_buses("amqp") as buses:
        pools = {queue_name(f"{buses.exchange}.pool.chat.ics.{kind}alarm") for kind in ("event", "todo")}
        bus = await buses.new()
        process = None
        try:
            with serving(Hook(200)) as hook:
                async with acks_at(bus, "alarmd") as acks:
                    args = ("--bus", buses.url, "--url", hook.url, "--pool", "chat", "--no-ack")
                    process = spawn("python", base_env(), log, str(SCRIPT), *args)
                    await wait_for_log(log, "subscribed as pool 'chat'", WAIT)
                    await bus.publish(as_alarmd_publishes(sample_payload(), "1:1"))
                    await eventually(lambda: len(hook.posted) == 1, WAIT, "the POST")
                    await wait_for_log(log, "-> delivered HTTP 200", WAIT)
                    await asyncio.sleep(0.5)  # an ack would be back by now
                    assert acks.empty()
                    assert await terminate(process) == 0, read_log(log)
        finally:
            if process is not None and process.poll() is None:
                await terminate(process)
            await delete_from_broker(buses.exchange, pools)
