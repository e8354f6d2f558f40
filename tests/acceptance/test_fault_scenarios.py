"""Fault scenarios (issue 7): the standard deployment under real faults, judged by an independent ledger.

The real ``alarmd`` and ``notifyd`` run as processes against PostgreSQL and RabbitMQ
(:class:`tests.benchmarks.deployment.Deployment`); their SMTP server is the benchmark
sink in a process of its own (:class:`tests.benchmarks.sink.SmtpSink`), which records
``X-Alarm-Ref`` and ``X-Alarm-Trigger`` of every message it accepts and, in the SMTP
scenario, answers with faults. Each scenario enqueues a stream of alarms due over the
following seconds, injects its faults while the stream is being dispatched, enqueues a
few probe alarms once the last fault is over, waits until nothing is pending or in
flight, and reconciles (:mod:`tests.ledger`): every enqueued instance must have been
received, or be ``failed`` or ``expired`` with a reason in ``alarmctl list --json``.

1. ``kill -9`` alarmd right after a claim, a publish, a publisher confirm; restarted.
2. ``kill -9`` notifyd at random moments and right after the SMTP server accepted a
   message (before its delivery record and ack: the documented crash window, on purpose).
3. RabbitMQ restarted (``stop_app``/``start_app``); the deployment's connections closed
   from the broker side (``rabbitmqctl close_connection``).
4. PostgreSQL: ``pg_terminate_backend`` on the deployment's connections again and again;
   the server restarted (``pg_ctlcluster … restart``) while a burst is being mailed (this
   one found reminders mailed twice: fixed in 67365cd, notifyd holds the delivery records
   the database cannot take).
5. SMTP: 421/451/454 replies, 550 for some recipients, connections dropped after DATA,
   replies slower than ``smtp.deadline`` (a share of messages, and the whole server for
   a few seconds).
6. Downtime: both services stopped while alarms fall due, then started: alarms overdue
   more than ``alarmd.max_lateness`` are ``expired``, recent ones delivered under
   ``alarmd.catchup_rate``, on-time ones delivered.

Pass: 0 lost, 0 unexpected, no verdict contradicted by a reception; 0 duplicates, except
in notifyd's crash window (scenario 2: at most ``notifyd.concurrency`` per kill, counted
and reported); the services recover without help (a process the test did not stop is
the same process at the end, and something due after each fault arrives after it).

Each scenario writes its row (alarms, delivered, failed, expired, lost, duplicates,
recovery time) to the JSON-lines file ``$CALALARM_FAULT_REPORT`` when it is set;
``python -m tests.benchmarks.reliability_report`` runs this file and writes the table to
``docs/reliability.md``. ``CALALARM_FAULT_ALARMS`` (default 600) is the stream's size,
``CALALARM_FAULT_RATE`` (default 40) how many fall due per second, and
``CALALARM_FAULT_SEED`` repeats a run's random choices (a failure message names its seed).
The *recovery time* of a fault is from its end (the process started again, the broker
or database back) to the first reception of an alarm due after the fault began;
triggers are whole seconds, so it includes up to a second of waiting for one to fall due.

Scenarios 3 and 4 restart the machine's RabbitMQ and PostgreSQL (a few seconds each):
anything else using them meanwhile sees the outage too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from common.db import alarm_history
from common.db import alarms as alarms_table
from common.payload import parse_utc
from tests.benchmarks.deployment import (
    OWNER,
    Alarm,
    Deployment,
    TomlValue,
    enqueue_all,
    sleep_until,
    tail,
    whole_second_after,
)
from tests.benchmarks.sink import Faults, Received, SmtpSink
from tests.ledger import (
    Key,
    Ledger,
    ScenarioRow,
    append_row,
    crash_window_duplicates,
    key,
    max_in_window,
    rate_excess,
    reconcile,
    recovery_seconds,
    verdicts_from_listing,
)
from tests.services import POSTGRES_ADMIN_URL, reachable, require_postgres, require_rabbitmq
from tests.waiting import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ALARMS = int(os.environ.get("CALALARM_FAULT_ALARMS") or 600)
RATE = int(os.environ.get("CALALARM_FAULT_RATE") or 40)  # alarms due per second of a stream
SEED = int(os.environ.get("CALALARM_FAULT_SEED") or secrets.randbelow(1_000_000))
REPORT = os.environ.get("CALALARM_FAULT_REPORT", "")
STREAM_SECONDS = max(1, -(-ALARMS // RATE))
PROBES = 20  # alarms enqueued after the last fault: only a recovered deployment delivers them
CONCURRENCY = 10  # notifyd.concurrency: the crash window's bound per notifyd killed
DEADLINE = 4.0  # smtp.deadline
SETTINGS: dict[str, dict[str, TomlValue]] = {
    "smtp": {"timeout": DEADLINE, "deadline": DEADLINE},
    # A lost ack is republished after 12 s, not 60; a retry waits 1 s, 2 s, 4 s …
    "alarmd": {"ack_timeout": 12.0, "retry_base": 1.0, "retry_cap": 8.0},
    "notifyd": {"concurrency": CONCURRENCY},
}
# With RabbitMQ down a publish waits up to 10 s for the connection to return: a lease
# shorter than that republishes what is still being published.
BROKER_SETTINGS = {**SETTINGS, "alarmd": {**SETTINGS["alarmd"], "ack_timeout": 20.0}}
QUIET = 1.0  # seconds without a new message before the tally (a late duplicate still counts)
POLL = 0.002  # seconds between looks for the moment to kill
RECOVERY_LIMIT = 30.0  # seconds: more than this after a fault is not "recovered by itself"
COMMAND_TIMEOUT = 90.0  # rabbitmqctl, pg_ctlcluster


# --------------------------------------------------------------------------- the run


@dataclass
class Fault:
    what: str
    start: float  # time.time()
    end: float


@dataclass
class Run:
    """One scenario: the deployment, its sink, what was enqueued and which faults happened."""

    name: str
    deployment: Deployment
    sink: SmtpSink
    rng: random.Random
    alarms: list[Alarm] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    async def enqueue(self, alarms: Sequence[Alarm]) -> None:
        await asyncio.to_thread(enqueue_all, self.deployment.queue, alarms)
        self.alarms.extend(alarms)

    async def stream(
        self,
        calid: str,
        count: int = ALARMS,
        *,
        owner: Callable[[int], str] | None = None,
        first: datetime | None = None,
    ) -> list[Alarm]:
        """Enqueue ``count`` alarms, :data:`RATE` due at each whole second from ``first`` (by
        default the first whole second far enough ahead for the enqueue to finish)."""
        first = first or whole_second_after(2 + count / 5000)
        alarms = [
            Alarm(calid, f"{calid}-{i:05d}", first + timedelta(seconds=i // RATE), owner(i) if owner else OWNER)
            for i in range(count)
        ]
        await self.enqueue(alarms)
        return alarms

    async def traffic_at(self, due: datetime, count: int = 10) -> None:
        """Make sure alarms fall due at ``due`` (a whole second): enqueue ``count`` when the
        stream has none then, so that a kill waiting for work finds some."""
        if any(alarm.trigger == due for alarm in self.alarms):
            return
        calid = f"extra-{int(due.timestamp())}"
        await self.enqueue([Alarm(calid, f"{calid}-{i:03d}", due) for i in range(count)])

    async def probe(self) -> None:
        """Enqueue :data:`PROBES` alarms due in two seconds: after the last fault, only a
        deployment that recovered delivers them (and they time its recovery when the
        stream was over before the fault ended)."""
        due = whole_second_after(2)
        await self.enqueue([Alarm("probe", f"probe-{i:03d}", due) for i in range(PROBES)])

    def records(self) -> list[Received]:
        return self.sink.records()

    def expected(self) -> list[Key]:
        return [key(*alarm.key) for alarm in self.alarms]

    def received_keys(self) -> list[Key]:
        return [key(record.ref, record.trigger) for record in self.records()]

    def verdicts(self) -> dict[Key, Any]:
        """The queue's verdicts, as an operator reads them: ``alarmctl list --state failed|expired --json``."""
        rows: list[dict[str, Any]] = []
        for state in ("failed", "expired"):
            done = self.deployment.alarmctl("list", "--state", state, "--limit", "100000", "--json")
            assert done.returncode == 0, f"alarmctl list --state {state}: {done.returncode} {done.stderr}"
            rows.extend(json.loads(done.stdout))
        return verdicts_from_listing(rows)

    def ledger(self) -> Ledger:
        return reconcile(self.expected(), self.received_keys(), self.verdicts())

    def recoveries(self) -> list[float | None]:
        receptions = [(record.at, _timestamp(record.trigger)) for record in self.records()]
        return [recovery_seconds(fault.start, fault.end, receptions) for fault in self.faults]

    async def settle(self, within: float) -> str | None:
        """Wait until nothing is pending or in flight and the sink has been quiet for
        :data:`QUIET`; None then, else why not (after ``within`` seconds, or a service exited)."""
        deadline = time.monotonic() + within
        count, since = self.sink.messages, time.monotonic()
        live = -1
        while time.monotonic() < deadline:
            try:
                self.deployment.check_running()
            except RuntimeError as exc:
                return str(exc).splitlines()[0]
            if self.sink.messages != count:
                count, since = self.sink.messages, time.monotonic()
            try:
                live = await asyncio.to_thread(self.deployment.live_instances)
            except sa.exc.SQLAlchemyError:
                live = -1  # the database is still coming back
            if live == 0 and time.monotonic() - since >= QUIET:
                return None
            await asyncio.sleep(0.25)
        return f"{live} instances still pending or in flight after {within:.0f}s"

    async def wait_received(self, alarms: Sequence[Alarm], within: float) -> bool:
        """Wait until every one of ``alarms`` reached the sink; False after ``within`` seconds."""
        wanted = {key(*alarm.key) for alarm in alarms}
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if wanted <= set(self.received_keys()):
                return True
            await asyncio.sleep(0.25)
        return False

    def facts(self, ledger: Ledger) -> str:
        """What a failure shows: the seed, the ledger, the faults, the queue, the end of each log."""
        try:
            states = self.deployment.queue.stats(now=datetime.now(UTC))["states"]
        except sa.exc.SQLAlchemyError as exc:
            states = f"unknown ({exc})"
        faults = "; ".join(f"{f.what} {f.end - f.start:.1f}s" for f in self.faults)
        logs = "\n".join(
            f"--- {service.name} (pid {service.process.pid}, exit {service.exit_code}) log:\n"
            f"{tail(service.own_log_text(), 20)}"
            for service in [*self.deployment.killed, *self.deployment.services]
        )
        return (
            f"seed {SEED} (CALALARM_FAULT_SEED={SEED} repeats the random choices)\n{ledger.summary()}\n"
            f"faults: {faults}\nqueue states: {states}\nnotes: {'; '.join(self.notes)}\n{logs}"
        )

    def judge(
        self,
        ledger: Ledger,
        checks: Iterable[tuple[bool, str]],
        *,
        recovery: float | None,
        known_bug: Iterable[tuple[bool, str]] = (),
    ) -> None:
        """Write the scenario's row (:data:`REPORT`), then fail with every check that did not hold.

        ``known_bug`` are the checks a known bug breaks, in a test marked
        ``xfail(strict=True, raises=AssertionError)``: only they raise AssertionError; any
        other check that fails ends the test with ``pytest.fail``, which such a mark does not
        excuse."""
        failures = [message for ok, message in checks if not ok]
        bugs = [message for ok, message in known_bug if not ok]
        if bugs:
            self.notes.append("known bug: " + "; ".join(message.split(":")[0] for message in bugs))
        row = ScenarioRow.from_ledger(
            self.name,
            ledger,
            recovery_s=recovery,
            passed=not failures and not bugs,
            seed=SEED,
            duration_s=time.monotonic() - self.began,
            notes="; ".join(self.notes),
            known_bug=bool(bugs) and not failures,
        )
        if REPORT:
            append_row(Path(REPORT), row)
        print(f"\n{self.name}: {ledger.summary()}; recovery {recovery}s; {'; '.join(self.notes)}")
        if failures:
            pytest.fail("\n".join(failures) + "\n" + self.facts(ledger), pytrace=False)
        assert not bugs, "\n".join(bugs) + "\n" + self.facts(ledger)


