"""alarmd's CPU per reminder, without notifyd: claim, publish, apply the ack.

    .venv/bin/python -m tests.benchmarks.alarmd_cpu [--alarms 5000] [--rounds 3]
        [--log-level info] [--bus-json]

The burst benchmark's ratio moves ±0.07 with the machine; this measures alarmd's side
of it alone and steadily. In this process: a SQLite queue (a temporary file) holding
``--alarms`` single alarms due at one instant, the in-process bus as the embedded
deployment runs it (envelopes handed over; ``--bus-json``: as tests run it, each
notification and ack through JSON and back, as on AMQP), a subscriber that acks each
notification ``delivered`` at once, and alarmd's real :class:`Dispatcher` with the
default settings, logging at ``--log-level`` in the services' text format to a file
(as under systemd). From the first claim until the last ack is applied: the process's
CPU time per reminder (µs; the subscriber's share is a few µs) and the wall-clock
rate. Each round is a fresh queue; the median is reported.

Prints one JSON object and a summary line. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alarmd.dispatcher import Dispatcher
from alarmd.queue import AlarmQueue
from common import eventloop
from common.db import migrate
from common.ens import Ack, AckStatus, Notification
from common.ens.memory import MemoryBus
from common.logs import setup_logging
from common.settings import AlarmdSettings, LoggingSettings
from tests.benchmarks.queue_size import alarms_for


async def one_round(n: int, workdir: Path, bus_json: bool = False) -> dict[str, float]:
    url = f"sqlite:///{workdir / 'queue.db'}"
    migrate.upgrade(url)
    queue = AlarmQueue.from_url(url)
    settings = AlarmdSettings()
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    queue.enqueue(alarms_for("cpu", n, due, 1), now=datetime.now(UTC))
    bus = MemoryBus(encode=bus_json)
    await bus.start()

    async def deliver(notification: Notification) -> None:
        await bus.ack(notification, AckStatus.DELIVERED, "250 2.0.0 accepted")

    await bus.subscribe("enp:///ics/eventalarm", deliver)
    dispatcher = Dispatcher(queue, bus, settings)
    all_acked = asyncio.Event()
    apply_ack = dispatcher._on_ack  # the dispatcher's own handler, counted

    async def counted(ack: Ack) -> None:
        await apply_ack(ack)
        if sum(dispatcher.acked.values()) >= n:
            all_acked.set()

    dispatcher._on_ack = counted  # type: ignore[method-assign]
    # Claiming starts publish_ahead before the due instant: start the clocks just before.
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() - settings.publish_ahead - 0.05))
    cpu, wall = time.process_time(), time.perf_counter()
    run = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(all_acked.wait(), timeout=120)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    dispatcher.stop()
    await run
    await bus.close()
    queue.close()
    return {"cpu_us_per_reminder": cpu / n * 1e6, "per_s": n / wall}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.alarmd_cpu", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--alarms", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument("--bus-json", action="store_true", help="the bus encodes each message as JSON (as in tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="calalarm-alarmd-cpu-") as tmp:
        log_path = Path(tmp) / "alarmd.log"
        log_file = log_path.open("w", encoding="utf-8")
        handler = setup_logging(LoggingSettings(), level=args.log_level, stream=log_file, force=True)
        try:
            for i in range(args.rounds):
                workdir = Path(tmp) / f"round{i}"
                workdir.mkdir()
                rounds.append(eventloop.run(one_round(args.alarms, workdir, args.bus_json)))
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
            log_file.close()
        log_lines = len(log_path.read_text(encoding="utf-8").splitlines())
    result: dict[str, Any] = {
        "alarms": args.alarms,
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds],
        "cpu_us_per_reminder_median": round(statistics.median(r["cpu_us_per_reminder"] for r in rounds), 1),
        "per_s_median": round(statistics.median(r["per_s"] for r in rounds)),
        "log_level": args.log_level,
        "bus_json": args.bus_json,
        "log_lines_per_reminder": round(log_lines / (args.alarms * args.rounds), 3),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    print(
        f"alarmd: {result['cpu_us_per_reminder_median']:.0f} µs of CPU per reminder (claim, publish, ack), "
        f"{result['per_s_median']}/s, {result['log_lines_per_reminder']} log lines per reminder at {args.log_level}"
    )


if __name__ == "__main__":
    main()
