"""alarmd and notifyd started before their broker: they wait for it, then work; SIGTERM while waiting exits 0."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alarmd.queue import AlarmQueue
from common.payload import format_utc
from tests.payloads import sample_payload
from tests.processes import base_env, read_log, spawn, terminate, wait_for_log
from tests.services import require_rabbitmq, unique_exchange
from tests.smtp_server import recording_smtp_server
from tests.tcp_proxy import TcpProxy

RABBITMQ = ("127.0.0.1", 5672)
WAITING = "is waiting for the bus"
READY = {"alarmd": "alarmd dispatching as", "notifyd": "notifyd ready"}
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_bus() -> str:
    """A RabbitMQ URL on a port where nothing listens (yet)."""
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/?exchange={unique_exchange()}"


async def test_services_started_before_the_broker_wait_for_it_and_then_deliver(
    clean_postgres_url: str, tmp_path: Path
) -> None:
    require_rabbitmq()
    port = free_port()
    proxy = TcpProxy(port, RABBITMQ)  # the broker, as seen by the services: not there until started
    async with recording_smtp_server() as smtp:
        env = base_env(
            database_url=clean_postgres_url,
            bus_url=f"amqp://guest:guest@127.0.0.1:{port}/?exchange={unique_exchange()}",
            smtp_url=smtp.url,
            smtp_allow_plaintext="true",
            alarmd_safety_poll="300",  # the alarm must come through the enqueue's NOTIFY, not the poll
        )
        logs = {name: tmp_path / f"{name}.log" for name in READY}
        processes = {name: spawn(name, env, logs[name]) for name in READY}
        try:
            for name in READY:
                await wait_for_log(logs[name], WAITING, WAIT)
            await proxy.start()
            for name, ready in READY.items():
                await wait_for_log(logs[name], ready, WAIT)
            assert {name: p.poll() for name, p in processes.items()} == {"alarmd": None, "notifyd": None}

            now = datetime.now(UTC)
            payload = sample_payload(calid="late-broker", trigger=format_utc(now + timedelta(seconds=1)))
            queue = AlarmQueue.from_url(clean_postgres_url)
            try:
                assert queue.enqueue([payload], now=now).added == 1
            finally:
                queue.close()
            [(message, recipients)] = await smtp.wait_for(1, 15.0)
            assert recipients == ["jac@example.com"]
            assert "calid=late-broker" in str(message["X-Alarm-Ref"])
        finally:
            codes = {name: await terminate(process) for name, process in processes.items()}
            await proxy.close()
    assert codes == {"alarmd": 0, "notifyd": 0}, {name: read_log(log)[-2000:] for name, log in logs.items()}


@pytest.mark.parametrize("command", ["alarmd", "notifyd"])
async def test_sigterm_while_waiting_for_the_broker_exits_0_at_once(
    command: str, clean_postgres_url: str, tmp_path: Path
) -> None:
    log = tmp_path / f"{command}.log"
    env = base_env(database_url=clean_postgres_url, bus_url=unreachable_bus())
    process = spawn(command, env, log)
    try:
        await wait_for_log(log, WAITING, WAIT)
        await wait_for_log(log, "retrying in 1.0s", WAIT)  # a second attempt: it keeps trying
    finally:
        began = time.monotonic()
        code = await terminate(process)
    assert code == 0, read_log(log)
    assert time.monotonic() - began < 5.0, "it should not wait out its backoff before exiting"
    assert "stopped before the bus answered" in read_log(log)
