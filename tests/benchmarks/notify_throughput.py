"""notifyd throughput into a local SMTP sink, next to the bare aiosmtplib ceiling.

    .venv/bin/python -m tests.benchmarks.notify_throughput [--messages 2000] [--pool 4]
        [--concurrency 10] [--rounds 3] [--warmup 200] [--dedup sql|memory] [--profile]
        [--publication 1]

An aiosmtpd sink that accepts and counts every message runs in a process of its own
(:mod:`tests.benchmarks.sink`). Against it, in alternation:

- the *ceiling*: one pre-rendered reminder (rendered once by notifyd's own
  :func:`~notifyd.email.render_reminder`, so it is the same size) sent ``--messages``
  times by a bare aiosmtplib loop, ``sendmail`` of its bytes per message, over
  ``--pool`` persistent connections in parallel. On the development machine this
  loop is bound by the sink, not by the client: it is what the SMTP path allows;
- the *send_message loop*, for reference: the same, but the reminder as an
  ``EmailMessage`` given to ``send_message``, which flattens it for every send (the
  loop aiosmtplib's documentation shows first; it is bound by the client);
- *notifyd*: the embedded deployment, a :class:`~notifyd.service.Notifier` as
  :func:`~notifyd.service.notifier_from_settings` builds it (pooled
  :class:`~notifyd.smtp.SmtpSender` with ``pool_size = --pool``, delivery records in a
  fresh migrated SQLite file; ``--dedup memory`` uses :class:`MemoryDeliveryLog`
  instead) on the in-process bus as the embedded deployment runs it (no JSON), fed
  ``--messages`` distinct EMAIL alarm notifications as alarmd publishes them
  (``--publication 1``: first publications, recorded but not looked up; 2:
  republications, each looked up first); timed from the first publish to the last ack.

All start cold (connections opened inside the timed span; a few ms of the total).
Each notifyd run is checked: every notification acked ``delivered``, no duplicate, one
delivery record each (``sql``), and the sink's count up by exactly ``--messages``.

Prints one JSON object and a summary: the rates of each round, their medians and the
ratio notifyd/ceiling against the goal of 0.8 (and notifyd/send_message loop); per
side, the octets per message and each process's CPU time as a share of the wall time
(near 1.0 says which process bounds the run). ``quiet_machine`` is false, with a
warning on stderr, when in a ceiling run neither process got 0.8 of a CPU: other load
interfered and the figures are noisy. ``--profile`` adds one more notifyd run under
cProfile, printed to stderr (main thread only: the SQLite calls of ``--dedup sql`` run
in a worker thread and show as waits; compare with ``--dedup memory`` to price them).
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import sqlalchemy as sa
from aiosmtplib.email import parse_address

from common import eventloop
from common.db import create_engine_from_url, deliveries, migrate
from common.ens.envelope import PUBLICATION, Ack, AckStatus, Notification, Renl, standard_properties
from common.ens.memory import MemoryBus
from common.ens.reference import EventReference
from common.payload import AlarmPayload
from common.settings import DatabaseSettings, NotifydSettings, Settings, SmtpSettings
from notifyd.dedup import MemoryDeliveryLog, SqlDeliveryLog
from notifyd.email import render_reminder
from notifyd.recipients import Directory, RecipientPolicy, address_reminder
from notifyd.service import Notifier, notifier_from_settings
from notifyd.smtp import SmtpSender
from tests.benchmarks.sink import SmtpSink
from tests.messages import parse_message
from tests.payloads import sample_payload

GOAL = 0.8
SENDER = "Reminders <calalarm@example.com>"
RECIPIENT = "bob@example.com"
ACK_TO = "bench"
SMTP_TIMEOUT = 20.0
MIN_WAIT = 60.0  # seconds a run may take at least before it is declared stuck
# A ceiling run keeps one process (the sink, or the send_message client) ~95% busy on a
# quiet machine; much less means other load took the CPU and the figures are noisy.
QUIET_SHARE = 0.8


@dataclass
class Run:
    """One timed run: how many messages, how long, and the CPU each process spent."""

    messages: int
    seconds: float
    client_cpu: float
    sink_cpu: float
    octets: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


def alarm(uid: str) -> AlarmPayload:
    """The benchmark's alarm: the test sample as an EMAIL alarm to one allowed recipient."""
    return sample_payload(uid=uid, action="EMAIL", recipients=[RECIPIENT])