def _timestamp(trigger: str) -> float:
    try:
        return parse_utc(trigger).timestamp()
    except ValueError:
        return 0.0


@contextlib.asynccontextmanager
async def scenario(
    tmp_path: Path,
    name: str,
    settings: dict[str, dict[str, TomlValue]] = SETTINGS,
    faults: Faults | None = None,
) -> AsyncIterator[Run]:
    """The running standard deployment with ``settings``, its recording sink (with ``faults``)
    and a random generator seeded from :data:`SEED` and the scenario's name."""
    require_postgres()
    require_rabbitmq()
    with SmtpSink(record=True, faults=faults) as sink:
        async with Deployment("standard", tmp_path, sink.url, overrides=settings) as deployment:
            await deployment.start()
            yield Run(name, deployment, sink, random.Random(f"{SEED}:{name}"))


def standard_checks(
    run: Run, ledger: Ledger, recoveries: Sequence[float | None], *, duplicates: int | None = 0
) -> list[tuple[bool, str]]:
    """The pass criteria every scenario shares (``duplicates``: how many the crash window
    allows; None: judged apart, see :meth:`Run.judge`'s ``known_bug``)."""
    slow = [
        f"{fault.what}: {value}"
        for fault, value in zip(run.faults, recoveries, strict=True)
        if value is None or value > RECOVERY_LIMIT
    ]
    checks = [
        (ledger.lost == 0, f"{ledger.lost} alarms lost: {ledger.lost_samples}"),
        (ledger.unexpected == 0, f"{ledger.unexpected} reminders nobody enqueued: {ledger.unexpected_samples}"),
        (ledger.contradictions == 0, f"verdicts contradicted by receptions: {ledger.contradiction_samples}"),
        (not slow, f"no recovery within {RECOVERY_LIMIT:g}s after: {slow}"),
    ]
    if duplicates is not None:
        checks.append(
            (
                ledger.duplicates <= duplicates,
                f"{ledger.duplicates} duplicate reminders (allowed {duplicates}): {ledger.duplicate_samples}",
            )
        )
    return checks


