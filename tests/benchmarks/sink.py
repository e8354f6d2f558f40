"""An SMTP sink for the benchmarks: aiosmtpd in a process of its own, counting what it accepts.

    with SmtpSink() as sink:
        ...  # send to sink.host:sink.port
        print(sink.messages, sink.octets, sink.cpu_seconds)

Every message is accepted (``250 OK``) and counted, never parsed or stored, so the
sink costs as little per message as aiosmtpd allows. It runs in a separate process
(``spawn``), so the client being measured has an event loop and a GIL of its own.
The counters live in shared memory and are updated before the reply goes out: once
a client has its ``250`` for a message, :attr:`SmtpSink.messages` includes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import time
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import SMTP

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class _Counting:
    """The aiosmtpd handler: count the message and its octets, accept it."""

    def __init__(self, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double) -> None:
        self._messages = messages
        self._octets = octets
        self._cpu = cpu

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self._octets.value += len(envelope.original_content or b"")
        self._messages.value += 1
        self._cpu.value = time.process_time()
        return "250 OK"


async def _serve(conn: Connection, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double) -> None:
    loop = asyncio.get_running_loop()
    handler = _Counting(messages, octets, cpu)
    server = await loop.create_server(lambda: SMTP(handler, hostname="bench-sink"), HOST, 0)
    conn.send(int(server.sockets[0].getsockname()[1]))
    try:
        # Blocks a worker thread until the parent says stop (or goes away: EOFError).
        await loop.run_in_executor(None, conn.recv)
    except EOFError:
        pass
    finally:
        server.close()


def serve(conn: Connection, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double) -> None:
    """The sink process: listen on a free port of 127.0.0.1, send the port, serve until told to stop."""
    asyncio.run(_serve(conn, messages, octets, cpu))


class SmtpSink:
    """A running sink (see the module doc); a context manager."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._messages = context.RawValue(ctypes.c_int64, 0)
        self._octets = context.RawValue(ctypes.c_int64, 0)
        self._cpu = context.RawValue(ctypes.c_double, 0.0)
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child, self._messages, self._octets, self._cpu), name="smtp-sink", daemon=True
        )
        self.host = HOST
        self.port = 0

    def __enter__(self) -> SmtpSink:
        self._process.start()
        if not self._conn.poll(START_TIMEOUT):
            self._process.terminate()
            raise RuntimeError(f"the SMTP sink did not start within {START_TIMEOUT:g}s")
        try:
            self.port = int(self._conn.recv())
        except EOFError:
            self._process.join(STOP_TIMEOUT)
            raise RuntimeError(f"the SMTP sink exited on start (exit code {self._process.exitcode})") from None
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def messages(self) -> int:
        """Messages accepted so far."""
        return int(self._messages.value)

    @property
    def octets(self) -> int:
        """Octets of message data accepted so far."""
        return int(self._octets.value)

    @property
    def cpu_seconds(self) -> float:
        """The sink process's CPU time as of its last accepted message."""
        return float(self._cpu.value)

    def close(self) -> None:
        if not self._process.is_alive():
            return
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(STOP_TIMEOUT)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_TIMEOUT)
        self._conn.close()
