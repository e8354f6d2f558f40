"""Shared code of the dispatch benchmarks: real deployments, enqueuing, and tallying what arrived.

Used by :mod:`tests.benchmarks.dispatch_timeliness` and :mod:`tests.benchmarks.dispatch_burst`
(it is not a command itself). A :class:`Deployment` is one of the two deployments of the
README, run as the real commands with a configuration file, against an SMTP sink:

- ``embedded``: a fresh SQLite file in a work directory, ``memory://`` bus, one process
  ``alarmd --with-notifier --config F``;
- ``standard``: a fresh PostgreSQL database (``calalarm_bench_<hex>``, created on
  127.0.0.1:5432, migrated, dropped at the end), RabbitMQ with an exchange of its own
  (``?exchange=ens-bench-<hex>``; the exchange and its queues are deleted at the end),
  and two processes, ``notifyd --config F`` and ``alarmd --config F``.

The configuration file holds only what the deployment needs (database, bus, the sink's
``smtp://`` URL with ``allow_plaintext = true``, ``notifyd.allowed_domains``) and the
``overrides`` given (``{"alarmd": {"ack_timeout": 20.0}}``: the fault-recovery tests
shorten timeouts); every other setting is the product's default. Each process logs to a
file in the work directory; ``stop`` sends SIGTERM (SIGKILL after a timeout), also when
the benchmark fails. ``kill`` sends one process SIGKILL (a crash) and ``restart`` starts
it again with the same command, appending to the same log; ``terminate`` stops one
process with SIGTERM (a clean stop) and ``reap`` collects one that something else killed
(the fault scenarios' SMTP sink kills notifyd itself). ``alarmctl`` runs the admin command
with the deployment's configuration.

Alarms are enqueued with :meth:`AlarmQueue.put`, one calendar object (one event, one
DISPLAY alarm) per call, owned by :data:`OWNER` (or the alarm's own ``owner``) so that the
reminder has a recipient; :func:`enqueue_all` queues the same instances as single alarms
(:meth:`AlarmQueue.enqueue`, thousands per second, for streams of thousands).
SQLite has no cross-process wake-up (README, "Wake-ups"), so for ``embedded`` the alarms
are enqueued before alarmd starts; on PostgreSQL alarmd may run already (LISTEN/NOTIFY).

What arrived is judged from the sink's records (:class:`tests.benchmarks.sink.Received`):
lateness is the sink's receive time minus the message's ``X-Alarm-Trigger``; an instance
is (``X-Alarm-Ref``, ``X-Alarm-Trigger``), lost when never received, duplicated when
received more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import sqlalchemy as sa

from alarmd.queue import AlarmQueue
from common.db import alarm_history, deliveries, migrate
from common.ens.reference import EventReference
from common.payload import AlarmPayload
from tests.benchmarks.sink import Received
from tests.calendars import display, event
from tests.services import POSTGRES_ADMIN_URL, RABBITMQ_URL

KINDS = ("embedded", "standard")
TomlValue = str | int | float | bool | list[str]  # what a configuration override may be
BIN = Path(sys.executable).parent
OWNER = "bench@example.com"  # DISPLAY alarms go to the owner given at enqueue
SENDER = "Reminders <calalarm@example.com>"
ALLOWED_DOMAINS = ("example.com",)
ALARM_BEFORE = timedelta(minutes=15)  # the event starts this long after its alarm's trigger
READY_TIMEOUT = 60.0  # seconds for a process to log that it is ready
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL
POLL = 0.05  # seconds between checks of the sink's counter
LOG_SAMPLES = 5  # warning and error lines quoted per process
_LOG_LEVEL = re.compile(r" (WARNING|ERROR|CRITICAL) ")
_PUBLISHED_BATCH = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO alarmd\.dispatcher published batch ", re.MULTILINE
)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# What a process logs once it is ready (all of them, in any order).
READY = {
    ("embedded", "alarmd"): ("notifier subscribed as pool", "alarmd dispatching as"),
    ("standard", "alarmd"): ("alarmd dispatching as", "listening for enqueue notifications"),
    ("standard", "notifyd"): ("notifyd ready:",),
}


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One running command, its log file and its exit code once stopped."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    exit_code: int | None = None
    log_offset: int = 0  # bytes already in the log when this process started (a restart appends)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (Linux ``/proc``), None when unknown."""
        return process_cpu_seconds(self.process.pid)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def own_log_text(self) -> str:
        """What this process wrote to the log (without what an earlier process of the same name wrote)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode("utf-8", errors="replace")

    def check_running(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}:\n{tail(self.log_text())}")

    def log_report(self) -> dict[str, Any]:
        """Warning and error lines of the log: how many, and the first few."""
        lines = [line for line in self.log_text().splitlines() if _LOG_LEVEL.search(line)]
        levels = Counter(found.group(1) for line in lines if (found := _LOG_LEVEL.search(line)))
        return {
            "warnings": levels["WARNING"],
            "errors": levels["ERROR"] + levels["CRITICAL"],
            "samples": [line[:300] for line in lines[:LOG_SAMPLES]],
            "exit_code": self.exit_code,
        }


def spawn(name: str, command: list[str], env: dict[str, str], workdir: Path) -> Service:
    """Start ``command`` with its output appended to ``workdir/NAME.log``."""
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        offset = out.tell()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Service(name, process, log, log_offset=offset)


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, all CPUs (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in first[1:8]]  # user nice system idle iowait irq softirq
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _CLOCK_TICKS, sum(ticks) / _CLOCK_TICKS


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _toml(value: TomlValue) -> str:
    """``value`` as TOML: JSON's spelling of these strings, numbers, booleans and lists is TOML's too."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a setting")
    return json.dumps(value)


