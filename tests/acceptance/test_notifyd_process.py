"""notifyd as a real process: start-up checks, and no second email across a crash."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from common.ens import Bus, create_bus
from common.ens.envelope import Ack, AckStatus, Notification, Renl
from common.ens.reference import EventReference
from tests.payloads import sample_payload
from tests.processes import BIN, base_env, spawn
from tests.services import RABBITMQ_URL, fresh_postgres_database, require_rabbitmq, unique_exchange
from tests.smtp_server import recording_smtp_server

WAIT = 15.0


def run_notifyd(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "notifyd")], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_a_broken_template_override_stops_notifyd_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "templates" / "en").mkdir(parents=True)
    (tmp_path / "templates" / "en" / "event.subject.j2").write_text("Reminder: {{ title\n")
    env = base_env(
        database_url=f"sqlite:///{tmp_path / 'n.db'}",
        bus_url="amqp://guest:guest@127.0.0.1:9/",  # never reached: the templates are checked first
        notifyd_templates=str(tmp_path / "templates"),
    )
    result = run_notifyd(env)
    assert result.returncode == 2, result.stderr
    assert "en/event.subject.j2" in result.stderr


def test_an_unmigrated_database_stops_notifyd_with_the_fix() -> None:
    with fresh_postgres_database() as url:
        result = run_notifyd(base_env(database_url=url, bus_url="amqp://guest:guest@127.0.0.1:9/"))
    assert result.returncode == 1, result.stderr
    assert "alarmctl db upgrade" in result.stderr


@asynccontextmanager
async def acks_of(bus: Bus) -> AsyncIterator[asyncio.Queue[Ack]]:
    received: asyncio.Queue[Ack] = asyncio.Queue()

    async def on_ack(ack: Ack) -> None:
        received.put_nowait(ack)

    subscription = await bus.consume_acks("alarmd", on_ack)
    try:
        yield received
    finally:
        await subscription.cancel()


async def test_a_notification_delivered_again_after_a_crash_is_not_mailed_twice(
    postgres_url: str, tmp_path: Path
) -> None:
    require_rabbitmq()
    bus_url = f"{RABBITMQ_URL}?exchange={unique_exchange()}"
    log = tmp_path / "notifyd.log"
    payload = sample_payload(calid="crash", uid="crash-1").to_dict()
    ref = EventReference.alarm("event", "crash", "crash-1", "", "1")
    async with recording_smtp_server() as smtp:
        env = base_env(
            database_url=postgres_url,
            bus_url=bus_url,
            smtp_url=smtp.url,
            smtp_allow_plaintext="true",
        )
        bus = create_bus(bus_url)
        await bus.start()
        first = spawn("notifyd", env, log)
        second: subprocess.Popen[bytes] | None = None
        try:
            async with acks_of(bus) as acks:
                await asyncio.sleep(2.0)  # subscribed (the queue is durable, so this is only for speed)
                await bus.publish(Notification(ref=ref, payload=payload, renl=Renl("alarmd", "1:1", 60.0)))
                ack = await asyncio.wait_for(acks.get(), WAIT)
                assert (ack.renl_id, ack.status) == ("1:1", AckStatus.DELIVERED), log.read_text()
                await smtp.wait_for(1, WAIT)

                first.send_signal(signal.SIGKILL)  # as if the ack had been lost with the process
                await asyncio.to_thread(first.wait, 10)
                second = spawn("notifyd", env, log)
                await bus.publish(Notification(ref=ref, payload=payload, renl=Renl("alarmd", "1:2", 60.0)))
                # RabbitMQ may also redeliver 1:1 itself (killed before its broker ack): a duplicate too.
                later = [await asyncio.wait_for(acks.get(), WAIT)]
                while later[-1].renl_id != "1:2":
                    later.append(await asyncio.wait_for(acks.get(), WAIT))
                assert {a.renl_id for a in later} <= {"1:1", "1:2"}
                for again in later:
                    assert again.status is AckStatus.DELIVERED, log.read_text()
                    assert again.reason.startswith("duplicate: already mailed at"), again
                assert len(smtp.messages) == 1
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(p.wait, 20) for p in (first, second) if p is not None]
            await bus.close()
        assert codes[-1] == 0, log.read_text()
