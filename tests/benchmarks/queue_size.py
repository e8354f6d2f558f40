"""The alarm queue at size, on PostgreSQL: bulk enqueue rate, claim cost and alarmd's memory
as the number of pending instances grows (10k to 2M by default).

    .venv/bin/python -m tests.benchmarks.queue_size [--sizes 10000,100000,500000,2000000]
        [--database postgresql+psycopg://postgres@127.0.0.1/calalarm_bench_size] [--claims 20] [--batch 100]
        [--keep]

The database is created if missing and emptied first; one the run created is dropped at
the end (2M rows are about 2 GB of disk) unless ``--keep``. For each size, in turn:

- *enqueue*: single alarms (:meth:`AlarmQueue.enqueue`, chunks of 5,000) are added until
  the queue holds that many pending instances, all due days ahead (so none is claimed);
  the rate of that step is reported (the goal is 20,000 instances/s);
- *claim*: ``--claims`` batches of ``--batch`` instances due now are added, then claimed
  one batch at a time (as alarmd does, ``AlarmQueue.claim``) and acked delivered; the
  median time of one claim is reported (the goal: the same within 2x from 10k to 2M);
- *memory*: a real ``alarmd`` process (memory:// bus, no notifier) is started on the
  database with 2,000 instances due two seconds later; once it has published them, its
  resident memory (VmRSS) is read (the goal: flat, not growing with the queue).

Prints one JSON object and a summary line. Not part of ``make test``; 2M rows take a few
minutes and about 2 GB of disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from alarmd import AlarmPayload, AlarmQueue
from alarmd.queue import ClaimPolicy
from common.db import migrate
from common.db.tables import alarm_history, alarms, sources
from common.ens.envelope import AckStatus
from common.payload import format_utc

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1/calalarm_bench_size"
ENQUEUE_GOAL = 20_000.0
CLAIM_FLATNESS_GOAL = 2.0
LEASE = timedelta(minutes=5)
BIN = Path(sys.executable).parent


def alarms_for(prefix: str, count: int, first: datetime, spread: int) -> Iterator[AlarmPayload]:
    """``count`` single alarms, triggers from ``first`` over ``spread`` seconds."""
    for n in range(count):
        trigger = first + timedelta(seconds=n % spread)
        yield AlarmPayload(
            calid=f"cal{n % 5000}",
            uid=f"{prefix}-{n}",
            rid="",
            aid="1",
            component="event",
            action="DISPLAY",
            trigger=format_utc(trigger),
            summary="Weekly sync",
            owner="bench@example.com",
        )


def ensure_database(url: str) -> bool:
    """Create the database at ``url`` if missing (True when it was) and migrate it."""
    parsed = make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}).first()
        if exists is None:
            conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    migrate.upgrade(url)
    return exists is None


def drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


def empty(queue: AlarmQueue) -> None:
    with queue.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {alarms.name}, {alarm_history.name}, {sources.name} RESTART IDENTITY"))


def measure_claims(queue: AlarmQueue, claims: int, batch: int, label: str) -> list[float]:
    """Seconds per claim of ``batch`` due instances, with the queue as it is."""
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    queue.enqueue(alarms_for(f"due-{label}", claims * batch, due, 1), now=datetime.now(UTC))
    with queue.engine.connect() as conn:
        conn.execute(sa.text("ANALYZE alarms"))
    seconds: list[float] = []
    policy = ClaimPolicy(LEASE, late_after=timedelta(seconds=60))
    for _ in range(claims):
        started = time.perf_counter()
        batch_claimed = queue.claim(now=due, limit=batch, owner="bench", policy=policy, late_limit=batch)
        seconds.append(time.perf_counter() - started)
        for claimed in batch_claimed.claimed:
            queue.ack(claimed.id, claimed.attempt, AckStatus.DELIVERED, "", now=due, retry_delay=LEASE)
    return seconds


def alarmd_rss(url: str, queue: AlarmQueue, label: str, workdir: Path) -> int:
    """Resident memory (KiB) of a real alarmd once it has published 2,000 instances."""
    due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    queue.enqueue(alarms_for(f"rss-{label}", 2000, due, 1), now=datetime.now(UTC))
    config = workdir / f"alarmd-{label}.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[bus]\nurl = "memory://"\n', encoding="utf-8")
    process = subprocess.Popen(
        [str(BIN / "alarmd"), "--config", str(config), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with queue.engine.connect() as conn:
                published = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(alarms)
                    .where(alarms.c.uid.like(f"rss-{label}-%"), alarms.c.state == "inflight")
                ).scalar_one()
            if published == 2000:
                break
            if process.poll() is not None:
                raise RuntimeError(f"alarmd exited: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.2)
        else:
            raise RuntimeError("alarmd did not publish the 2,000 due instances within 60 s")
        time.sleep(1.0)
        status = Path(f"/proc/{process.pid}/status").read_text(encoding="ascii")
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        with queue.engine.begin() as conn:
            conn.execute(sa.delete(alarms).where(alarms.c.uid.like(f"rss-{label}-%")))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.queue_size", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000,500000,2000000", help="pending instances, ascending")
    parser.add_argument("--database", default=os.environ.get("CALALARM_BENCH_DATABASE", DEFAULT_DATABASE))
    parser.add_argument("--claims", type=int, default=20, help="claims measured per size (default 20)")
    parser.add_argument("--batch", type=int, default=100, help="instances per claim, as alarmd.batch_size")
    parser.add_argument("--keep", action="store_true", help="keep a database this run created")
    args = parser.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",")]
    if args.size_list != sorted(args.size_list) or args.size_list[0] < 1:
        parser.error("--sizes must be ascending positive numbers")
    return args


def bench(args: argparse.Namespace) -> dict[str, Any]:
    created = ensure_database(args.database)
    try:
        return measure(args)
    finally:
        if created and not args.keep:
            drop_database(args.database)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    queue = AlarmQueue.from_url(args.database)
    empty(queue)
    rows: list[dict[str, Any]] = []
    filled = 0
    far = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    with tempfile.TemporaryDirectory(prefix="calalarm-size-") as tmp:
        for size in args.size_list:
            started = time.perf_counter()
            result = queue.enqueue(alarms_for(f"fill{filled}", size - filled, far, 14 * 86400), now=datetime.now(UTC))
            enqueue_seconds = time.perf_counter() - started
            filled = size
            claims = measure_claims(queue, args.claims, args.batch, str(size))
            rss = alarmd_rss(args.database, queue, str(size), Path(tmp))
            rows.append(
                {
                    "pending": size,
                    "enqueued": result.added,
                    "enqueue_per_s": round(result.added / enqueue_seconds),
                    "claim_median_ms": round(statistics.median(claims) * 1000, 2),
                    "claim_max_ms": round(max(claims) * 1000, 2),
                    "alarmd_rss_kib": rss,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    queue.close()
    claim_ratio = rows[-1]["claim_median_ms"] / rows[0]["claim_median_ms"]
    enqueue_rate = statistics.median(r["enqueue_per_s"] for r in rows)
    return {
        "database": make_url(args.database).render_as_string(hide_password=True),
        "batch": args.batch,
        "claims_per_size": args.claims,
        "sizes": rows,
        "enqueue_median_per_s": enqueue_rate,
        "enqueue_goal_per_s": ENQUEUE_GOAL,
        "claim_cost_ratio_largest_to_smallest": round(claim_ratio, 2),
        "claim_flatness_goal": CLAIM_FLATNESS_GOAL,
        "alarmd_rss_ratio_largest_to_smallest": round(rows[-1]["alarmd_rss_kib"] / rows[0]["alarmd_rss_kib"], 2),
        "meets_enqueue_goal": enqueue_rate >= ENQUEUE_GOAL,
        "meets_claim_goal": claim_ratio <= CLAIM_FLATNESS_GOAL,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = bench(args)
    print(json.dumps(result, indent=2))
    first, last = result["sizes"][0], result["sizes"][-1]
    print(
        f"enqueue {result['enqueue_median_per_s']:.0f}/s (goal {ENQUEUE_GOAL:.0f}); claim of {args.batch}: "
        f"{first['claim_median_ms']} ms at {first['pending']} pending, {last['claim_median_ms']} ms at "
        f"{last['pending']} (x{result['claim_cost_ratio_largest_to_smallest']}, goal <= {CLAIM_FLATNESS_GOAL}); "
        f"alarmd RSS {first['alarmd_rss_kib']} KiB -> {last['alarmd_rss_kib']} KiB"
    )


if __name__ == "__main__":
    main()