def worst(recoveries: Sequence[float | None]) -> float | None:
    measured = [value for value in recoveries if value is not None]
    return max(measured) if measured else None


def settle_within(run: Run, extra: float = 0.0) -> float:
    """Seconds to allow for the rest of the stream, leases running out and retries."""
    lease = float(run.deployment.overrides["alarmd"]["ack_timeout"])  # type: ignore[arg-type]
    remaining = max(0.0, max(alarm.trigger.timestamp() for alarm in run.alarms) - time.time())
    return remaining + 3 * lease + 30 + extra


# --------------------------------------------------------------------------- killing at a moment


class Watch:
    """Something observable from outside a process that says the moment has come."""

    def fired(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


class HistoryGrows(Watch):
    """``alarm_history`` has an ``event`` row newer than when the watch began: for
    ``published``, a claim has committed (the claim writes it in its own transaction)."""

    def __init__(self, engine: sa.Engine, event: str) -> None:
        self._newest = sa.select(sa.func.coalesce(sa.func.max(alarm_history.c.id), 0)).where(
            alarm_history.c.event == event
        )
        self._conn = engine.connect()
        self._baseline = self._value()

    def _value(self) -> int:
        value = int(self._conn.execute(self._newest).scalar_one())
        self._conn.commit()
        return value

    def fired(self) -> bool:
        return self._value() > self._baseline

    def close(self) -> None:
        self._conn.close()


class LogShows(Watch):
    """``text`` was written to the log at ``path`` after the watch began."""

    def __init__(self, path: Path, text: bytes) -> None:
        self._text = text
        self._log = path.open("rb")
        self._log.seek(0, os.SEEK_END)
        self._buffer = b""

    def fired(self) -> bool:
        self._buffer = self._buffer[-len(self._text) :] + self._log.read()
        return self._text in self._buffer

    def close(self) -> None:
        self._log.close()


class CounterGrows(Watch):
    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self._baseline = read()

    def fired(self) -> bool:
        return self._read() > self._baseline


def kill_when(pid: int, watch: Watch, *, timeout: float, delay: float) -> bool:
    """(In a worker thread.) Look at ``watch`` every :data:`POLL` seconds; once it fires (or
    after ``timeout``), wait ``delay`` and SIGKILL ``pid``. Return whether it fired."""
    deadline = time.monotonic() + timeout
    fired = False
    try:
        while time.monotonic() < deadline:
            if watch.fired():
                fired = True
                break
            time.sleep(POLL)
        if delay:
            time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    finally:
        watch.close()
    return fired


# --------------------------------------------------------------------------- RabbitMQ


def require_command(name: str, why: str) -> str:
    """The path of the command ``name``; skip (fail under CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: {why}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def run_command(*command: str) -> str:
    """Run ``command``; its output; raise with the output when it fails or hangs."""
    try:
        result = await asyncio.to_thread(
            subprocess.run, list(command), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} did not finish within {COMMAND_TIMEOUT:g}s") from None
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result.stdout


async def rabbitmqctl(*args: str) -> str:
    return await run_command(require_command("rabbitmqctl", "it restarts the broker under the services"), *args)


async def start_rabbitmq() -> None:
    """Start the broker's application and wait until it has started and answers on its port."""
    await rabbitmqctl("start_app")
    await rabbitmqctl("await_startup")
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not reachable("127.0.0.1", 5672):
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ started but does not answer on port 5672")
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


async def broker_connections(exchange: str) -> list[str]:
    """The broker's ids of the connections the services of the deployment with ``exchange``
    opened (the bus names each ``calalarm ens/EXCHANGE``)."""
    listing = await rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers")
    name = f'"calalarm ens/{exchange}"'
    return [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]


async def close_broker_connections(exchange: str) -> int:
    """Close the deployment's connections from the broker side, as an operator (or a
    broker under memory pressure, a load balancer) would; return how many."""
    pids = await broker_connections(exchange)
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "fault scenario: closed by the broker")
    return len(pids)


