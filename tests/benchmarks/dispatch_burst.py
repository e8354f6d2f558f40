"""Dispatch burst: many alarms due at the same instant, drained through a real deployment.

    .venv/bin/python -m tests.benchmarks.dispatch_burst [--alarms 10000]
        [--deployment embedded|standard|both] [--patience 75] [--warmup 200] [--keep]

The issue's goal: "10,000 alarms due at the same instant, both deployments: all
delivered, 0 lost, 0 duplicated, drain rate reported next to the bare SMTP ceiling
measured in the same run. Goal: >= 0.7 of the ceiling."

Per deployment (``both``: ``embedded`` then ``standard``; see
:mod:`tests.benchmarks.deployment` for what each runs, as the real commands with a
configuration file and the product's default settings):

1. the speed of ``AlarmQueue.put`` is measured on 50 throw-away alarms, and the due
   instant chosen far enough ahead for the enqueue (and, for ``embedded``, alarmd's
   start after it: SQLite has no cross-process wake-up);
2. ``--alarms`` alarms, each an event of its own with one DISPLAY alarm, all due at that
   whole second, are enqueued one ``put`` each (timed and reported, not part of the drain);
3. at the due instant the clock starts; the drain ends at the sink's last accept of one
   of these reminders. **Drain rate = delivered / (last accept - due instant).**

The *ceiling* is :func:`tests.benchmarks.notify_throughput.run_ceiling`: the same sink
fed ``--alarms`` copies of one pre-rendered reminder by a bare aiosmtplib loop
(``sendmail`` of its bytes over ``smtp.pool_size`` persistent connections, the default). It runs
before the first deployment and after each one (after ``--warmup`` untimed messages);
a deployment's ratio is its drain rate over the mean of the ceiling runs just before
and just after it. ``meets_goal`` (per deployment, and overall) is a ratio >= 0.7 with
every alarm delivered once: none lost, none duplicated.

Also reported, per deployment: lateness of the reminders (first, p50, p99, max accept
after the due instant); when alarmd had claimed (``alarm_history``) and published (its
last ``published batch`` line) every instance, and when the last delivered ack was
applied; republished instances (attempts after a missing ack: the lease is
``alarmd.ack_timeout``, 60 s, from the claim); the queue's states afterwards; delivery
records; octets per reminder against the ceiling's; each process's CPU time, the sink's
and the whole machine's as a share of the drain's wall time (near 1.0 for a process says
it bounds the drain); warning and error lines of the logs. Lost means never received
before ``--patience`` seconds passed without a new message.

Prints one JSON object and a one-line summary. Not part of ``make test``; ``standard``
needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672. ``--keep`` keeps the
work directory (configurations, the SQLite file, process logs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from common.settings import Settings
from tests.benchmarks.deployment import (
    KINDS,
    Alarm,
    CpuWindow,
    Deployment,
    iso,
    lateness_summary,
    ms,
    put_all,
    put_rate,
    sleep_until,
    tally,
    wait_for_messages,
    wait_until_drained,
    whole_second_after,
)
from tests.benchmarks.notify_throughput import Run, run_ceiling, settings_for
from tests.benchmarks.sink import SmtpSink

GOAL = 0.7
CALID = "bench-burst"
START_ALLOWANCE = 20.0  # seconds for alarmd to start when it starts after the enqueue
SAFETY = 10.0  # seconds between the estimated end of the enqueue and the due instant
DRAIN_WAIT = 60.0  # seconds to wait, after the last message, for every ack to be applied


async def ceiling(sink: SmtpSink, n: int) -> Run:
    defaults = Settings()
    gc.collect()
    return await run_ceiling(sink, settings_for(sink, defaults.smtp.pool_size, defaults.notifyd.concurrency), n, True)


def ceiling_figures(run: Run) -> dict[str, Any]:
    return {
        "per_s": round(run.per_second, 1),
        "seconds": round(run.seconds, 3),
        "octets_per_message": round(run.octets / run.messages),
        "client_cpu_share": round(run.client_cpu / run.seconds, 2),
        "sink_cpu_share": round(run.sink_cpu / run.seconds, 2),
    }


async def burst(kind: str, n: int, sink: SmtpSink, workdir: Path, patience: float) -> dict[str, Any]:
    """One deployment: enqueue ``n`` alarms due at one instant, time their drain (see the module doc)."""
    async with Deployment(kind, workdir, sink.url) as deployment:
        try:
            result = await drain(deployment, n, sink, patience)
        finally:
            await deployment.stop()
        result["logs"] = deployment.log_report()
    result["broker_leftover"] = deployment.broker_leftover
    return result


async def drain(deployment: Deployment, n: int, sink: SmtpSink, patience: float) -> dict[str, Any]:
    queue = deployment.queue
    standard = deployment.kind == "standard"
    startup = await deployment.start() if standard else None
    rate = await asyncio.to_thread(put_rate, queue)
    due = whole_second_after(n / rate * 1.3 + SAFETY + (0 if standard else START_ALLOWANCE))
    alarms = [Alarm(CALID, f"burst-{i:06d}", due) for i in range(n)]
    took = await asyncio.to_thread(put_all, queue, alarms)
    if not standard:
        startup = await deployment.start()
    slack = due.timestamp() - time.time()
    if slack < 1:
        raise RuntimeError(f"the due instant came {-slack:.1f}s before the set-up ended: rerun")

    baseline, octets_before = sink.messages, sink.octets
    await sleep_until(due)
    window = CpuWindow.sample(deployment, sink.pid)
    complete = await wait_for_messages(
        lambda: sink.messages - baseline, n, patience=patience, check=deployment.check_running
    )
    end = CpuWindow.sample(deployment, sink.pid)
    received, octets = sink.messages - baseline, sink.octets - octets_before
    acks_applied = await wait_until_drained(deployment, DRAIN_WAIT)
    records = await asyncio.to_thread(sink.records, clear=True)
    counted = tally(alarms, records)
    since = due - timedelta(seconds=1)
    seconds = counted.last_at - due.timestamp() if counted.last_at is not None else None
    per_s = counted.delivered / seconds if seconds else 0.0
    report = await asyncio.to_thread(deployment.queue_report, since)
    claimed = await asyncio.to_thread(deployment.claim_lateness, since)
    published = deployment.last_publish_after(due)
    return {
        "deployment": deployment.kind,
        "alarms": n,
        "due": iso(due),
        "delivered": counted.delivered,
        "lost": counted.lost,
        "duplicated": counted.duplicated,
        "unexpected": counted.unexpected,
        "all_received_before_giving_up": complete,
        "drain_seconds": round(seconds, 3) if seconds is not None else None,
        "drain_per_s": round(per_s, 1),
        "lateness_ms": {"first": ms(min(counted.lateness)) if counted.lateness else None}
        | lateness_summary(counted.lateness),
        "all_claimed_after_s": round(max(claimed), 3) if claimed else None,
        "all_published_after_s": round(published, 3) if published is not None else None,
        "queue_after": {"all_acks_applied_within_s": acks_applied, **report},
        "octets_per_message": round(octets / received) if received else None,
        "cpu_share": window.shares(end),
        "enqueue": {
            "api": "AlarmQueue.put, one object per call",
            "put_calibration_per_s": round(rate, 1),
            "seconds": round(took, 2),
            "per_s": round(n / took, 1),
            "slack_before_due_s": round(slack, 2),
        },
        "startup_s": round(startup, 2) if startup is not None else None,
        "lost_samples": counted.lost_samples,
        "settings": deployment.settings(),
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    kinds = list(KINDS) if args.deployment == "both" else [args.deployment]
    workdir = Path(tempfile.mkdtemp(prefix="calalarm-burst-"))
    results: dict[str, dict[str, Any]] = {}
    ceilings: list[Run] = []
    try:
        with SmtpSink(record=True) as sink:
            if args.warmup:
                await ceiling(sink, args.warmup)
            ceilings.append(await ceiling(sink, args.alarms))
            for kind in kinds:
                await asyncio.to_thread(sink.records, clear=True)  # forget the ceiling's messages
                result = await burst(kind, args.alarms, sink, workdir / kind, args.patience)
                ceilings.append(await ceiling(sink, args.alarms))
                around = [ceilings[-2].per_second, ceilings[-1].per_second]
                result["ceiling_per_s"] = round(statistics.mean(around), 1)
                result["ratio"] = round(result["drain_per_s"] / result["ceiling_per_s"], 3)
                result["meets_goal"] = (
                    result["ratio"] >= GOAL
                    and result["delivered"] == args.alarms
                    and result["lost"] == 0
                    and result["duplicated"] == 0
                )
                results[kind] = result
    finally:
        if args.keep:
            print(f"# work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    defaults = Settings()
    return {
        "alarms": args.alarms,
        "deployments": results,
        "ceiling_runs": [ceiling_figures(run) for run in ceilings],
        "goal": f"drain >= {GOAL} of the ceiling, all delivered, 0 lost, 0 duplicated",
        "goal_ratio": GOAL,
        "meets_goal": all(result["meets_goal"] for result in results.values()),
        "settings": {
            "smtp_pool_size": defaults.smtp.pool_size,
            "notifyd_concurrency": defaults.notifyd.concurrency,
            "alarmd_batch_size": defaults.alarmd.batch_size,
            "alarmd_ack_timeout": defaults.alarmd.ack_timeout,
            "warmup": args.warmup,
            "patience_s": args.patience,
        },
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.dispatch_burst",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--alarms", type=int, default=10000, help="alarms due at the same instant (default 10000)")
    parser.add_argument("--deployment", choices=(*KINDS, "both"), default="both", help="default both")
    parser.add_argument(
        "--patience", type=float, default=75.0, help="give up after this many seconds without a new message"
    )
    parser.add_argument("--warmup", type=int, default=200, help="untimed ceiling messages first (default 200)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    args = parser.parse_args(argv)
    if args.alarms < 1:
        parser.error("--alarms must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.monotonic()
    result = asyncio.run(bench(args))
    result["run_seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2))
    parts = [
        f"{kind}: {r['delivered']}/{r['alarms']} delivered in {r['drain_seconds']} s = {r['drain_per_s']:.0f}/s, "
        f"{r['ratio']:.2f} of the ceiling {r['ceiling_per_s']:.0f}/s (lost {r['lost']}, duplicated {r['duplicated']})"
        for kind, r in result["deployments"].items()
    ]
    verdict = "meets" if result["meets_goal"] else "misses"
    print(f"burst of {args.alarms}: " + "; ".join(parts) + f"; {verdict} the goal ({result['goal']})")


if __name__ == "__main__":
    main()
