"""start_when_reachable: a service waits for its broker instead of exiting."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from common.ens import startup
from common.ens.abc import BusError, BusUnavailable
from common.ens.memory import MemoryBus


class LateBus(MemoryBus):
    """A bus whose broker answers only from the ``failures + 1``-th start on."""

    def __init__(self, failures: int, error: BusError | None = None) -> None:
        super().__init__()
        self.failures = failures
        self.error = error or BusUnavailable("connection refused")
        self.attempts = 0

    async def start(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        await super().start()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "FIRST_RETRY", 0.01)


async def test_the_bus_is_started_once_the_broker_answers(caplog: pytest.LogCaptureFixture) -> None:
    bus = LateBus(failures=3)
    assert await startup.start_when_reachable(bus, asyncio.Event(), service="alarmd")
    assert bus.attempts == 4
    waits = [r.getMessage() for r in caplog.records if "waiting for the bus" in r.getMessage()]
    assert len(waits) == 3
    assert "alarmd is waiting for the bus: connection refused; retrying in 0.0s" in waits[0]
    await bus.close()


async def test_the_backoff_doubles_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_wait_for = asyncio.wait_for

    async def record(awaitable: Coroutine[Any, Any, bool], timeout: float) -> bool:  # noqa: ASYNC109 - the stub
        delays.append(timeout)
        return await real_wait_for(awaitable, 0)

    monkeypatch.setattr(startup, "MAX_RETRY", 0.05)
    monkeypatch.setattr(asyncio, "wait_for", record)  # the module startup waits with
    assert await startup.start_when_reachable(LateBus(failures=5), asyncio.Event(), service="notifyd")
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05]


async def test_a_stop_while_waiting_returns_false_without_waiting_out_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(startup, "FIRST_RETRY", 60.0)
    bus = LateBus(failures=1000)
    stop = asyncio.Event()
    waiting = asyncio.create_task(startup.start_when_reachable(bus, stop, service="alarmd"))
    await asyncio.sleep(0.05)
    stop.set()
    assert await asyncio.wait_for(waiting, 1.0) is False
    assert bus.attempts == 1


async def test_an_error_that_waiting_cannot_fix_is_raised_at_once() -> None:
    bus = LateBus(failures=1, error=BusError("exchange 'x' is declared with another type"))
    with pytest.raises(BusError, match="another type"):
        await startup.start_when_reachable(bus, asyncio.Event(), service="alarmd")
    assert bus.attempts == 1