# --------------------------------------------------------------------------- PostgreSQL

TERMINATE = sa.text(
    """
    SELECT count(pg_terminate_backend(pid, 5000))
    FROM pg_stat_activity
    WHERE datname = :database AND backend_type = 'client backend' AND pid <> pg_backend_pid()
    """
)


def terminate_backends(database: str) -> int:
    """End every client connection to ``database`` now; return how many there were."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return int(conn.execute(TERMINATE, {"database": database}).scalar_one())
    finally:
        admin.dispose()


def postgres_cluster() -> str:
    """The version of the machine's PostgreSQL cluster ``main`` (``/etc/postgresql/VERSION/main``)."""
    require_command("pg_ctlcluster", "it restarts PostgreSQL under the services")
    root = Path("/etc/postgresql")
    versions = sorted(p.name for p in root.iterdir() if (p / "main").is_dir()) if root.is_dir() else []
    if not versions:
        message = "no PostgreSQL cluster under /etc/postgresql to restart"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return versions[0]


async def restart_postgres(version: str) -> None:
    """``pg_ctlcluster VERSION main restart`` (fast shutdown: every connection is cut), then
    wait until the server answers a query."""
    await run_command("pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart")
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while True:
        try:
            engine = sa.create_engine(POSTGRES_ADMIN_URL)
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            finally:
                engine.dispose()
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- the harness itself


async def test_the_faulty_sink_does_what_the_scenarios_rely_on() -> None:
    """Faults are chosen by instance and hit its first message only; refusals every time;
    the kill comes after the client has its 250."""

    def message(ref: str, trigger: str, to: str = "someone@example.com") -> bytes:
        return (
            f"From: a@example.com\r\nTo: {to}\r\nX-Alarm-Ref: {ref}\r\nX-Alarm-Trigger: {trigger}\r\n"
            "Subject: x\r\n\r\nhello\r\n"
        ).encode()

    faults = Faults(temporary=0.3, drop=0.2, slow=0.1, slow_delay=3.0, refuse_prefix="refused-", seed=5)
    refs = [f"enp:///ics/eventalarm?calid=h&uid={i}&rid=&aid=1" for i in range(200)]
    kinds = [faults.fault_for(ref, "2026-11-23T10:00:00Z") for ref in refs]
    assert 40 < kinds.count("temporary") < 80
    assert 20 < kinds.count("drop") < 60
    assert 5 < kinds.count("slow") < 40
    assert kinds == [faults.fault_for(ref, "2026-11-23T10:00:00Z") for ref in refs]  # a function of the instance

    temporary = refs[kinds.index("temporary")]
    drop = refs[kinds.index("drop")]
    slow = refs[kinds.index("slow")]
    fine = refs[kinds.index(None)]
    trigger = "2026-11-23T10:00:00Z"
    victim = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - returns at once
    try:
        with SmtpSink(record=True, faults=faults) as sink:

            async def send(ref: str, to: str = "someone@example.com", timeout: float = 5.0) -> str:  # noqa: ASYNC109
                try:
                    await aiosmtplib.send(
                        message(ref, trigger, to),
                        sender="a@example.com",
                        recipients=[to],
                        hostname=sink.host,
                        port=sink.port,
                        timeout=timeout,
                    )
                except aiosmtplib.SMTPResponseException as exc:
                    return str(exc.code)
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    return str(exc.recipients[0].code)
                except aiosmtplib.SMTPServerDisconnected:
                    return "disconnected"
                except aiosmtplib.SMTPTimeoutError:
                    return "timeout"
                return "250"

            assert (await send(temporary))[0] == "4"
            assert await send(temporary) == "250"
            assert await send(drop) == "disconnected"
            assert await send(drop) == "250"
            assert await send(slow, timeout=1.0) == "timeout"
            assert await send(slow) == "250"
            assert await send(fine, to="refused-1@example.com") == "550"
            assert await send(fine, to="refused-1@example.com") == "550"
            sink.kill_on_accept(victim.pid)
            assert await send(fine) == "250"
            assert await asyncio.to_thread(victim.wait, 5) == -signal.SIGKILL
            assert [(r.ref, r.trigger) for r in sink.records()] == [
                (temporary, trigger),
                (drop, trigger),
                (slow, trigger),
                (fine, trigger),
            ]
            events = sink.fault_events()
            assert sorted(e.kind for e in events) == ["drop", "kill", "refused", "refused", "slow", "temporary"]
            sink.set_faults(Faults())
            assert await send(fine, to="refused-1@example.com") == "250"
    finally:
        victim.kill()
        victim.wait()