# --------------------------------------------------------------------------- deployment


class Deployment:
    """A deployment's database, bus, configuration file and processes (see the module doc).

    ``async with Deployment(kind, workdir, smtp_url) as deployment`` creates and migrates
    the database; :meth:`start` starts the processes and waits until they are ready;
    leaving the block stops them and drops what was created, whatever happened.
    ``overrides`` are settings written to the configuration file besides the deployment's
    own, by section (``{"smtp": {"deadline": 5.0}}``); they replace a key of the same name.
    """

    def __init__(
        self, kind: str, workdir: Path, smtp_url: str, *, overrides: Mapping[str, Mapping[str, TomlValue]] | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"deployment must be one of {KINDS}, not {kind!r}")
        self.kind = kind
        self.workdir = workdir
        self.smtp_url = smtp_url
        self.overrides = {section: dict(values) for section, values in (overrides or {}).items()}
        self.token = uuid.uuid4().hex[:10]
        self.exchange = f"ens-bench-{self.token}"
        if kind == "embedded":
            self.database_url = f"sqlite:///{workdir / 'calalarm.db'}"
            self.bus_url = "memory://"
            self._database_name = ""
        else:
            self._database_name = f"calalarm_bench_{self.token}"
            self.database_url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{self._database_name}"
            self.bus_url = f"{RABBITMQ_URL}?exchange={self.exchange}"
        self.config = workdir / "calalarm.toml"
        self.services: list[Service] = []  # the processes of the deployment, the current one of each name
        self.killed: list[Service] = []  # processes ended by kill(), reap() or terminate(), in order
        self._queue: AlarmQueue | None = None
        self.broker_leftover: dict[str, int] = {}

    @property
    def queue(self) -> AlarmQueue:
        """The alarm queue in the deployment's database, for enqueuing and inspecting."""
        if self._queue is None:
            raise RuntimeError("the deployment is not prepared")
        return self._queue

    def settings(self) -> dict[str, Any]:
        """What the configuration file sets (the rest is the product's defaults)."""
        return {
            "deployment": self.kind,
            "database": self.database_url.split("://", 1)[0],
            "bus": self.bus_url.split("://", 1)[0] + ("" if self.kind == "embedded" else f" ?exchange={self.exchange}"),
            "processes": ["alarmd --with-notifier"] if self.kind == "embedded" else ["alarmd", "notifyd"],
            "smtp_allow_plaintext": True,
            "notifyd_allowed_domains": list(ALLOWED_DOMAINS),
            "owner": OWNER,
            **({"overrides": self.overrides} if self.overrides else {}),
        }

    async def __aenter__(self) -> Deployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(self._prepare)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def _prepare(self) -> None:
        if self._database_name:
            _as_admin(f'CREATE DATABASE "{self._database_name}"')
        migrate.upgrade(self.database_url)
        self._queue = AlarmQueue.from_url(self.database_url)
        self.config.write_text(self._config_text(), encoding="utf-8")

    def _config_text(self) -> str:
        sections: dict[str, dict[str, TomlValue]] = {
            "database": {"url": self.database_url},
            "bus": {"url": self.bus_url},
            "smtp": {"url": self.smtp_url, "allow_plaintext": True, "from": SENDER},
            "notifyd": {"allowed_domains": list(ALLOWED_DOMAINS)},
        }
        for section, values in self.overrides.items():
            sections.setdefault(section, {}).update(values)
        tables = [
            f"[{section}]\n" + "".join(f"{key} = {_toml(value)}\n" for key, value in values.items())
            for section, values in sections.items()
        ]
        return f"# written by tests.benchmarks.deployment ({self.kind})\n" + "\n".join(tables)

    def _commands(self) -> dict[str, list[str]]:
        """The command line of each process, in the order they start."""
        extra = {"alarmd": ["--with-notifier"]} if self.kind == "embedded" else {"notifyd": [], "alarmd": []}
        return {name: [str(BIN / name), "--config", str(self.config), *args] for name, args in extra.items()}

    @staticmethod
    def _env() -> dict[str, str]:
        return {key: value for key, value in os.environ.items() if not key.startswith("CALALARM_")}

    async def start(self) -> float:
        """Start the processes and wait until each has logged that it is ready; return how long that took."""
        began = time.monotonic()
        env = self._env()
        for name, command in self._commands().items():
            self.services.append(spawn(name, command, env, self.workdir))
        for service in self.services:
            await self._wait_ready(service)
        return time.monotonic() - began

    def service(self, name: str) -> Service:
        """The current process named ``name`` (``alarmd``, ``notifyd``)."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(f"no process {name!r} in this {self.kind} deployment")

    async def kill(self, name: str) -> int:
        """SIGKILL the process ``name`` (a crash: no clean-up of any kind), wait for it to end and
        return its exit code (``-9``); it stays out of the deployment until :meth:`restart`."""
        service = self.service(name)
        service.process.send_signal(signal.SIGKILL)
        service.exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT)
        self.services.remove(service)
        self.killed.append(service)
        return service.exit_code

    async def reap(self, name: str, timeout: float = STOP_TIMEOUT) -> int:  # noqa: ASYNC109 - like kill()
        """Wait for the process ``name``, ended by someone else (a signal from outside), to be
        gone and return its exit code (``-9`` after SIGKILL); it stays out until :meth:`restart`.
        Raises :class:`subprocess.TimeoutExpired` when it is still running after ``timeout``."""
        service = self.service(name)
        service.exit_code = await asyncio.to_thread(service.process.wait, timeout)
        self.services.remove(service)
        self.killed.append(service)
        return service.exit_code

    async def terminate(self, name: str) -> int:
        """Stop the process ``name`` with SIGTERM (SIGKILL after :data:`STOP_TIMEOUT`), as
        ``systemctl stop`` would, and return its exit code; it stays out until :meth:`restart`."""
        service = self.service(name)
        service.process.send_signal(signal.SIGTERM)
        try:
            service.exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT)
        self.services.remove(service)
        self.killed.append(service)
        return service.exit_code

    def alarmctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``alarmctl --config F ARGS`` (the real command) and return what it did."""
        command = [str(BIN / "alarmctl"), "--config", str(self.config), *args]
        return subprocess.run(command, env=self._env(), capture_output=True, text=True, timeout=timeout, check=False)

    async def restart(self, name: str) -> float:
        """Start ``name`` again (after :meth:`kill`), with the same command and log file; wait until
        it is ready and return how long that took."""
        if any(service.name == name for service in self.services):
            raise RuntimeError(f"{name} is running: kill it first")
        began = time.monotonic()
        service = spawn(name, self._commands()[name], self._env(), self.workdir)
        self.services.append(service)
        await self._wait_ready(service)
        return time.monotonic() - began

    async def _wait_ready(self, service: Service) -> None:
        markers = READY[(self.kind, service.name)]
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            service.check_running()
            text = service.own_log_text()
            if all(marker in text for marker in markers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.name} not ready after {READY_TIMEOUT:g}s:\n{tail(text)}")
            await asyncio.sleep(0.1)

    def check_running(self) -> None:
        for service in self.services:
            service.check_running()

    def cpu_seconds(self) -> dict[str, float | None]:
        return {service.name: service.cpu_seconds() for service in self.services}

    async def stop(self) -> None:
        """SIGTERM each process (SIGKILL after :data:`STOP_TIMEOUT`) and record its exit code."""
        for service in self.services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.services:
            try:
                service.exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT)

    async def close(self) -> None:
        """Stop the processes, then drop the database and the broker's exchange and queues."""
        try:
            await self.stop()
        finally:
            if self._queue is not None:
                self._queue.close()
            if self.kind == "standard":
                with contextlib.suppress(Exception):
                    await self._delete_broker_objects()
                if self._database_name:
                    await asyncio.to_thread(self._drop_database)

    def _drop_database(self) -> None:
        _as_admin(f'DROP DATABASE IF EXISTS "{self._database_name}" WITH (FORCE)')

    async def _delete_broker_objects(self) -> None:
        """Delete this deployment's exchange and durable queues (noting messages left in them)."""
        names = [
            f"{self.exchange}.pool.notifyd.ics.eventalarm",
            f"{self.exchange}.pool.notifyd.ics.todoalarm",
            f"{self.exchange}.renl.alarmd",
        ]
        connection = await aio_pika.connect(RABBITMQ_URL, timeout=10)
        try:
            for name in names:
                channel = await connection.channel()
                try:
                    declared = await channel.declare_queue(name, passive=True)
                    self.broker_leftover[name.removeprefix(self.exchange + ".")] = int(
                        declared.declaration_result.message_count or 0
                    )
                    await channel.queue_delete(name)
                except aio_pika.exceptions.ChannelClosed:
                    pass  # never declared
                with contextlib.suppress(Exception):
                    await channel.close()
            channel = await connection.channel()
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()

    def log_report(self) -> dict[str, Any]:
        return {service.name: service.log_report() for service in self.services}

    def queue_report(self, since: datetime) -> dict[str, Any]:
        """The queue after a run: instances by state, republications, acks applied, delivery records,
        and when (seconds after ``since``) the last publication and the last delivered ack were recorded."""
        queue = self.queue
        stats = queue.stats(now=datetime.now(UTC))
        with queue.engine.connect() as conn:
            events: dict[str, int] = dict(
                conn.execute(
                    sa.select(alarm_history.c.event, sa.func.count())
                    .where(alarm_history.c.at >= since)
                    .group_by(alarm_history.c.event)
                ).all()
            )
            republished = conn.execute(
                sa.select(sa.func.count())
                .select_from(alarm_history)
                .where(alarm_history.c.event == "published", alarm_history.c.attempt >= 2)
            ).scalar_one()
            last: dict[str, datetime] = dict(
                conn.execute(
                    sa.select(alarm_history.c.event, sa.func.max(alarm_history.c.at))
                    .where(alarm_history.c.event.in_(("published", "delivered")), alarm_history.c.at >= since)
                    .group_by(alarm_history.c.event)
                ).all()
            )
            records = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar_one()

        def after(at: datetime | None) -> float | None:
            return None if at is None else round((_aware(at) - since).total_seconds(), 3)

        return {
            "states": stats["states"],
            "history_events": {str(name): int(count) for name, count in events.items()},
            "republished": int(republished),
            "delivery_records": int(records),
            "last_published_after_s": after(last.get("published")),
            "last_delivered_ack_after_s": after(last.get("delivered")),
        }

    def claim_lateness(self, since: datetime) -> list[float]:
        """Seconds from trigger to first claim of each instance claimed since ``since``
        (``alarm_history``: a claim records its ``published`` event at the claim's ``now``)."""
        with self.queue.engine.connect() as conn:
            rows = conn.execute(
                sa.select(alarm_history.c.trigger_at, alarm_history.c.at).where(
                    alarm_history.c.event == "published", alarm_history.c.attempt == 1, alarm_history.c.at >= since
                )
            ).all()
        return [(_aware(at) - _aware(trigger)).total_seconds() for trigger, at in rows]

    def last_publish_after(self, due: datetime) -> float | None:
        """Seconds from ``due`` to alarmd's last ``published batch`` line (logged once the broker
        confirmed every publish of a claimed batch; log times have millisecond resolution), or
        None without one. Each instance's own ``published`` line is DEBUG."""
        last: float | None = None
        for service in self.services:
            if service.name != "alarmd":
                continue
            for match in _PUBLISHED_BATCH.finditer(service.log_text()):
                stamp = datetime.strptime(match.group("at"), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time
                last = stamp if last is None else max(last, stamp)
        return None if last is None else last - due.timestamp()

    def live_instances(self) -> int:
        states = self.queue.stats(now=datetime.now(UTC))["states"]
        return int(states["pending"]) + int(states["inflight"])


# --------------------------------------------------------------------------- enqueue


@dataclass(frozen=True)
class Alarm:
    """One instance to enqueue: an event of its own with one DISPLAY alarm firing at ``trigger``,
    reminding ``owner``."""

    calid: str
    uid: str
    trigger: datetime
    owner: str = OWNER

    def calendar(self) -> str:
        return event(self.uid, self.trigger + ALARM_BEFORE, display("-PT15M"), summary=f"Benchmark {self.uid}")

    def payload(self) -> AlarmPayload:
        """The same instance as :meth:`calendar` plans, as a single alarm for :func:`enqueue_all`."""
        if self.trigger.microsecond:
            raise ValueError(f"{self.uid}: trigger {self.trigger} has fractions of a second (iCalendar has none)")
        return AlarmPayload(
            calid=self.calid,
            uid=self.uid,
            rid="",
            aid="1",
            component="event",
            action="DISPLAY",
            trigger=iso(self.trigger),
            summary=f"Benchmark {self.uid}",
            start=iso(self.trigger + ALARM_BEFORE),
            owner=self.owner,
        )

    @property
    def key(self) -> tuple[str, str]:
        """(X-Alarm-Ref, X-Alarm-Trigger) of its reminder."""
        ref = EventReference.alarm("event", self.calid, self.uid, "", "1")
        return str(ref), iso(self.trigger)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def whole_second_after(seconds: float) -> datetime:
    """The first whole second at least ``seconds`` from now (iCalendar triggers have no fractions)."""
    return datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)


