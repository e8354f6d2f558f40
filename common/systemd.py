"""systemd's service notifications (sd_notify(3)): readiness, status, stopping, watchdog.

The protocol is one datagram of ``KEY=value`` lines per message, sent to the AF_UNIX
socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket); with
no ``$NOTIFY_SOCKET`` (not run by systemd, or ``Type=`` is not ``notify``) every call
here does nothing. It is written out here rather than taken from a library: ``sdnotify``
(pure Python) has had no release since 2017 and hides every error; ``systemd-python`` and
``cysystemd`` are C extensions built against libsystemd's headers. Neither ties the
watchdog to the event loop, which is the part that matters.

The watchdog (``WatchdogSec=``, passed on as ``$WATCHDOG_USEC``) is pinged by a task on
the service's own event loop, every half interval: while the loop turns the pings go
out; a loop that blocks or stalls stops them, and systemd kills and restarts the
service. A failed send never stops the service: it is logged once, as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping

log = logging.getLogger(__name__)


class WatchdogSettingError(ValueError):
    """``$WATCHDOG_USEC`` or ``$WATCHDOG_PID`` is not a positive integer."""


class SystemdNotifier:
    """Tells the service manager about state changes; a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None) -> None:
        self.address = address  # as in $NOTIFY_SOCKET
        self._target = _socket_address(address)
        self._socket: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one message; False if there is no socket or the send failed."""
        if self._target is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # never stall the event loop (a full queue drops the message)
            self._socket.sendto("\n".join(assignments).encode(), self._target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd at %s: %s (further failures are not logged)", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", _status(status))

    def status(self, status: str) -> bool:
        return self.notify(_status(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", _status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog watches this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    watched = env.get("WATCHDOG_PID")
    if watched and _positive_int("WATCHDOG_PID", watched) != (os.getpid() if pid is None else pid):
        return None  # inherited from a parent that is the one watched
    return _positive_int("WATCHDOG_USEC", usec) / 2_000_000


@contextlib.asynccontextmanager
async def watchdog(notifier: SystemdNotifier, env: Mapping[str, str] | None = None) -> AsyncIterator[float | None]:
    """Ping ``WATCHDOG=1`` from this event loop while the block runs; yields the interval (None: no watchdog)."""
    try:
        interval = watchdog_interval(env) if notifier.enabled else None
    except WatchdogSettingError as exc:
        log.warning("systemd watchdog not pinged: %s", exc)
        interval = None
    if interval is None:
        yield None
        return
    task = asyncio.create_task(_ping(notifier, interval), name="systemd:watchdog")
    try:
        yield interval
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ping(notifier: SystemdNotifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


def _socket_address(address: str | None) -> str | bytes | None:
    if not address:
        return None
    if address.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET=%r is neither a path nor '@name'; not notifying systemd", address)
    return None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())  # one line


def _positive_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise WatchdogSettingError(f"${name}={value!r} is not an integer") from None
    if number <= 0:
        raise WatchdogSettingError(f"${name}={value!r} is not positive")
    return number
