"""The standard deployment under real faults: notifyd killed with SIGKILL, RabbitMQ restarted.

The real ``alarmd`` and ``notifyd`` run as processes (PostgreSQL + RabbitMQ, through
:class:`tests.benchmarks.deployment.Deployment`) against an SMTP sink in a process of its
own that records the ``X-Alarm-Ref`` and ``X-Alarm-Trigger`` of every message it accepts.
A stream of alarms due over :data:`STREAM_SECONDS` seconds is enqueued with ``put``; the
fault is injected while the alarms of its fourth second are being published and mailed;
then every instance must reach the sink.

Shorter timeouts (:data:`SETTINGS`) keep a lost ack from costing a minute; nothing else
differs from the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.benchmarks.deployment import (
    Alarm,
    Deployment,
    Tally,
    TomlValue,
    put_all,
    put_rate,
    sleep_until,
    tail,
    tally,
    wait_for_messages,
    wait_until_drained,
    whole_second_after,
)
from tests.benchmarks.sink import SmtpSink
from tests.services import reachable, require_postgres, require_rabbitmq

CONCURRENCY = 10  # notifyd.concurrency: notifications one notifyd has in hand (and its broker prefetch)
SETTINGS: dict[str, dict[str, TomlValue]] = {
    "smtp": {"timeout": 5.0, "deadline": 5.0},
    # A lost ack is republished after 20 s, not 60. The lease must outlast smtp.deadline (the
    # settings refuse less) and a publish that waited for the broker to come back (up to 10 s).
    "alarmd": {"ack_timeout": 20.0, "retry_base": 2.0},
    "notifyd": {"concurrency": CONCURRENCY},
}
STREAM_ALARMS = 300
STREAM_SECONDS = 10  # the stream's triggers are the whole seconds of this span
PER_SECOND = STREAM_ALARMS // STREAM_SECONDS
FAULT_SECOND = 3  # the fault comes just after this second of the stream is due (the first is 0)...
FAULT_DELAY = 0.04  # ... by this long: its alarms are being published and mailed then
AFTER_ALARMS = 30  # enqueued once the broker is back
WAIT = 45.0  # seconds, at most, for what a step waits for
# Seconds from the broker's return to the last reminder: aio-pika reconnects within 5 s, the
# backlog takes 2 or 3 more. A dispatcher stuck in its 30 s bus backoff would take longer.
RECOVERY = 20.0
PATIENCE = 30.0  # seconds without a new reminder after which a wait gives up
QUIET = 1.0  # seconds the sink must stay quiet after the last reminder before the tally
RABBITMQ_PORT = 5672
RABBITMQCTL_TIMEOUT = 60.0


@contextlib.asynccontextmanager
async def standard_deployment(tmp_path: Path) -> AsyncIterator[tuple[Deployment, SmtpSink]]:
    """The running standard deployment with :data:`SETTINGS`, and its recording sink."""
    require_postgres()
    require_rabbitmq()
    with SmtpSink(record=True) as sink:
        async with Deployment("standard", tmp_path, sink.url, overrides=SETTINGS) as deployment:
            await deployment.start()
            yield deployment, sink


async def enqueue_stream(deployment: Deployment, calid: str) -> list[Alarm]:
    """Put :data:`STREAM_ALARMS` alarms, as many due at each of :data:`STREAM_SECONDS` whole
    seconds, the first far enough ahead for the enqueue to finish before it."""
    rate = await asyncio.to_thread(put_rate, deployment.queue)
    first = whole_second_after(STREAM_ALARMS / rate * 2 + 2)
    alarms = [
        Alarm(calid, f"{calid}-{i:04d}", first + timedelta(seconds=i // PER_SECOND)) for i in range(STREAM_ALARMS)
    ]
    await asyncio.to_thread(put_all, deployment.queue, alarms)
    return alarms


def received(sink: SmtpSink, alarms: Sequence[Alarm]) -> Tally:
    return tally(alarms, sink.records())


async def wait_for_reminders(
    deployment: Deployment, sink: SmtpSink, alarms: Sequence[Alarm], target: int, *, within: float = WAIT
) -> Tally:
    """Wait until ``target`` distinct instances of ``alarms`` reached the sink (a process that
    exits fails the test at once); fail, with the facts, after ``within`` seconds."""
    reached = await wait_for_messages(
        lambda: received(sink, alarms).delivered,
        target,
        patience=PATIENCE,
        deadline=time.time() + within,
        check=deployment.check_running,
    )
    counted = received(sink, alarms)
    assert reached, f"{counted.delivered} of {target} reminders within {within:g}s\n{facts(deployment, counted)}"
    return counted


async def mid_stream(deployment: Deployment, sink: SmtpSink, alarms: Sequence[Alarm]) -> None:
    """Return when the fault is due: every reminder of the stream's first :data:`FAULT_SECOND`
    seconds has arrived, and the alarms of the next second are being published and mailed
    (or, on a slow machine, at once: the reminders of 6 more seconds are to come anyway)."""
    await wait_for_reminders(deployment, sink, alarms, FAULT_SECOND * PER_SECOND)
    await sleep_until(alarms[FAULT_SECOND * PER_SECOND].trigger + timedelta(seconds=FAULT_DELAY))


async def settle(deployment: Deployment, sink: SmtpSink, alarms: Sequence[Alarm]) -> Tally:
    """Once every reminder arrived: wait until alarmd has applied every ack (no instance
    pending or in flight) and the sink has been quiet for a second; the final tally."""
    drained = await wait_until_drained(deployment, WAIT)
    assert drained is not None, f"instances still live after {WAIT:g}s\n{facts(deployment, received(sink, alarms))}"
    await quiet(sink, QUIET)
    return received(sink, alarms)


async def quiet(sink: SmtpSink, seconds: float) -> None:
    """Wait until the sink has accepted nothing for ``seconds`` (at most :data:`WAIT`): a late
    duplicate would still be counted."""
    deadline = time.monotonic() + WAIT
    count, since = sink.messages, time.monotonic()
    while time.monotonic() - since < seconds and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if sink.messages != count:
            count, since = sink.messages, time.monotonic()


def facts(deployment: Deployment, counted: Tally) -> str:
    """What a failing assertion shows: the tally, the queue, and the end of each log."""
    states = deployment.queue.stats(now=datetime.now(UTC))["states"]
    logs = "\n".join(
        f"--- {service.name} (pid {service.process.pid}) log:\n{tail(service.log_text(), 25)}"
        for service in [*deployment.killed, *deployment.services]
    )
    return (
        f"expected {counted.expected}, delivered {counted.delivered}, lost {counted.lost} "
        f"{counted.lost_samples}, duplicated {counted.duplicated}, unexpected {counted.unexpected}; "
        f"queue states {states}\n{logs}"
    )


def assert_all_delivered_and_acked(deployment: Deployment, counted: Tally) -> None:
    assert counted.lost == 0, f"{counted.lost} reminders lost\n{facts(deployment, counted)}"
    assert counted.unexpected == 0, f"reminders nobody enqueued\n{facts(deployment, counted)}"
    states = deployment.queue.stats(now=datetime.now(UTC))["states"]
    assert (states["failed"], states["expired"]) == (0, 0), f"instances given up\n{facts(deployment, counted)}"


async def test_notifyd_killed_mid_stream_and_started_again_mails_every_reminder_while_alarmd_runs_on(
    tmp_path: Path,
) -> None:
    async with standard_deployment(tmp_path) as (deployment, sink):
        alarmd = deployment.service("alarmd").process
        alarms = await enqueue_stream(deployment, "kill-notifyd")
        await mid_stream(deployment, sink, alarms)

        code = await deployment.kill("notifyd")  # mid-stream, with notifications in hand
        before = received(sink, alarms)
        assert code == -9
        await asyncio.sleep(1.0)  # the stream goes on: notifications wait in the pool's durable queue
        await deployment.restart("notifyd")

        await wait_for_reminders(deployment, sink, alarms, STREAM_ALARMS)
        counted = await settle(deployment, sink, alarms)
        assert_all_delivered_and_acked(deployment, counted)
        # Only a notification the killed notifyd had in hand can be mailed twice: its SMTP
        # server had accepted it, its delivery record was not written yet (README, "Exactly
        # once, as far as a crash allows"). It holds at most notifyd.concurrency of them.
        assert counted.duplicated <= CONCURRENCY, (
            f"{counted.duplicated} reminders mailed twice, more than the {CONCURRENCY} notifyd had in hand "
            f"(killed after {before.delivered} of {STREAM_ALARMS})\n{facts(deployment, counted)}"
        )
        assert alarmd.poll() is None, f"alarmd exited\n{facts(deployment, counted)}"
        assert deployment.service("alarmd").process is alarmd  # neither restarted nor touched
        print(  # shown with pytest -s: what the crash cost
            f"notifyd killed after {before.delivered}/{STREAM_ALARMS} reminders; "
            f"{counted.duplicated} mailed twice (bound {CONCURRENCY})"
        )


def require_rabbitmqctl() -> str:
    """The path of ``rabbitmqctl``; skip (fail under CI) when it is missing."""
    path = shutil.which("rabbitmqctl")
    if path is None:
        message = "rabbitmqctl is not installed: it restarts the broker under the services"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl ARGS``; raise with its output when it fails or hangs."""
    command = [require_rabbitmqctl(), *args]
    try:
        result = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=RABBITMQCTL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} did not finish within {RABBITMQCTL_TIMEOUT:g}s") from None
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stdout}{result.stderr}")