def notification(payload: AlarmPayload, renl_id: str, publication: int = 1) -> Notification:
    """As alarmd publishes it: ``publication`` 1 is an instance's first publication (no
    delivery-log lookup); a later one is looked up first, as after a lost ack."""
    ref = EventReference.alarm(payload.component, payload.calid, payload.uid, payload.rid, payload.aid)
    properties = {**standard_properties("alarmd", datetime.now(UTC)), PUBLICATION: publication}
    return Notification(ref=ref, payload=payload.to_dict(), properties=properties, renl=Renl(ACK_TO, renl_id, 600.0))


def uid(label: str, i: int) -> str:
    return f"bench-{label}-{i:07d}"  # fixed width: every message has the same size


def settings_for(sink: SmtpSink, pool: int, concurrency: int) -> Settings:
    return Settings(
        smtp=SmtpSettings(
            url=f"smtp://{sink.host}:{sink.port}",
            sender=SENDER,
            timeout=SMTP_TIMEOUT,
            allow_plaintext=True,
            pool_size=pool,
        ),
        notifyd=NotifydSettings(concurrency=concurrency, allowed_domains=("example.com",)),
    )


def ceiling_message(settings: Settings) -> tuple[bytes, list[str]]:
    """The reminder notifyd would send for one benchmark alarm, and its envelope recipients."""
    payload = alarm(uid("c", 0))
    ref = str(notification(payload, "0").ref)
    options = settings.notifyd
    addressing = address_reminder(payload, Directory().entry(payload.calid), RecipientPolicy(options.allowed_domains))
    message = render_reminder(
        payload,
        ref,
        settings.smtp.sender,
        addressing.recipients,
        datetime.now(UTC),
        locale=addressing.locale,
        tz=addressing.tz,
        description_max=options.description_max,
        attach_ics=options.attach_ics,
    )
    return message, addressing.recipients


def wait_limit(n: int) -> float:
    return max(MIN_WAIT, n / 20)


async def run_ceiling(sink: SmtpSink, settings: Settings, n: int, flattened: bool) -> Run:
    """``n`` sends of one pre-rendered message over ``pool_size`` persistent connections:
    ``send_message`` of an :class:`EmailMessage`, or with ``flattened`` ``sendmail`` of its bytes."""
    raw, recipients = ceiling_message(settings)
    message = parse_message(raw)
    envelope_from = parse_address(settings.smtp.sender)
    clients = [
        aiosmtplib.SMTP(hostname=sink.host, port=sink.port, timeout=SMTP_TIMEOUT, use_tls=False, start_tls=False)
        for _ in range(settings.smtp.pool_size)
    ]
    tickets = iter(range(n))  # shared by the workers: each message is sent once

    async def worker(client: aiosmtplib.SMTP) -> None:
        await client.connect()
        for _ in tickets:
            if flattened:
                errors, _reply = await client.sendmail(envelope_from, recipients, raw)
            else:
                errors, _reply = await client.send_message(message, sender=envelope_from, recipients=recipients)
            if errors:
                raise RuntimeError(f"the sink refused recipients: {errors}")

    before, octets_before, sink_cpu_before = sink.messages, sink.octets, sink.cpu_seconds
    cpu_before = time.process_time()
    began = time.perf_counter()
    async with asyncio.timeout(wait_limit(n)):
        await asyncio.gather(*(worker(client) for client in clients))
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu_before
    received = sink.messages - before
    octets = sink.octets - octets_before
    sink_cpu = sink.cpu_seconds - sink_cpu_before
    await asyncio.gather(*(client.quit() for client in clients))
    if received != n:
        raise RuntimeError(f"ceiling: the sink counted {received} messages, expected {n}")
    return Run(n, seconds, cpu, sink_cpu, octets)


