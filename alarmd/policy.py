"""Pure timing policy: backoff, staleness and the catch-up rate. Every function takes ``now``."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
JITTER = 0.2  # each backoff is spread by ±20% so that instances failed together do not return together
PUBLISH_RETRY = timedelta(seconds=5)
MAX_ALARM_ID = 2**63 - 1  # the id column is a signed 64-bit integer (BIGINT; SQLite's INTEGER)
MAX_ATTEMPT = 2**31 - 1  # the attempts column is a signed 32-bit integer
_RENL_ID = re.compile(r"([0-9]{1,19}):([0-9]{1,10})")


def retry_delay(
    attempt: int,
    *,
    base: timedelta = RETRY_BASE,
    cap: timedelta = RETRY_CAP,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """Backoff after attempt ``attempt`` (1-based) got a ``retry`` ack or no ack: ``base``
    doubled per attempt (30 s, 60 s, 2 min … ``cap``), then spread by ±``jitter``
    (``rand`` returns a number in [0, 1); the result never passes ``cap``)."""
    attempt = max(attempt, 1)
    delay = min(base * (1 << min(attempt - 1, 20)), cap)
    if jitter:
        delay = min(delay * (1 - jitter + 2 * jitter * rand()), cap)
    return delay


def jittered_backoff(base_seconds: float, cap_seconds: float) -> Callable[[int], timedelta]:
    """attempt → :func:`retry_delay` with ``base``, ``cap`` and :data:`JITTER`: the backoff
    alarmd uses for retry acks and unanswered attempts alike."""
    base, cap = timedelta(seconds=base_seconds), timedelta(seconds=cap_seconds)
    return lambda attempt: retry_delay(attempt, base=base, cap=cap, jitter=JITTER)


def is_stale(trigger_at: datetime, now: datetime, max_lateness: timedelta) -> bool:
    """An instance never sent that is more than ``max_lateness`` overdue is expired, not sent
    (``max_lateness`` 0: never)."""
    return max_lateness > timedelta(0) and now - trigger_at > max_lateness


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; the caller passes the time."""

    rate: float
    burst: float
    tokens: float
    updated: datetime

    @classmethod
    def full(cls, rate: float, burst: float, now: datetime) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def available(self, now: datetime) -> int:
        """Whole tokens available at ``now`` (the clock going backwards adds none)."""
        elapsed = max((now - self.updated).total_seconds(), 0.0)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = max(now, self.updated)
        return int(self.tokens)

    def take(self, count: int) -> None:
        self.tokens = max(self.tokens - count, 0.0)

    def seconds_until(self, count: float) -> float:
        """Seconds until ``count`` tokens (at most ``burst``) are saved up, counted from the
        last :meth:`available`."""
        return max(min(count, self.burst) - self.tokens, 0.0) / self.rate


def parse_renl_id(renl_id: str) -> tuple[int, int] | None:
    """``"42:3"`` → (instance 42, attempt 3); None for anything alarmd never writes.

    Only ASCII digits (``str.isdigit`` also takes ``٣`` and ``²``), an instance id that
    fits the 64-bit id column and an attempt from 1 that fits an integer column: a
    forged id over 2**63 would fail the whole batch of acks applied with it.
    """
    match = _RENL_ID.fullmatch(renl_id)
    if match is None:
        return None
    alarm_id, attempt = int(match[1]), int(match[2])
    if alarm_id > MAX_ALARM_ID or not 1 <= attempt <= MAX_ATTEMPT:
        return None
    return alarm_id, attempt