async def start_rabbitmq() -> None:
    """Start the broker's application and wait until it has started and answers on its port."""
    await rabbitmqctl("start_app")
    await rabbitmqctl("await_startup")
    deadline = time.monotonic() + RABBITMQCTL_TIMEOUT
    while not reachable("127.0.0.1", RABBITMQ_PORT):
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ started but does not answer on port {RABBITMQ_PORT}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def rabbitmq_stopped() -> AsyncIterator[None]:
    """``rabbitmqctl stop_app`` for the block; started again after it, whatever happened,
    so that the tests after this one have their broker."""
    await rabbitmqctl("await_startup")  # a broker we can talk to, before stopping it
    try:
        await rabbitmqctl("stop_app")
        yield
    finally:
        await start_rabbitmq()


async def test_a_rabbitmq_restart_mid_stream_loses_no_reminder_and_both_services_recover_by_themselves(
    tmp_path: Path,
) -> None:
    require_rabbitmqctl()
    async with standard_deployment(tmp_path) as (deployment, sink):
        processes = {service.name: service.process for service in deployment.services}
        alarms = await enqueue_stream(deployment, "broker-restart")
        await mid_stream(deployment, sink, alarms)

        async with rabbitmq_stopped():
            before = received(sink, alarms)
            await asyncio.sleep(2.0)
            deployment.check_running()  # no broker: both services wait for it, neither exits
        back = datetime.now(UTC)

        # Enqueued after the broker came back: delivered only if alarmd publishes again and
        # notifyd consumes again (and alarmd applies their acks), on connections they restored.
        later = [Alarm("broker-back", f"broker-back-{i:03d}", whole_second_after(2)) for i in range(AFTER_ALARMS)]
        await asyncio.to_thread(put_all, deployment.queue, later)
        everything = [*alarms, *later]
        await wait_for_reminders(deployment, sink, everything, len(everything), within=RECOVERY)
        counted = await settle(deployment, sink, everything)
        assert_all_delivered_and_acked(deployment, counted)
        # notifyd did not crash: every reminder it mailed is in its delivery log before it
        # is acked, so a notification the broker or alarmd sends again is not mailed again.
        assert counted.duplicated == 0, f"{counted.duplicated} reminders mailed twice\n{facts(deployment, counted)}"
        assert {service.name: service.process for service in deployment.services} == processes, "restarted"
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited\n{facts(deployment, counted)}"
        print(
            f"RabbitMQ stopped after {before.delivered}/{STREAM_ALARMS} reminders; everything delivered "
            f"{(max(r.at for r in sink.records()) - back.timestamp()):.1f}s after it was back"
        )
