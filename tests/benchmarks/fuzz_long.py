"""A long fuzzing soak of the iCalendar entry point and the bus consumers (not part of ``make test``).

    .venv/bin/python -m tests.benchmarks.fuzz_long [--minutes 60] [--examples 2000]
    .venv/bin/python -m tests.benchmarks.fuzz_long --atheris [--minutes 60]

The first runs the hypothesis tests of ``tests/fuzz/`` again and again, each time with
``CALALARM_FUZZ_EXAMPLES`` examples per test and a new random seed, until the time is up
or a run fails (hypothesis then prints the smallest failing input; it is also kept in
``.hypothesis/`` and replayed first by the next run).

``--atheris`` runs a coverage-guided byte-level fuzzer over ``parse_calendar`` and
``plan_queue`` instead, seeded with ``tests/corpus/`` (atheris must be installed:
``pip install atheris``, which is not one of the project's dependencies). It found what
hypothesis had not: ``EXDATE;VALUE=DATE,X:…`` made icalendar raise AttributeError through
``parse_calendar``. Inputs that fail are written to ``var/fuzz/crash-*``; each must become a
regression test in tests/fuzz/test_calendar_input.py once fixed; the run stops at the first.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HYPOTHESIS_TESTS = [
    "tests/fuzz/test_calendar_input.py::test_hostile_objects_never_cost_the_good_object_its_alarm",
    "tests/fuzz/test_calendar_input.py::test_mutated_corpus_files_fail_clearly",
    "tests/fuzz/test_calendar_input.py::test_random_bytes_fail_clearly",
    "tests/fuzz/test_calendar_input.py::test_absurd_rules_are_planned_or_refused_in_bounded_time",
    "tests/fuzz/test_calendar_input.py::test_put_stores_the_good_object_whatever_stands_beside_it",
    "tests/fuzz/test_bus_input.py::test_notifyd_survives_hostile_notifications",
    "tests/fuzz/test_bus_input.py::test_forged_and_garbage_acks_change_nothing",
]

ATHERIS_TARGET = """
import sys
from datetime import UTC, datetime, timedelta

import atheris

with atheris.instrument_imports():
    from alarmd import recurrence
    from alarmd.ical import CalendarError, parse_calendar
    from alarmd.triggers import plan_queue

recurrence.MAX_RULE_STEPS = 200_000  # a never-ending rule is refused in 0.1 s instead of 1 to 2 s
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


def one(data: bytes) -> None:
    try:
        parsed = parse_calendar(data)
    except CalendarError:
        return
    for obj in parsed.objects:
        try:
            plan_queue(obj, calid="c", tz=UTC, now=NOW, horizon=timedelta(days=2))
        except CalendarError:
            pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


def hypothesis_soak(minutes: float, examples: int) -> int:
    deadline = time.monotonic() + minutes * 60
    env = {**os.environ, "CALALARM_FUZZ_EXAMPLES": str(examples)}
    env.pop("CI", None)  # a new random seed each round
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        print(f"round {rounds}: {examples} examples per test", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *HYPOTHESIS_TESTS], cwd=ROOT, env=env
        )
        if done.returncode != 0:
            return done.returncode
    print(f"{rounds} rounds without a failure")
    return 0


def atheris_soak(minutes: float) -> int:
    if importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    work = ROOT / "var" / "fuzz"
    seeds = work / "corpus"
    seeds.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "tests" / "corpus").glob("*.ics"):
        shutil.copy(path, seeds / path.name)
    target = work / "atheris_target.py"
    target.write_text(ATHERIS_TARGET)
    flags = [
        f"-max_total_time={int(minutes * 60)}",
        "-timeout=20",  # seconds for one input: a hang
        "-rss_limit_mb=2048",
        "-max_len=20000",
        f"-artifact_prefix={work}/",  # the first failing input stops the run (-fork=1 did not work here)
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(target), *flags, str(seeds)], cwd=work, env=env).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples per test and round")
    parser.add_argument("--atheris", action="store_true", help="coverage-guided byte fuzzing instead")
    args = parser.parse_args()
    sys.exit(atheris_soak(args.minutes) if args.atheris else hypothesis_soak(args.minutes, args.examples))


if __name__ == "__main__":
    main()
