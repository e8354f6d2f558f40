"""Pure timing policy: how long to wait before trying an instance again."""

from __future__ import annotations

from datetime import timedelta

RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
PUBLISH_RETRY = timedelta(seconds=5)


def retry_delay(attempt: int, *, base: timedelta = RETRY_BASE, cap: timedelta = RETRY_CAP) -> timedelta:
    """Exponential backoff after a ``retry`` ack for ``attempt`` (1-based): 30 s, 60 s, 2 min … 1 h."""
    if attempt < 1:
        attempt = 1
    return min(base * (1 << min(attempt - 1, 20)), cap)


def parse_renl_id(renl_id: str) -> tuple[int, int] | None:
    """``"42:3"`` → (instance 42, attempt 3); None for anything else."""
    alarm_id, sep, attempt = renl_id.partition(":")
    if not sep or not alarm_id.isdigit() or not attempt.isdigit():
        return None
    return int(alarm_id), int(attempt)