# --------------------------------------------------------------------------- 1. alarmd


ALARMD_MOMENTS = ("after a claim", "after a publish", "after a publisher confirm")


async def test_alarmd_killed_after_claim_publish_and_confirm_loses_nothing_and_mails_nothing_twice(
    tmp_path: Path,
) -> None:
    async with scenario(tmp_path, "kill -9 alarmd") as run:
        deployment = run.deployment
        notifyd = deployment.service("notifyd").process
        alarms = await run.stream("kill-alarmd")
        kills = max(3, STREAM_SECONDS // 8)
        gap = STREAM_SECONDS / kills
        fired: list[str] = []
        in_flight: list[int] = []  # instances the killed alarmd had claimed and not seen acked
        for i in range(kills):
            moment = ALARMD_MOMENTS[i % len(ALARMD_MOMENTS)]
            # Armed just before a whole second, when the alarms due at it are claimed,
            # published and confirmed in turn.
            boundary = max(alarms[0].trigger, whole_second_after(0.5 + run.rng.uniform(0, gap)))
            await run.traffic_at(boundary)
            await sleep_until(boundary - timedelta(seconds=0.1))
            service = deployment.service("alarmd")
            watch: Watch
            if moment == "after a claim":
                watch = await asyncio.to_thread(HistoryGrows, deployment.queue.engine, "published")
            elif moment == "after a publish":  # its first reminder reached the SMTP server
                watch = CounterGrows(lambda: run.sink.messages)
            else:  # alarmd logs a claimed batch once the broker confirmed its publications
                watch = LogShows(service.log, b" INFO alarmd.dispatcher published batch ")
            start = time.time()
            held = await asyncio.to_thread(
                kill_when, service.process.pid, watch, timeout=3.0, delay=run.rng.uniform(0, 0.02)
            )
            code = await deployment.reap("alarmd")
            assert code == -signal.SIGKILL
            in_flight.append(await asyncio.to_thread(claimed_by, deployment, service.process.pid))
            fired.append(moment if held else f"{moment} (none came: at a random moment)")
            await asyncio.sleep(run.rng.uniform(0.2, 2.0))
            restarted = time.time()
            await deployment.restart("alarmd")
            run.faults.append(Fault(f"alarmd killed {moment}", start, restarted))
        await run.probe()
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()
        republished = deployment.queue_report(datetime.fromtimestamp(0, UTC))["republished"]
        counts = {moment: fired.count(moment) for moment in dict.fromkeys(fired)}
        run.notes.append(
            f"{kills} kills: "
            + ", ".join(f"{n} {moment}" for moment, n in counts.items())
            + f"; the killed alarmd had {min(in_flight)}-{max(in_flight)} instances in flight; "
            f"{republished} republished after their lease"
        )
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                ((ledger.failed, ledger.expired) == (0, 0), "instances given up"),
                (notifyd.poll() is None and deployment.service("notifyd").process is notifyd, "notifyd was touched"),
            ],
            recovery=worst(recoveries),
        )


def claimed_by(deployment: Deployment, pid: int) -> int:
    """Instances in flight whose last claim was made by the alarmd with process id ``pid``."""
    with deployment.queue.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(alarms_table)
                .where(alarms_table.c.state == "inflight", alarms_table.c.claimed_by.like(f"%:{pid}"))
            ).scalar_one()
        )


# --------------------------------------------------------------------------- 2. notifyd


async def test_notifyd_killed_at_random_moments_and_after_smtp_accepted_loses_nothing(tmp_path: Path) -> None:
    async with scenario(tmp_path, "kill -9 notifyd", faults=Faults()) as run:
        deployment = run.deployment
        alarmd = deployment.service("alarmd").process
        alarms = await run.stream("kill-notifyd")
        await sleep_until(alarms[0].trigger)
        kills = max(3, STREAM_SECONDS // 8)
        gap = STREAM_SECONDS / kills
        windows = 0
        for i in range(kills):
            pid = deployment.service("notifyd").process.pid
            if i % 2 == 0:
                # The crash window on purpose: the sink kills notifyd right after its 250 went
                # out, before notifyd could record the delivery and ack.
                await asyncio.sleep(run.rng.uniform(0.2, gap))
                await run.traffic_at(whole_second_after(1))
                start = time.time()
                run.sink.kill_on_accept(pid)
                what = "notifyd killed after SMTP accepted"
                windows += 1
            else:
                await asyncio.sleep(run.rng.uniform(0.2, gap))
                start = time.time()
                os.kill(pid, signal.SIGKILL)
                what = "notifyd killed at a random moment"
            code = await deployment.reap("notifyd", timeout=30.0)
            assert code == -signal.SIGKILL
            if i % 2 == 0:  # killed when the sink accepted a message: then, not when it was armed
                start = [e.at for e in run.sink.fault_events() if e.kind == "kill"][-1]
            await asyncio.sleep(run.rng.uniform(0.2, 2.0))
            restarted = time.time()
            await deployment.restart("notifyd")
            run.faults.append(Fault(what, start, restarted))
        await run.probe()
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()
        killed_at_accept = [e for e in run.sink.fault_events() if e.kind == "kill"]
        # Only notifications a killed notifyd had in hand can be mailed twice: accepted by the
        # server, not yet recorded (README, "Exactly once, as far as a crash allows"): at most
        # notifyd.concurrency per kill, each first accepted just before a kill.
        first: dict[Key, float] = {}
        twice: set[Key] = set()
        for record in run.records():
            k = key(record.ref, record.trigger)
            if k in first:
                twice.add(k)
            else:
                first[k] = record.at
        per_kill, unexplained = crash_window_duplicates([first[k] for k in twice], [f.start for f in run.faults])
        bound = CONCURRENCY * kills
        run.notes.append(
            f"{kills} kills ({windows} right after SMTP accepted); {ledger.duplicates} duplicates, "
            f"per kill {per_kill} (crash window, at most {CONCURRENCY} each)"
        )
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries, duplicates=bound),
                (len(killed_at_accept) == windows, f"the sink killed {len(killed_at_accept)} times, not {windows}"),
                (max(per_kill) <= CONCURRENCY, f"more than {CONCURRENCY} duplicates for one kill: {per_kill}"),
                (not unexplained, f"{len(unexplained)} duplicates first accepted when no notifyd was killed"),
                ((ledger.failed, ledger.expired) == (0, 0), "instances given up"),
                (alarmd.poll() is None and deployment.service("alarmd").process is alarmd, "alarmd was touched"),
            ],
            recovery=worst(recoveries),
        )


