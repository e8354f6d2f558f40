"""An independent ledger for the fault scenarios: what was enqueued, against what the SMTP
server received and what the queue says it gave up on.

Nothing here trusts the system under test to count for itself. An *instance* is identified
the way a recipient sees it, by the ``X-Alarm-Ref`` and ``X-Alarm-Trigger`` headers of its
reminder (:class:`Key`); the queue's verdicts (``alarmctl list --state failed|expired
--json``) only explain an instance that never arrived. Every enqueued instance ends in
exactly one column:

- ``delivered``: received at least once;
- ``failed`` / ``expired``: never received, and the queue gives it up with a reason;
- ``lost``: neither (never received, and the queue has no reasoned verdict: still pending,
  in flight, deleted, or given up without a reason).

Besides: ``duplicates`` (receptions beyond the first of an instance), ``unexpected``
(receptions of an instance nobody enqueued) and ``contradictions`` (received, yet the queue
says it was expired or failed: a verdict that is not true).

The rest are the pure sums of a scenario's report: the recovery time after a fault
(:func:`recovery_seconds`), whether a rate limit held (:func:`rate_excess`), and the rows
the scenarios write and :mod:`tests.benchmarks.reliability_report` turns into a table
(:class:`ScenarioRow`, :func:`markdown_table`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

SAMPLES = 5  # instances quoted per kind of problem


class Key(NamedTuple):
    """One alarm instance as its reminder names it: event reference and trigger instant."""

    ref: str
    trigger: str  # normalised by :func:`key`: ``YYYY-MM-DDTHH:MM:SS.mmmZ``

    def __str__(self) -> str:
        return f"{self.ref} {self.trigger}"


def normalise_trigger(text: str) -> str:
    """An ISO 8601 instant (``Z`` or an offset, with or without fractions) in one spelling,
    ``2026-11-23T10:00:00.000Z``: the payload, the header and ``alarmctl list`` write it
    differently. Text that is not an instant is returned stripped (it then matches nothing
    enqueued and counts as unexpected)."""
    stripped = text.strip()
    try:
        value = datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return stripped
    if value.tzinfo is None:
        return stripped
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key(ref: str, trigger: str) -> Key:
    return Key(ref.strip(), normalise_trigger(trigger))


@dataclass(frozen=True)
class Verdict:
    """What the queue says became of an instance it gave up on."""

    state: str  # "failed" | "expired"
    reason: str


def verdicts_from_listing(rows: Iterable[Mapping[str, Any]]) -> dict[Key, Verdict]:
    """The verdicts in ``alarmctl list --state failed|expired --json`` output (entries with
    ``ref``, ``trigger``, ``state``, ``last_error``); other states are ignored."""
    verdicts: dict[Key, Verdict] = {}
    for row in rows:
        state = str(row.get("state", ""))
        if state not in ("failed", "expired"):
            continue
        verdicts[key(str(row["ref"]), str(row["trigger"]))] = Verdict(state, str(row.get("last_error") or ""))
    return verdicts


@dataclass(frozen=True)
class Ledger:
    """The reconciliation (see the module doc); ``*_samples`` quote a few instances of each problem."""

    alarms: int
    delivered: int
    failed: int
    expired: int
    lost: int
    duplicates: int  # receptions beyond the first, over every enqueued instance
    duplicated: int  # instances received more than once
    unexpected: int  # receptions of instances not enqueued
    contradictions: int  # received although the queue says expired or failed
    lost_samples: tuple[str, ...] = ()
    duplicate_samples: tuple[str, ...] = ()
    unexpected_samples: tuple[str, ...] = ()
    contradiction_samples: tuple[str, ...] = ()
    failure_reasons: dict[str, int] = field(default_factory=dict)  # reason (first 80 characters) → instances

    @property
    def accounted(self) -> bool:
        """Every instance delivered, failed or expired with a reason: none lost, nothing unexplained."""
        return self.lost == 0 and self.unexpected == 0 and self.contradictions == 0

    def summary(self) -> str:
        text = (
            f"{self.alarms} alarms: {self.delivered} delivered, {self.failed} failed, {self.expired} expired, "
            f"{self.lost} lost, {self.duplicates} duplicate receptions ({self.duplicated} instances), "
            f"{self.unexpected} unexpected, {self.contradictions} contradictions"
        )
        for name, samples in (
            ("lost", self.lost_samples),
            ("duplicated", self.duplicate_samples),
            ("unexpected", self.unexpected_samples),
            ("contradicted", self.contradiction_samples),
        ):
            if samples:
                text += f"\n  {name}: " + "; ".join(samples)
        return text


def reconcile(
    enqueued: Iterable[Key], received: Iterable[Key], verdicts: Mapping[Key, Verdict] | None = None
) -> Ledger:
    """Reconcile what was enqueued with what the SMTP server received (one key per accepted
    message, in any order) and the queue's ``verdicts`` (see the module doc)."""
    expected = list(dict.fromkeys(enqueued))
    wanted = set(expected)
    verdicts = verdicts or {}
    seen: Counter[Key] = Counter()
    strangers: Counter[Key] = Counter()
    for item in received:
        if item in wanted:
            seen[item] += 1
        else:
            strangers[item] += 1
    failed = expired = 0
    lost: list[Key] = []
    contradicted: list[str] = []
    reasons: Counter[str] = Counter()
    for item in expected:
        verdict = verdicts.get(item)
        if seen[item]:
            if verdict is not None:
                contradicted.append(f"{item} (received, yet {verdict.state}: {verdict.reason[:80]})")
            continue
        if verdict is None or not verdict.reason.strip():
            lost.append(item)
        elif verdict.state == "failed":
            failed += 1
            reasons[verdict.reason[:80]] += 1
        else:
            expired += 1
            reasons[verdict.reason[:80]] += 1
    twice = [(item, n) for item, n in seen.items() if n > 1]
    return Ledger(
        alarms=len(expected),
        delivered=sum(1 for item in expected if seen[item]),
        failed=failed,
        expired=expired,
        lost=len(lost),
        duplicates=sum(n - 1 for _item, n in twice),
        duplicated=len(twice),
        unexpected=sum(strangers.values()),
        contradictions=len(contradicted),
        lost_samples=tuple(str(item) for item in lost[:SAMPLES]),
        duplicate_samples=tuple(f"{item} x{n}" for item, n in twice[:SAMPLES]),
        unexpected_samples=tuple(str(item) for item in list(strangers)[:SAMPLES]),
        contradiction_samples=tuple(contradicted[:SAMPLES]),
        failure_reasons=dict(reasons.most_common()),
    )