def put(queue: AlarmQueue, alarm: Alarm) -> None:
    """Enqueue one alarm with :meth:`AlarmQueue.put`; fail loudly when it was not queued
    (a trigger already past when it arrived is silently skipped by ``put``)."""
    result = queue.put(alarm.calid, alarm.calendar(), now=datetime.now(UTC), owner=alarm.owner)
    if result.errors or result.added != 1:
        raise RuntimeError(f"enqueue of {alarm.uid} (trigger {iso(alarm.trigger)}): {result.to_json()}")


def put_all(queue: AlarmQueue, alarms: Iterable[Alarm]) -> float:
    """Enqueue every alarm, one ``put`` each; return the seconds it took."""
    began = time.perf_counter()
    for alarm in alarms:
        put(queue, alarm)
    return time.perf_counter() - began


def enqueue_all(queue: AlarmQueue, alarms: Sequence[Alarm]) -> float:
    """Queue every alarm as a single alarm (:meth:`AlarmQueue.enqueue`, in bulk); return the
    seconds it took. Fails loudly when one was not queued (already queued, or already past)."""
    began = time.perf_counter()
    result = queue.enqueue([alarm.payload() for alarm in alarms], now=datetime.now(UTC))
    if result.added != len(alarms):
        raise RuntimeError(f"enqueue of {len(alarms)} alarms: {result.to_json()}")
    return time.perf_counter() - began