async def run_notifyd(
    sink: SmtpSink,
    settings: Settings,
    n: int,
    label: str,
    dedup: str,
    workdir: Path,
    profile: cProfile.Profile | None,
    publication: int = 1,
) -> Run:
    """``n`` distinct notifications through a fresh notifier; timed from first publish to last ack."""
    bus = MemoryBus(encode=False)  # as the embedded deployment runs it
    await bus.start()
    engine: sa.Engine | None = None
    clock = lambda: datetime.now(UTC)  # noqa: E731 - the production clock
    if dedup == "sql":
        url = f"sqlite:///{workdir / f'notifyd-{label}.db'}"
        migrate.upgrade(url)
        engine = create_engine_from_url(url)
        settings = settings.replace(database=DatabaseSettings(url=url))
        notifier, sender = notifier_from_settings(bus, settings, clock, engine=engine)
    else:
        sender = SmtpSender(settings.smtp)
        retention = timedelta(seconds=settings.notifyd.dedup_retention)
        notifier = Notifier(bus, sender, settings, clock, deliveries=MemoryDeliveryLog(retention))

    statuses: Counter[str] = Counter()
    problems: list[str] = []
    done = asyncio.Event()

    async def on_ack(ack: Ack) -> None:
        statuses[ack.status.value] += 1
        if ack.status is not AckStatus.DELIVERED and len(problems) < 5:
            problems.append(f"{ack.renl_id} {ack.status}: {ack.reason}")
        if statuses.total() == n:
            done.set()

    notifications = [notification(alarm(uid(label, i)), f"{label}:{i}", publication) for i in range(n)]
    acks = await bus.consume_acks(ACK_TO, on_ack)
    await notifier.start()
    await asyncio.sleep(0.05)  # let the start-up purge of the delivery log finish before the clock runs
    try:
        before, octets_before, sink_cpu_before = sink.messages, sink.octets, sink.cpu_seconds
        cpu_before = time.process_time()
        if profile is not None:
            profile.enable()
        began = time.perf_counter()
        for item in notifications:
            await bus.publish(item)
        try:
            async with asyncio.timeout(wait_limit(n)):
                await done.wait()
        except TimeoutError:
            raise RuntimeError(f"notifyd: {statuses.total()} of {n} acks after {wait_limit(n):g}s") from None
        seconds = time.perf_counter() - began
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu_before
        received = sink.messages - before
        octets = sink.octets - octets_before
        sink_cpu = sink.cpu_seconds - sink_cpu_before
    finally:
        await notifier.stop(grace=5.0)
        await acks.cancel()
        await sender.close()
        await bus.close()
    notes: dict[str, Any] = {}
    if isinstance(notifier.deliveries, SqlDeliveryLog):
        notes["delivery_log_batches"] = notifier.deliveries.batches
    if engine is not None:
        with engine.connect() as conn:
            notes["delivery_records"] = conn.execute(sa.select(sa.func.count()).select_from(deliveries)).scalar_one()
        engine.dispose()
    if statuses[AckStatus.DELIVERED.value] != n or received != n or notifier.duplicates:
        raise RuntimeError(
            f"notifyd: acks {dict(statuses)}, sink counted {received}, duplicates {notifier.duplicates}, "
            f"expected {n} delivered and {n} received; first problems: {problems}"
        )
    if engine is not None and notes["delivery_records"] != n:
        raise RuntimeError(f"notifyd: {notes['delivery_records']} delivery records, expected {n}")
    return Run(n, seconds, cpu, sink_cpu, octets, notes)


def median_rate(runs: list[Run]) -> float:
    return statistics.median(run.per_second for run in runs)


