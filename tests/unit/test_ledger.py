"""The fault scenarios' ledger (tests/ledger.py): pure reconciliation, timing and report rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ledger import (
    Key,
    RateExcess,
    ScenarioRow,
    Verdict,
    append_row,
    crash_window_duplicates,
    key,
    markdown_table,
    max_in_window,
    normalise_trigger,
    rate_excess,
    read_rows,
    reconcile,
    recovery_seconds,
    verdicts_from_listing,
)

REF = "enp:///ics/eventalarm?calid=c&uid={}&rid=&aid=1"


def k(n: int, trigger: str = "2026-11-23T10:00:00Z") -> Key:
    return key(REF.format(n), trigger)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("2026-11-23T10:00:00Z", "2026-11-23T10:00:00.000Z"),
        ("2026-11-23T10:00:00.000Z", "2026-11-23T10:00:00.000Z"),
        ("2026-11-23T11:00:00+01:00", "2026-11-23T10:00:00.000Z"),
        (" 2026-11-23T10:00:00.250000+00:00 ", "2026-11-23T10:00:00.250Z"),
        ("2026-11-23T10:00:00", "2026-11-23T10:00:00"),  # no offset: not an instant, kept as written
        ("garbage", "garbage"),
        ("", ""),
    ],
)
def test_a_trigger_has_one_spelling_whoever_wrote_it(text: str, normal: str) -> None:
    assert normalise_trigger(text) == normal


def test_the_header_and_the_listing_name_the_same_instance() -> None:
    assert key(" " + REF.format(1), "2026-11-23T10:00:00Z") == key(REF.format(1), "2026-11-23T10:00:00.000Z")


def test_every_instance_received_once_is_delivered_and_nothing_else() -> None:
    enqueued = [k(1), k(2), k(3)]
    ledger = reconcile(enqueued, [k(3), k(1), k(2)])
    assert (ledger.alarms, ledger.delivered, ledger.lost, ledger.duplicates, ledger.unexpected) == (3, 3, 0, 0, 0)
    assert ledger.accounted


def test_an_instance_never_received_without_a_verdict_is_lost() -> None:
    ledger = reconcile([k(1), k(2)], [k(1)])
    assert (ledger.delivered, ledger.lost, ledger.lost_samples) == (1, 1, (str(k(2)),))
    assert not ledger.accounted
    assert "1 lost" in ledger.summary()
    assert str(k(2)) in ledger.summary()


def test_failed_and_expired_with_a_reason_are_accounted_for() -> None:
    verdicts = {
        k(2): Verdict("failed", "all 1 recipients refused: x@example.com: 550 5.1.1 no such user"),
        k(3): Verdict("expired", "not sent: more than 10 s overdue (alarmd.max_lateness)"),
    }
    ledger = reconcile([k(1), k(2), k(3)], [k(1)], verdicts)
    assert (ledger.delivered, ledger.failed, ledger.expired, ledger.lost) == (1, 1, 1, 0)
    assert ledger.accounted
    assert sum(ledger.failure_reasons.values()) == 2


def test_a_verdict_without_a_reason_does_not_account_for_an_instance() -> None:
    ledger = reconcile([k(1)], [], {k(1): Verdict("failed", "  ")})
    assert (ledger.failed, ledger.lost) == (0, 1)


def test_receptions_beyond_the_first_are_duplicates() -> None:
    ledger = reconcile([k(1), k(2)], [k(1), k(1), k(1), k(2), k(2)])
    assert (ledger.delivered, ledger.duplicates, ledger.duplicated) == (2, 3, 2)
    assert f"{k(1)} x3" in ledger.duplicate_samples
    assert ledger.accounted  # duplicates are judged by the scenario (the crash window), not here


def test_a_reception_nobody_enqueued_is_unexpected() -> None:
    other_trigger = k(1, "2026-11-23T10:00:01Z")
    ledger = reconcile([k(1)], [k(1), other_trigger, k(9)])
    assert (ledger.delivered, ledger.unexpected) == (1, 2)
    assert not ledger.accounted


def test_received_although_the_queue_gave_it_up_is_a_contradiction() -> None:
    ledger = reconcile([k(1), k(2)], [k(1), k(2)], {k(1): Verdict("expired", "too late"), k(2): Verdict("failed", "x")})
    assert (ledger.delivered, ledger.expired, ledger.failed, ledger.contradictions) == (2, 0, 0, 2)
    assert not ledger.accounted


def test_enqueuing_an_instance_twice_counts_it_once() -> None:
    assert reconcile([k(1), k(1)], [k(1)]).alarms == 1


def test_the_verdicts_come_from_the_alarmctl_listing() -> None:
    rows: list[dict[str, Any]] = [
        {"ref": REF.format(1), "trigger": "2026-11-23T10:00:00.000Z", "state": "failed", "last_error": "550 no"},
        {"ref": REF.format(2), "trigger": "2026-11-23T10:00:00.000Z", "state": "expired", "last_error": None},
        {"ref": REF.format(3), "trigger": "2026-11-23T10:00:00.000Z", "state": "pending", "last_error": None},
    ]
    assert verdicts_from_listing(rows) == {k(1): Verdict("failed", "550 no"), k(2): Verdict("expired", "")}


def test_recovery_is_timed_to_the_first_reminder_only_a_recovered_system_could_send() -> None:
    receptions = [
        (100.5, 99.0),  # due before the fault: its notification was in the queue already
        (103.0, 101.0),  # due during the fault, delivered after it
        (104.0, 103.5),
    ]
    assert recovery_seconds(100.0, 102.0, receptions) == 1.0
    assert recovery_seconds(100.0, 105.0, receptions) is None
    assert recovery_seconds(100.0, 102.0, []) is None


def test_events_in_a_window_are_counted_at_their_densest() -> None:
    assert max_in_window([], 1.0) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert max_in_window([5.0, 1.0, 1.0, 1.0], 0.5) == 3  # unordered, simultaneous


def test_a_token_bucket_allows_its_burst_plus_its_rate() -> None:
    # 20 at once (the burst), then 10 a second: within the limit of rate 10, burst 20.
    steady = [0.0] * 20 + [1 + i / 10 for i in range(50)]
    assert rate_excess(steady, 10, 20) == []
    # The burst, then 32 a second from 0.5 s on: 20 + 48 within the first two seconds.
    fast = [0.0] * 20 + [0.5 + i / 32 for i in range(100)]
    excess = rate_excess(fast, 10, 20, windows=[2.0, 5.0])
    assert excess == [RateExcess(2.0, 68, 40.0), RateExcess(5.0, 120, 70.0)]


def test_a_duplicate_is_explained_by_a_crash_just_after_its_first_acceptance() -> None:
    crashes = [110.0, 100.0]  # as given, not in order
    counts, unexplained = crash_window_duplicates([99.5, 99.99, 100.05, 109.0, 105.0, 120.0], crashes)
    assert counts == [1, 3]  # 109.0 → the crash at 110; 99.5, 99.99 and 100.05 (clock slack) → 100
    assert unexplained == [105.0, 120.0]  # nothing crashed within 2 s after them
    assert crash_window_duplicates([], []) == ([], [])
    assert crash_window_duplicates([1.0], []) == ([], [1.0])


def row(name: str, **changes: object) -> ScenarioRow:
    values: dict[str, object] = dict(
        scenario=name, alarms=3000, delivered=2990, failed=10, expired=0, lost=0, duplicates=2, recovery_s=1.25,
        passed=True, seed=7,
    )  # fmt: skip
    values.update(changes)
    return ScenarioRow(**values)  # type: ignore[arg-type]


def test_rows_go_through_a_json_lines_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rows.jsonl"
    assert read_rows(path) == []
    append_row(path, row("kill -9 alarmd"))
    append_row(path, row("downtime", recovery_s=None, notes="a|b"))
    assert read_rows(path) == [row("kill -9 alarmd"), row("downtime", recovery_s=None, notes="a|b")]


def test_the_table_has_a_line_per_scenario() -> None:
    table = markdown_table(
        [
            row("kill -9 alarmd"),
            row("SMTP | faults", recovery_s=None, passed=False),
            row("restart", passed=False, known_bug=True),
        ]
    )
    lines = table.splitlines()
    assert lines[0].startswith("| scenario | alarms | delivered | failed | expired | lost | duplicates |")
    assert lines[2] == "| kill -9 alarmd | 3,000 | 2,990 | 10 | 0 | 0 | 2 | 1.2 s | pass |"
    assert lines[3] == "| SMTP \\| faults | 3,000 | 2,990 | 10 | 0 | 0 | 2 | n/a | **FAIL** |"
    assert lines[4].endswith("| **FAIL** (known bug) |")


def test_a_row_is_made_from_a_ledger() -> None:
    ledger = reconcile([k(1), k(2)], [k(1), k(1)])
    made = ScenarioRow.from_ledger("x", ledger, recovery_s=None, passed=False, seed=3, duration_s=12.345)
    assert (made.alarms, made.delivered, made.lost, made.duplicates, made.duration_s) == (2, 1, 1, 1, 12.3)
