"""alarmd.policy: backoff with jitter, staleness, the catch-up token bucket (pure, plain values)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alarmd.policy import TokenBucket, is_stale, retry_delay

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (0.5, 1.0), (0.999999, 1.2)])
def test_jitter_spreads_the_delay_by_twenty_percent(rand: float, factor: float) -> None:
    delay = retry_delay(2, jitter=0.2, rand=lambda: rand)
    assert delay.total_seconds() == pytest.approx(60 * factor, rel=1e-4)


@given(st.integers(min_value=-3, max_value=100), st.floats(min_value=0, max_value=0.999999))
def test_a_jittered_delay_stays_within_its_bounds(attempt: int, rand: float) -> None:
    plain = retry_delay(attempt)
    jittered = retry_delay(attempt, jitter=0.2, rand=lambda: rand)
    assert plain * 0.8 - timedelta(microseconds=1) <= jittered <= min(plain * 1.2, timedelta(hours=1))


def test_base_and_cap_are_parameters() -> None:
    base, cap = timedelta(seconds=10), timedelta(seconds=25)
    assert [retry_delay(n, base=base, cap=cap).total_seconds() for n in (1, 2, 3, 4)] == [10, 20, 25, 25]


def test_staleness() -> None:
    hour = timedelta(hours=1)
    assert not is_stale(T0, T0 + hour, hour)
    assert is_stale(T0, T0 + hour + timedelta(microseconds=1), hour)
    assert not is_stale(T0, T0 + timedelta(days=365), timedelta(0))  # 0: always send


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=20.0, now=T0)
    assert bucket.available(T0) == 20
    bucket.take(20)
    assert bucket.available(T0) == 0
    assert bucket.seconds_until(5) == pytest.approx(0.5)
    assert bucket.available(T0 + timedelta(seconds=0.5)) == 5
    assert bucket.available(T0 + timedelta(hours=1)) == 20  # never more than the burst
    bucket.take(50)
    assert bucket.available(T0 + timedelta(hours=1)) == 0


def test_token_bucket_gains_nothing_when_the_clock_goes_back() -> None:
    bucket = TokenBucket.full(rate=10.0, burst=10.0, now=T0)
    bucket.take(10)
    assert bucket.available(T0 - timedelta(hours=1)) == 0
    assert bucket.available(T0 + timedelta(seconds=0.3)) == 3