def shares(runs: list[Run]) -> dict[str, Any]:
    """Median octets per message and CPU use of each process as a share of the wall time."""
    return {
        "octets_per_message": round(statistics.median(run.octets / run.messages for run in runs)),
        "client_cpu_share": round(statistics.median(run.client_cpu / run.seconds for run in runs), 2),
        "sink_cpu_share": round(statistics.median(run.sink_cpu / run.seconds for run in runs), 2),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.notify_throughput", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000, help="messages per timed run (default 2000)")
    parser.add_argument(
        "--pool", type=int, default=defaults.smtp.pool_size, help="SMTP connections, both sides (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=defaults.notifyd.concurrency,
        help="notifyd.concurrency (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/notifyd pairs, alternated (default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="untimed messages of each kind first (default 200)")
    parser.add_argument("--dedup", choices=("sql", "memory"), default="sql", help="delivery log (default sql)")
    parser.add_argument("--profile", action="store_true", help="profile one more notifyd run (stderr)")
    parser.add_argument(
        "--publication",
        type=int,
        default=1,
        help="the notifications' publication number: 1 (default) as alarmd's first publication of an instance, "
        "2 or more as a republication, which notifyd looks up in the delivery log first",
    )
    args = parser.parse_args(argv)
    for name in ("messages", "pool", "concurrency", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with SmtpSink() as sink, tempfile.TemporaryDirectory(prefix="calalarm-bench-") as tmp:
        workdir = Path(tmp)
        settings = settings_for(sink, args.pool, args.concurrency)
        if args.warmup:
            await run_ceiling(sink, settings, args.warmup, flattened=False)
            await run_ceiling(sink, settings, args.warmup, flattened=True)
            await run_notifyd(sink, settings, args.warmup, "warmup", args.dedup, workdir, None, args.publication)
        ceiling: list[Run] = []
        send_message: list[Run] = []
        notifyd: list[Run] = []
        for round_no in range(args.rounds):
            gc.collect()
            ceiling.append(await run_ceiling(sink, settings, args.messages, flattened=True))
            gc.collect()
            send_message.append(await run_ceiling(sink, settings, args.messages, flattened=False))
            gc.collect()
            notifyd.append(
                await run_notifyd(
                    sink, settings, args.messages, f"r{round_no}", args.dedup, workdir, None, args.publication
                )
            )
        if args.profile:
            profile = cProfile.Profile()
            gc.collect()
            run = await run_notifyd(
                sink, settings, args.messages, "profile", args.dedup, workdir, profile, args.publication
            )
            print(f"# profile: notifyd, {run.per_second:.0f}/s under cProfile (main thread only)", file=sys.stderr)
            for key in ("cumulative", "tottime"):
                pstats.Stats(profile, stream=sys.stderr).sort_stats(key).print_stats(25)
    ratio = median_rate(notifyd) / median_rate(ceiling)
    return {
        "n": args.messages,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "dedup": args.dedup,
        "publication": args.publication,
        "ceiling_per_s": [round(run.per_second, 1) for run in ceiling],
        "ceiling_median_per_s": round(median_rate(ceiling), 1),
        "send_message_per_s": [round(run.per_second, 1) for run in send_message],
        "send_message_median_per_s": round(median_rate(send_message), 1),
        "notifyd_per_s": [round(run.per_second, 1) for run in notifyd],
        "notifyd_median_per_s": round(median_rate(notifyd), 1),
        "ratio": round(ratio, 3),
        "ratio_to_send_message": round(median_rate(notifyd) / median_rate(send_message), 3),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "ceiling_detail": shares(ceiling),
        "send_message_detail": shares(send_message),
        "notifyd_detail": shares(notifyd),
        "notifyd_notes": [run.notes for run in notifyd],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "quiet_machine": all(
            max(run.client_cpu, run.sink_cpu) / run.seconds >= QUIET_SHARE for run in ceiling + send_message
        ),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = eventloop.run(bench(args))  # as notifyd runs; the sink keeps asyncio's loop
    print(json.dumps(result, indent=2))
    verdict = "meets" if result["meets_goal"] else "misses"
    print(
        f"notifyd {result['notifyd_median_per_s']:.0f} reminders/s vs ceiling {result['ceiling_median_per_s']:.0f} "
        f"messages/s (pool {args.pool}, concurrency {args.concurrency}, dedup {args.dedup}, median of {args.rounds}): "
        f"ratio {result['ratio']:.2f}, {verdict} the {GOAL} goal; "
        f"the send_message loop {result['send_message_median_per_s']:.0f}/s "
        f"(notifyd {result['ratio_to_send_message']:.2f} of it)"
    )
    if not result["quiet_machine"]:
        print(
            f"warning: in a ceiling run no process used {QUIET_SHARE:.0%} of a CPU: other load on the machine; "
            "run again when it is quiet",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