def put_rate(queue: AlarmQueue, n: int = 50) -> float:
    """``put`` calls per second, measured with ``n`` alarms a day ahead that are removed after."""
    trigger = whole_second_after(86400)
    alarms = [Alarm("bench-calibration", f"calibration-{i:06d}", trigger) for i in range(n)]
    seconds = put_all(queue, alarms)
    now = datetime.now(UTC)
    for alarm in alarms:
        queue.remove(alarm.calid, alarm.uid, now=now)
    return n / seconds


# --------------------------------------------------------------------------- results


async def wait_for_messages(
    count: Callable[[], int],
    target: int,
    *,
    patience: float,
    deadline: float | None = None,
    check: Callable[[], None] | None = None,
) -> bool:
    """Wait until ``count()`` reaches ``target``; give up after ``patience`` seconds without
    progress or at ``deadline`` (``time.time()``). ``check()`` runs every second (to notice a
    process that died). Return whether the target was reached."""
    last_value, last_change, last_check = count(), time.monotonic(), time.monotonic()
    while True:
        value = count()
        if value >= target:
            return True
        now = time.monotonic()
        if value != last_value:
            last_value, last_change = value, now
        if now - last_change > patience or (deadline is not None and time.time() > deadline):
            return False
        if check is not None and now - last_check >= 1.0:
            check()
            last_check = now
        await asyncio.sleep(POLL)