# --------------------------------------------------------------------------- 3. RabbitMQ


async def test_rabbitmq_restarted_and_connections_closed_by_the_broker_lose_nothing(tmp_path: Path) -> None:
    require_command("rabbitmqctl", "it restarts the broker under the services")
    async with scenario(tmp_path, "RabbitMQ restart, connections closed", BROKER_SETTINGS) as run:
        deployment = run.deployment
        processes = {service.name: service.process for service in deployment.services}
        alarms = await run.stream("broker")
        await sleep_until(alarms[0].trigger + timedelta(seconds=STREAM_SECONDS / 4 + run.rng.uniform(0, 1)))

        start = time.time()
        async with rabbitmq_stopped():
            await asyncio.sleep(run.rng.uniform(1.0, 3.0))
            deployment.check_running()  # no broker: both services wait for it, neither exits
        run.faults.append(Fault("RabbitMQ stop_app/start_app", start, time.time()))

        closes = 2
        closed: list[int] = []
        for _ in range(closes):
            await asyncio.sleep(run.rng.uniform(2.0, 4.0))
            await wait_for_connections(deployment.exchange, 2)
            start = time.time()
            closed.append(await close_broker_connections(deployment.exchange))
            run.faults.append(Fault(f"{closed[-1]} connections closed by the broker", start, time.time()))
        await run.probe()
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()
        run.notes.append(f"broker restarted once; the deployment's connections closed {closes} times ({closed})")
        same = {service.name: service.process for service in deployment.services} == processes
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                ((ledger.failed, ledger.expired) == (0, 0), "instances given up"),
                (same and all(p.poll() is None for p in processes.values()), "a service exited or was restarted"),
                (min(closed) >= 2, f"connections closed each time: {closed} (alarmd's and notifyd's expected)"),
            ],
            recovery=worst(recoveries),
        )


async def wait_for_connections(exchange: str, at_least: int, within: float = 30.0) -> None:
    """Wait until the deployment has ``at_least`` connections to the broker again."""
    deadline = time.monotonic() + within
    while len(await broker_connections(exchange)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"the services did not reconnect to RabbitMQ within {within:g}s")
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- 4. PostgreSQL


async def test_postgres_connections_terminated_again_and_again_lose_nothing(tmp_path: Path) -> None:
    async with scenario(tmp_path, "PostgreSQL connections terminated") as run:
        deployment = run.deployment
        processes = {service.name: service.process for service in deployment.services}
        database = str(make_url(deployment.database_url).database)
        alarms = await run.stream("database")
        await sleep_until(alarms[0].trigger + timedelta(seconds=STREAM_SECONDS / 5))

        start = time.time()
        storm_until = time.monotonic() + max(5.0, STREAM_SECONDS / 2)
        rounds, ended = 0, 0
        while time.monotonic() < storm_until:
            ended += await asyncio.to_thread(terminate_backends, database)
            rounds += 1
            await asyncio.sleep(run.rng.uniform(0.2, 1.0))
        run.faults.append(Fault(f"pg_terminate_backend x{rounds}", start, time.time()))
        run.notes.append(
            f"{rounds} rounds of pg_terminate_backend over {run.faults[-1].end - start:.0f} s "
            f"({ended} connections ended)"
        )
        await run.probe()
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                ((ledger.failed, ledger.expired) == (0, 0), "instances given up"),
                (same_processes(deployment, processes), "a service exited or was restarted"),
                (ended > 0, "pg_terminate_backend found no connection of the services to end"),
            ],
            recovery=worst(recoveries),
        )


RESTART_BURST = 300  # alarms due at one instant, being mailed while PostgreSQL restarts


async def test_postgres_restarted_while_reminders_are_mailed_mails_none_twice(tmp_path: Path) -> None:
    version = postgres_cluster()
    async with scenario(tmp_path, "PostgreSQL restarted mid-burst") as run:
        deployment = run.deployment
        processes = {service.name: service.process for service in deployment.services}
        burst = min(max(RESTART_BURST, ALARMS // 2), 600)
        due = whole_second_after(3)
        await run.enqueue([Alarm("restart", f"restart-{i:05d}", due) for i in range(burst)])
        # Then a stream due from two seconds after the burst: dispatched by a restarted server.
        rest = await run.stream("database", ALARMS - burst, first=due + timedelta(seconds=2))
        await sleep_until(due)
        # The restart begins once notifyd is mailing the burst: the notifications in its
        # hands and in its queue are mailed while the server is shutting down and starting.
        baseline = run.sink.messages
        await eventually(lambda: run.sink.messages >= baseline + 10, within=30.0, what="the burst being mailed")
        start = time.time()
        await restart_postgres(version)
        run.faults.append(Fault("PostgreSQL restarted", start, time.time()))
        run.notes.append(
            f"{burst} alarms due at one instant, PostgreSQL restarted while they were mailed "
            f"({run.faults[-1].end - start:.1f} s), {len(rest)} more due over the {-(-len(rest) // RATE)} s after"
        )
        await run.probe()
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()
        # The window this scenario is about: reminders mailed while the database was down,
        # whose acks alarmd could not apply (republished after the lease) and whose delivery
        # records notifyd could not write at once. Before 67365cd they were mailed twice.
        unapplied = deployment.service("alarmd").own_log_text().count("could not record the ack for alarm=")
        held = deployment.service("notifyd").own_log_text().count("holding its records in memory")
        run.notes.append(
            f"{unapplied} acks alarmd could not apply (republished after the lease); notifyd held its "
            f"delivery records in memory {held} time(s)"
        )
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                ((ledger.failed, ledger.expired) == (0, 0), "instances given up"),
                (same_processes(deployment, processes), "a service exited or was restarted"),
            ],
            recovery=worst(recoveries),
        )