# --------------------------------------------------------------------------- timing


def recovery_seconds(fault_start: float, fault_end: float, receptions: Iterable[tuple[float, float]]) -> float | None:
    """Seconds from the end of a fault to the first reception, at or after that end, of an
    instance due after the fault began: one that only a recovered system could have sent.
    ``receptions`` are (received at, trigger) pairs in seconds since the epoch; None when
    nothing due after ``fault_start`` arrived after ``fault_end``."""
    after = [at for at, trigger in receptions if at >= fault_end and trigger > fault_start]
    return round(min(after) - fault_end, 3) if after else None


def max_in_window(times: Iterable[float], window: float) -> int:
    """The most events of ``times`` within any span of ``window`` seconds (``(t - window, t]``)."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class RateExcess:
    """A span in which more events happened than a token bucket allows."""

    window: float
    events: int
    allowed: float


def rate_excess(
    times: Sequence[float], rate: float, burst: float, windows: Iterable[float] = (1.0, 2.0, 5.0)
) -> list[RateExcess]:
    """The spans in which a token bucket of ``rate`` per second holding at most ``burst`` was
    overdrawn: more than ``burst + rate * window`` events within ``window`` seconds (for each
    of ``windows``). Empty when the limit held."""
    excess = []
    for window in windows:
        events = max_in_window(times, window)
        allowed = burst + rate * window
        if events > allowed:
            excess.append(RateExcess(window, events, allowed))
    return excess


def crash_window_duplicates(
    duplicated_at: Iterable[float], crashes: Sequence[float], *, before: float = 2.0, after: float = 0.1
) -> tuple[list[int], list[float]]:
    """Attribute duplicates to crashes: a reminder mailed twice because its sender crashed
    between the server's acceptance and the delivery record was first accepted shortly
    before that crash. ``duplicated_at`` are the first receptions of the duplicated
    instances, ``crashes`` the crash times (seconds since the epoch). Each duplicate goes to
    the first crash at most ``after`` seconds before and at most ``before`` seconds after
    its first reception. Returns the duplicates per crash and the first receptions that no
    crash explains."""
    order = sorted(range(len(crashes)), key=lambda i: crashes[i])
    counts = [0] * len(crashes)
    unexplained: list[float] = []
    for at in sorted(duplicated_at):
        found = next((i for i in order if at - after <= crashes[i] <= at + before), None)
        if found is None:
            unexplained.append(at)
        else:
            counts[found] += 1
    return counts, unexplained


# --------------------------------------------------------------------------- rows


@dataclass
class ScenarioRow:
    """One scenario's line of the reliability report (``recovery_s`` None: not measured)."""

    scenario: str
    alarms: int
    delivered: int
    failed: int
    expired: int
    lost: int
    duplicates: int
    recovery_s: float | None
    passed: bool
    seed: int
    duration_s: float = 0.0
    unexpected: int = 0
    contradictions: int = 0
    notes: str = ""
    known_bug: bool = False  # failed only as a known bug (its test is marked xfail) says it would

    @classmethod
    def from_ledger(
        cls,
        scenario: str,
        ledger: Ledger,
        *,
        recovery_s: float | None,
        passed: bool,
        seed: int,
        duration_s: float = 0.0,
        notes: str = "",
        known_bug: bool = False,
    ) -> ScenarioRow:
        return cls(
            scenario=scenario,
            alarms=ledger.alarms,
            delivered=ledger.delivered,
            failed=ledger.failed,
            expired=ledger.expired,
            lost=ledger.lost,
            duplicates=ledger.duplicates,
            recovery_s=recovery_s,
            passed=passed,
            seed=seed,
            duration_s=round(duration_s, 1),
            unexpected=ledger.unexpected,
            contradictions=ledger.contradictions,
            notes=notes,
            known_bug=known_bug,
        )