async def wait_until_drained(deployment: Deployment, within: float) -> float | None:
    """Wait until no instance is pending or in flight (every ack applied); return the seconds
    waited, None when some were still live after ``within`` seconds."""
    began = time.monotonic()
    while time.monotonic() - began < within:
        if await asyncio.to_thread(deployment.live_instances) == 0:
            return round(time.monotonic() - began, 3)
        await asyncio.sleep(0.25)
    return None


@dataclass
class Tally:
    """What the sink received, against what was enqueued."""

    expected: int
    delivered: int  # distinct expected instances received
    lost: int  # expected, never received
    duplicated: int  # receptions beyond the first of an instance
    unexpected: int  # receptions of instances not enqueued by this run
    lateness: list[float] = field(default_factory=list)  # seconds, first reception of each instance
    first_at: float | None = None  # time.time() of the first and the last reception
    last_at: float | None = None
    by_trigger: dict[str, list[float]] = field(default_factory=dict)  # lateness grouped by trigger
    lost_samples: list[str] = field(default_factory=list)


def tally(alarms: Sequence[Alarm], records: Sequence[Received]) -> Tally:
    expected = {alarm.key: alarm.trigger.timestamp() for alarm in alarms}
    seen: Counter[tuple[str, str]] = Counter()
    lateness: list[float] = []
    by_trigger: dict[str, list[float]] = {}
    unexpected = 0
    mine = []
    for record in records:
        key = (record.ref, record.trigger)
        if key not in expected:
            unexpected += 1
            continue
        mine.append(record)
        seen[key] += 1
        if seen[key] == 1:
            late = record.at - expected[key]
            lateness.append(late)
            by_trigger.setdefault(record.trigger, []).append(late)
    lost = [key for key in expected if key not in seen]
    return Tally(
        expected=len(expected),
        delivered=len(seen),
        lost=len(lost),
        duplicated=sum(n - 1 for n in seen.values()),
        unexpected=unexpected,
        lateness=lateness,
        first_at=min((r.at for r in mine), default=None),
        last_at=max((r.at for r in mine), default=None),
        by_trigger=by_trigger,
        lost_samples=[f"{ref} {trigger}" for ref, trigger in lost[:5]],
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def lateness_summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, max, min and mean of ``values`` (seconds), in milliseconds."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "min": None, "mean": None}
    return {
        "p50": ms(percentile(values, 0.50)),
        "p90": ms(percentile(values, 0.90)),
        "p99": ms(percentile(values, 0.99)),
        "max": ms(max(values)),
        "min": ms(min(values)),
        "mean": ms(sum(values) / len(values)),
    }


@dataclass
class CpuWindow:
    """CPU time of the deployment's processes, the sink and the machine, from one moment to another."""

    processes: dict[str, float | None]
    sink: float | None
    machine: tuple[float, float] | None
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def sample(cls, deployment: Deployment, sink_pid: int | None) -> CpuWindow:
        sink = process_cpu_seconds(sink_pid) if sink_pid is not None else None
        return cls(deployment.cpu_seconds(), sink, machine_cpu())

    def shares(self, end: CpuWindow, wall: float | None = None) -> dict[str, float | None]:
        """Each process's CPU time as a share of the wall time (1.0 = one CPU busy), and the
        machine's busy share of all its CPUs."""
        wall = wall if wall is not None else end.at - self.at
        result: dict[str, float | None] = {}
        if wall <= 0:
            return result
        for name, before in self.processes.items():
            after = end.processes.get(name)
            result[name] = None if before is None or after is None else round((after - before) / wall, 2)
        result["sink"] = None if self.sink is None or end.sink is None else round((end.sink - self.sink) / wall, 2)
        if self.machine is not None and end.machine is not None:
            busy = end.machine[0] - self.machine[0]
            total = end.machine[1] - self.machine[1]
            result["machine_busy"] = round(busy / total, 2) if total > 0 else None
        return result


async def sleep_until(instant: datetime) -> None:
    delay = instant.timestamp() - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _as_admin(statement: str) -> None:
    """Run ``statement`` (CREATE or DROP DATABASE) outside a transaction, as the admin user."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        admin.dispose()