# --------------------------------------------------------------------------- 5. SMTP


REFUSED_EVERY = 25  # one alarm in this many goes to a recipient the server refuses (550)
SLOW_SERVER = 3.0  # seconds during which the whole server answers slower than smtp.deadline


async def test_smtp_faults_are_retried_or_failed_with_the_reason(tmp_path: Path) -> None:
    faults = Faults(
        temporary=0.10,
        drop=0.04,
        slow=0.01,
        slow_delay=DEADLINE + 2,
        refuse_prefix="refused-",
        refuse_reply="550 5.1.1 Mailbox unavailable",
        seed=SEED,
    )

    def owner(i: int) -> str:
        return f"refused-{i:05d}@example.com" if i % REFUSED_EVERY == REFUSED_EVERY - 1 else "bench@example.com"

    async with scenario(tmp_path, "SMTP faults", faults=faults) as run:
        deployment = run.deployment
        processes = {service.name: service.process for service in deployment.services}
        alarms = await run.stream("smtp", owner=owner)
        await sleep_until(alarms[0].trigger + timedelta(seconds=STREAM_SECONDS / 2 + run.rng.uniform(0, 1)))
        start = time.time()
        run.sink.set_faults(Faults(slow=1.0, slow_delay=DEADLINE + 1, refuse_prefix=faults.refuse_prefix, seed=SEED))
        await asyncio.sleep(SLOW_SERVER)
        run.sink.set_faults(faults)
        run.faults.append(Fault(f"every reply slower than smtp.deadline for {SLOW_SERVER:g}s", start, time.time()))
        await run.probe()
        settled = await run.settle(settle_within(run, 20))
        ledger = run.ledger()
        recoveries = run.recoveries()

        events = run.sink.fault_events()
        kinds: dict[str, int] = {}
        for event in events:
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
        refused = {key(*alarm.key) for alarm in alarms if alarm.owner.startswith("refused-")}
        verdicts = run.verdicts()
        not_failed = [str(k) for k in refused if k not in verdicts or verdicts[k].state != "failed"]
        without_550 = [str(k) for k in refused if k in verdicts and "550" not in verdicts[k].reason]
        others_failed = [str(k) for k, v in verdicts.items() if k not in refused]
        faulted = {key(e.ref, e.trigger) for e in events if e.kind in ("temporary", "drop", "slow")}
        received = set(run.received_keys())
        undelivered = [str(k) for k in faulted if k not in received]
        retries = await asyncio.to_thread(retry_reasons, deployment)
        # The longest an instance waited from its fault to its delivery.
        first_fault: dict[Key, float] = {}
        for event in events:
            if event.kind in ("temporary", "drop", "slow"):
                first_fault.setdefault(key(event.ref, event.trigger), event.at)
        delivered_at: dict[Key, float] = {}
        for record in run.records():
            delivered_at.setdefault(key(record.ref, record.trigger), record.at)
        waits = [delivered_at[k] - at for k, at in first_fault.items() if k in delivered_at]
        run.notes.append(
            "server faults: "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
            + f"; retry acks by reply: {retries}"
            + (f"; longest wait from a fault to its delivery {max(waits):.1f} s" if waits else "")
        )
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                (ledger.failed == len(refused), f"{ledger.failed} failed, expected the {len(refused)} refused"),
                (not not_failed, f"refused recipients not failed: {not_failed[:5]}"),
                (not without_550, f"failed without the server's 550 in the reason: {without_550[:5]}"),
                (not others_failed, f"failed although the server would take them: {others_failed[:5]}"),
                (not undelivered, f"faulted once, never delivered: {undelivered[:5]}"),
                (kinds.get("temporary", 0) > 0 and kinds.get("drop", 0) > 0, f"faults not exercised: {kinds}"),
                (same_processes(deployment, processes), "a service exited or was restarted"),
            ],
            recovery=worst(recoveries),
        )


def retry_reasons(deployment: Deployment) -> dict[str, int]:
    """``retry`` acks in the history, by the reply code (or kind) their reason names."""
    with deployment.queue.engine.connect() as conn:
        details = conn.execute(sa.select(alarm_history.c.detail).where(alarm_history.c.event == "retry")).scalars()
        counts: dict[str, int] = {}
        for detail in details:
            reason = next((code for code in ("421", "451", "454") if code in detail), "")
            if not reason:
                reason = (
                    "deadline" if "deadline" in detail else ("connection lost" if "connection" in detail else "other")
                )
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def same_processes(deployment: Deployment, processes: dict[str, subprocess.Popen[bytes]]) -> bool:
    now = {service.name: service.process for service in deployment.services}
    return now == processes and all(process.poll() is None for process in processes.values())


# --------------------------------------------------------------------------- 6. downtime


MAX_LATENESS = 15.0  # alarmd.max_lateness for the downtime
LATE_AFTER = 1.0  # alarmd.late_after
DOWNTIME = 22.0  # seconds both services are stopped
CATCHUP_SECONDS = 4.0  # the recent backlog is sized to take this long at the catch-up rate


