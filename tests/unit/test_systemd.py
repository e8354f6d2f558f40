"""common.systemd against a real AF_UNIX datagram socket bound by the test (a path and an abstract one)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.systemd import SystemdNotifier, WatchdogSettingError, watchdog, watchdog_interval


class Receiver:
    """The service manager's end: a bound datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as in $NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)
        self.sock.settimeout(2.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every message waiting now, without waiting for more."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(2.0)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    if request.param == "abstract":
        r = Receiver(f"@calalarm-test-{uuid.uuid4().hex}")
        yield r
        r.sock.close()
        return
    with tempfile.TemporaryDirectory(prefix="sd-") as directory:  # short: AF_UNIX paths end at 108 bytes
        r = Receiver(str(Path(directory) / "notify"))
        yield r
        r.sock.close()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda n: n.ready("dispatching; bus amqp://h/v"), "READY=1\nSTATUS=dispatching; bus amqp://h/v"),
        (lambda n: n.status("waiting\nfor the bus"), "STATUS=waiting for the bus"),
        (lambda n: n.stopping(), "STOPPING=1\nSTATUS=stopping"),
        (lambda n: n.watchdog(), "WATCHDOG=1"),
    ],
)
def test_each_message_is_one_datagram(
    receiver: Receiver, send: Callable[[SystemdNotifier], bool], expected: str
) -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": receiver.address})
    assert notifier.enabled
    assert send(notifier) is True
    assert receiver.recv() == expected
    notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert notifier._socket is None


def test_an_address_of_another_kind_is_refused_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier("vsock:2:1234")
    assert not notifier.enabled
    assert "neither a path nor '@name'" in caplog.text


def test_a_failed_send_returns_false_and_warns_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.WARNING, logger="common.systemd"):
        assert notifier.ready("up") is False
        assert notifier.watchdog() is False
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # a parent's watchdog
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"WATCHDOG_USEC": "30s"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "1", "WATCHDOG_PID": "x"},
    ],
)
def test_a_malformed_watchdog_setting_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(WatchdogSettingError):
        watchdog_interval(env)


async def test_the_watchdog_pings_while_the_loop_turns_and_stops_when_it_blocks(receiver: Receiver) -> None:
    notifier = SystemdNotifier(receiver.address)
    async with watchdog(notifier, {"WATCHDOG_USEC": "100000"}) as interval:  # a ping every 50 ms
        assert interval == 0.05
        await asyncio.sleep(0.3)
        assert len(receiver.drain()) >= 3
        time.sleep(0.3)  # noqa: ASYNC251 - a blocked event loop, on purpose
        assert receiver.drain() == [], "a blocked loop must not ping"
        await asyncio.sleep(0.3)
        pings = receiver.drain()
        assert len(pings) >= 3
        assert set(pings) == {"WATCHDOG=1"}
    await asyncio.sleep(0.15)
    assert receiver.drain() == [], "no ping after the block"
    notifier.close()


async def test_no_watchdog_without_a_socket_or_a_valid_setting(caplog: pytest.LogCaptureFixture) -> None:
    async with watchdog(SystemdNotifier(None), {"WATCHDOG_USEC": "100000"}) as interval:
        assert interval is None
    async with watchdog(SystemdNotifier("/run/nowhere"), {"WATCHDOG_USEC": "soon"}) as interval:
        assert interval is None
    assert "systemd watchdog not pinged" in caplog.text
    async with watchdog(SystemdNotifier("/run/nowhere"), {}) as interval:
        assert interval is None