def append_row(path: Path, row: ScenarioRow) -> None:
    """Add ``row`` to the JSON-lines file ``path`` (created when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(row), sort_keys=True) + "\n")


def read_rows(path: Path) -> list[ScenarioRow]:
    """The rows :func:`append_row` wrote, in order (none when the file does not exist)."""
    if not path.exists():
        return []
    names = set(ScenarioRow.__dataclass_fields__)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            data = json.loads(line)
            rows.append(ScenarioRow(**{name: value for name, value in data.items() if name in names}))
    return rows


COLUMNS = ("scenario", "alarms", "delivered", "failed", "expired", "lost", "duplicates", "recovery time", "result")


def markdown_table(rows: Sequence[ScenarioRow]) -> str:
    """The report's table: one line per row, numbers right-aligned, the recovery time in seconds."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 2) + "---|",
    ]
    for row in rows:
        recovery = "n/a" if row.recovery_s is None else f"{row.recovery_s:.1f} s"
        cells = [
            row.scenario,
            f"{row.alarms:,}",
            f"{row.delivered:,}",
            f"{row.failed:,}",
            f"{row.expired:,}",
            f"{row.lost:,}",
            f"{row.duplicates:,}",
            recovery,
            "pass" if row.passed else ("**FAIL** (known bug)" if row.known_bug else "**FAIL**"),
        ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"