async def test_downtime_expires_the_too_late_delivers_the_recent_under_the_catch_up_rate(tmp_path: Path) -> None:
    quarter = max(ALARMS // 4, 20)
    recent_count = min(quarter, 400)
    catchup = max(20.0, float(round(recent_count / CATCHUP_SECONDS)))
    settings = {
        **SETTINGS,
        "alarmd": {
            **SETTINGS["alarmd"],
            "max_lateness": MAX_LATENESS,
            "late_after": LATE_AFTER,
            "catchup_rate": catchup,
        },
    }
    async with scenario(tmp_path, "downtime", settings) as run:
        deployment = run.deployment
        before = await run.stream("before", quarter)
        stop_at = before[-1].trigger + timedelta(seconds=2)  # whole seconds, as every trigger
        # Due early in the downtime: more than max_lateness overdue when the services are back.
        old = [
            Alarm("old", f"old-{i:05d}", stop_at + timedelta(seconds=3 + i % 2)) for i in range(ALARMS - 3 * quarter)
        ]
        # Due late in the downtime: backlog (more than late_after overdue), not stale.
        recent = [
            Alarm("recent", f"recent-{i:05d}", stop_at + timedelta(seconds=DOWNTIME - 3 + i % 2))
            for i in range(recent_count)
        ]
        start_at = stop_at + timedelta(seconds=DOWNTIME)
        # Due after the restart: on time, while the backlog is caught up.
        after_first = start_at + timedelta(seconds=3)
        after = [
            Alarm("after", f"after-{i:05d}", after_first + timedelta(seconds=i // RATE))
            for i in range(quarter + quarter - recent_count)
        ]
        await run.enqueue([*old, *recent, *after])

        await sleep_until(stop_at)
        assert await run.wait_received(before, 30.0), "the alarms due before the downtime were not all delivered"
        start = time.time()
        await deployment.terminate("alarmd")  # as for an upgrade: alarmd first, then notifyd
        await deployment.terminate("notifyd")
        if time.time() >= old[0].trigger.timestamp():
            pytest.fail(f"the services took {time.time() - start:.1f}s to stop: the downtime's alarms were due already")
        await sleep_until(start_at)
        restarted = time.time()
        await deployment.restart("notifyd")
        await deployment.restart("alarmd")
        run.faults.append(Fault(f"both services stopped for {restarted - start:.0f}s", start, restarted))
        settled = await run.settle(settle_within(run))
        ledger = run.ledger()
        recoveries = run.recoveries()

        received = set(run.received_keys())
        verdicts = run.verdicts()
        old_keys = {key(*a.key) for a in old}
        not_expired = [str(k) for k in old_keys if k in received or k not in verdicts or verdicts[k].state != "expired"]
        recent_delivered = sum(1 for a in recent if key(*a.key) in received)
        after_missing = [str(key(*a.key)) for a in after if key(*a.key) not in received]
        stale_sent, claims = await asyncio.to_thread(claim_facts, deployment, restarted)
        backlog = [at for at, late in claims if late > LATE_AFTER]
        excess = rate_excess(backlog, catchup, catchup)
        lateness = after_lateness(run, after)
        run.notes.append(
            f"{len(old)} due >{MAX_LATENESS:g}s before the restart, {len(recent)} due a few seconds before it, "
            f"{len(after)} after it; catch-up rate {catchup:g}/s: {len(backlog)} backlog claims, "
            f"peak {max_per_second(backlog)}/s; on-time after the restart: max lateness {lateness:.1f} s"
        )
        run.judge(
            ledger,
            [
                (settled is None, f"not settled: {settled}"),
                *standard_checks(run, ledger, recoveries),
                (ledger.expired == len(old) and not not_expired, f"not expired although stale: {not_expired[:5]}"),
                (recent_delivered == len(recent), f"{recent_delivered} of {len(recent)} recent alarms delivered"),
                (not after_missing, f"on-time alarms after the restart not delivered: {after_missing[:5]}"),
                (not stale_sent, f"published although more than max_lateness overdue: {stale_sent[:5]}"),
                (not excess, f"catch-up rate {catchup:g}/s exceeded: {excess}"),
                (lateness < 10.0, f"on-time alarms after the restart up to {lateness:.1f} s late"),
            ],
            recovery=worst(recoveries),
        )


def claim_facts(deployment: Deployment, since: float) -> tuple[list[str], list[tuple[float, float]]]:
    """First publications (claims) since ``since``: those claimed more than max_lateness after
    their trigger, and (claimed at, seconds overdue) of each."""
    with deployment.queue.engine.connect() as conn:
        rows = conn.execute(
            sa.select(alarm_history.c.uid, alarm_history.c.trigger_at, alarm_history.c.at).where(
                alarm_history.c.event == "published",
                alarm_history.c.attempt == 1,
                alarm_history.c.at >= datetime.fromtimestamp(since, UTC),
            )
        ).all()
    claims = [(_aware(at).timestamp(), (_aware(at) - _aware(trigger)).total_seconds()) for _uid, trigger, at in rows]
    stale = [uid for uid, trigger, at in rows if (_aware(at) - _aware(trigger)).total_seconds() > MAX_LATENESS]
    return stale, claims


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def max_per_second(times: Sequence[float]) -> int:
    return max_in_window(times, 1.0)


def after_lateness(run: Run, alarms: Sequence[Alarm]) -> float:
    """The largest lateness (first reception minus trigger) among ``alarms``."""
    wanted = {key(*alarm.key): alarm.trigger.timestamp() for alarm in alarms}
    first: dict[Key, float] = {}
    for record in run.records():
        k = key(record.ref, record.trigger)
        if k in wanted and k not in first:
            first[k] = record.at - wanted[k]
    return max(first.values(), default=0.0)
