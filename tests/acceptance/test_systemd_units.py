"""The systemd units: systemd-analyze accepts them, and the real services speak sd_notify.

The units start /opt/calalarm/bin/…, which a test machine does not have: they are
verified as copies whose ExecStart= names this virtualenv's commands. The services run
as processes with $NOTIFY_SOCKET naming a datagram socket the test binds (as systemd
does for Type=notify) and $WATCHDOG_USEC of 1 s (as WatchdogSec=1s would set).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_service_startup import free_port
from tests.processes import BIN, base_env, read_log, spawn, terminate
from tests.services import RABBITMQ_URL, require_rabbitmq, unique_exchange

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALLED_BIN = "/opt/calalarm/bin/"
WAIT = 30.0
WATCHDOG_USEC = 1_000_000  # a ping every 0.5 s


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing; CI needs it (.ci/run installs Debian's systemd package)")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def local_copy(directory: Path, unit: str, dropin: str | None = None, *, extra: str = "") -> Path:
    """``unit`` (and ``dropin``) under ``directory``, starting this virtualenv's commands; ``extra``
    lines are added to its [Service] section."""

    def rewritten(source: Path) -> str:
        text = source.read_text(encoding="utf-8")
        assert INSTALLED_BIN in text, f"{source.name} no longer starts {INSTALLED_BIN}…"
        return text.replace(INSTALLED_BIN, f"{BIN}/")

    path = directory / unit
    path.write_text(rewritten(DEPLOY / unit).replace("\n[Install]", f"\n{extra}\n[Install]"), encoding="utf-8")
    if dropin is not None:
        (directory / f"{unit}.d").mkdir()
        (directory / f"{unit}.d" / Path(dropin).name).write_text(rewritten(DEPLOY / dropin), encoding="utf-8")
    return path


def verify(path: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify: its exit status and its complaints about the unit (or its drop-ins)."""
    result = subprocess.run(
        [systemd_analyze(), "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if str(path.parent) in line or path.name in line]


UNITS = [("alarmd.service", None), ("notifyd.service", None), ("alarmd.service", "examples/alarmd-embedded.conf")]


@pytest.mark.parametrize(("unit", "dropin"), UNITS)
def test_systemd_analyze_verify_accepts_the_unit(unit: str, dropin: str | None, tmp_path: Path) -> None:
    code, complaints = verify(local_copy(tmp_path, unit, dropin))
    assert (code, complaints) == (0, [])


def test_verify_reports_a_bad_directive(tmp_path: Path) -> None:
    """The check above means something: an unknown key or a bad value is reported."""
    _code, complaints = verify(local_copy(tmp_path, "alarmd.service", extra="WatchdogSec=soon\nRestartSecs=5\n"))
    assert any("WatchdogSec" in line or "sec value" in line for line in complaints), complaints
    assert any("RestartSecs" in line for line in complaints), complaints


@pytest.mark.parametrize("unit", ["alarmd.service", "notifyd.service"])
def test_the_hardening_keeps_the_exposure_low(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit at most 2.0 ("OK"); 1.2 when written."""
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(local_copy(tmp_path, unit))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


class NotifySocket:
    """The service manager's end of $NOTIFY_SOCKET: every message, with its arrival time."""

    def __init__(self) -> None:
        self.address = f"@calalarm-test-{uuid.uuid4().hex}"  # abstract: no path length limit, nothing to remove
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"\0" + self.address[1:].encode())
        self._sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def with_line(self, line: str) -> list[tuple[float, str]]:
        return [(at, text) for at, text in list(self.messages) if line in text.splitlines()]

    async def wait_for(self, line: str, timeout: float) -> tuple[float, str]:  # noqa: ASYNC109 - a test helper
        deadline = time.monotonic() + timeout
        while not (found := self.with_line(line)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} within {timeout}s; got {self.messages!r}")
            await asyncio.sleep(0.05)
        return found[0]

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sd = NotifySocket()
    yield sd
    sd.close()


async def run_under_notify(
    sd: NotifySocket, command: str, env: dict[str, str], log: Path, *args: str
) -> list[tuple[float, str]]:
    """Start ``command`` as systemd would for Type=notify with a watchdog; check READY, the pings,
    STOPPING on SIGTERM and exit status 0; return the messages."""
    env = {**env, "NOTIFY_SOCKET": sd.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    process = spawn(command, env, log, *args)
    try:
        ready_at, ready = await sd.wait_for("READY=1", WAIT)
        assert any(line.startswith("STATUS=") for line in ready.splitlines()), ready
        await asyncio.sleep(2.6)
        assert process.poll() is None, read_log(log)[-3000:]
    finally:
        signalled_at = time.monotonic()
        code = await terminate(process)
    assert code == 0, read_log(log)[-3000:]
    pings = [at for at, _text in sd.with_line("WATCHDOG=1")]
    assert pings, sd.messages
    assert pings[0] >= ready_at, "the watchdog starts once the service is ready"
    during = [at for at in pings if at <= signalled_at]
    assert len(during) >= 4, f"{len(during)} pings in 2.6 s at a 0.5 s interval"
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap of {max(gaps):.2f}s would have tripped WatchdogSec=1s"
    stopping = sd.with_line("STOPPING=1")
    assert stopping, sd.messages
    assert stopping[0][0] >= signalled_at
    return sd.messages


async def test_alarmd_embedded_notifies_systemd(notify_socket: NotifySocket, tmp_path: Path) -> None:
    env = base_env(
        database_url=f"sqlite:///{tmp_path / 'alarms.db'}",
        bus_url="memory://",
        smtp_url=f"smtp://127.0.0.1:{free_port()}",  # nothing is due, so nothing is sent
        smtp_allow_plaintext="true",
    )
    await run_under_notify(notify_socket, "alarmd", env, tmp_path / "alarmd.log", "--with-notifier")


async def test_notifyd_notifies_systemd(notify_socket: NotifySocket, postgres_url: str, tmp_path: Path) -> None:
    require_rabbitmq()
    env = base_env(
        database_url=postgres_url,
        bus_url=f"{RABBITMQ_URL}?exchange={unique_exchange()}",
        smtp_url=f"smtp://127.0.0.1:{free_port()}",
        smtp_allow_plaintext="true",
    )
    await run_under_notify(notify_socket, "notifyd", env, tmp_path / "notifyd.log")
