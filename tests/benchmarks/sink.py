"""An SMTP sink for the benchmarks: aiosmtpd in a process of its own, counting what it accepts.

    with SmtpSink() as sink:
        ...  # send to sink.host:sink.port
        print(sink.messages, sink.octets, sink.cpu_seconds)

Every message is accepted (``250 OK``) and counted, never parsed or stored, so the
sink costs as little per message as aiosmtpd allows. It runs in a separate process
(``spawn``), so the client being measured has an event loop and a GIL of its own.
The counters live in shared memory and are updated before the reply goes out: once
a client has its ``250`` for a message, :attr:`SmtpSink.messages` includes it.

``SmtpSink(record=True)`` also keeps, per accepted message, a :class:`Received`: the
wall-clock time (``time.time()``) just before the ``250`` went out and the message's
``X-Alarm-Ref`` and ``X-Alarm-Trigger`` headers (found by a byte search in the header
block, unfolded; ``""`` when absent). :meth:`SmtpSink.records` fetches them over the
pipe (a few microseconds per message in the sink, so the counting stays cheap).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import re
import time
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RECORDS = "records"  # the parent's request for the records (then True to clear them, or False)
_HEADER_END = b"\r\n\r\n"
_ALARM_REF = re.compile(rb"^X-Alarm-Ref:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.MULTILINE | re.IGNORECASE)
_ALARM_TRIGGER = re.compile(rb"^X-Alarm-Trigger:[ \t]*([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", re.MULTILINE | re.IGNORECASE)


class Received(NamedTuple):
    """One accepted message, as ``SmtpSink(record=True)`` keeps it."""

    at: float  # time.time() in the sink just before its 250 reply
    ref: str  # the X-Alarm-Ref header, unfolded ("" when absent)
    trigger: str  # the X-Alarm-Trigger header ("" when absent)


def _header(pattern: re.Pattern[bytes], block: bytes) -> str:
    found = pattern.search(block)
    if found is None:
        return ""
    return found.group(1).replace(b"\r\n", b"").strip().decode("ascii", "replace")


class _Counting:
    """The aiosmtpd handler: count the message and its octets (record it, if asked), accept it."""

    def __init__(
        self, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double, record: bool = False
    ) -> None:
        self._messages = messages
        self._octets = octets
        self._cpu = cpu
        self._record = record
        self.records: list[Received] = []

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        content = envelope.original_content or b""
        if self._record:
            end = content.find(_HEADER_END)
            block = b"\r\n" + (content if end < 0 else content[:end])
            self.records.append(Received(time.time(), _header(_ALARM_REF, block), _header(_ALARM_TRIGGER, block)))
        self._octets.value += len(content)
        self._messages.value += 1
        self._cpu.value = time.process_time()
        return "250 OK"


async def _serve(
    conn: Connection, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double, record: bool = False
) -> None:
    loop = asyncio.get_running_loop()
    handler = _Counting(messages, octets, cpu, record)
    server = await loop.create_server(lambda: SMTP(handler, hostname="bench-sink"), HOST, 0)
    conn.send(int(server.sockets[0].getsockname()[1]))
    try:
        while True:
            # Blocks a worker thread until the parent asks for something: None (or the
            # parent going away: EOFError) means stop; (RECORDS, clear) the records.
            request = await loop.run_in_executor(None, conn.recv)
            if request is None:
                break
            if isinstance(request, tuple) and request and request[0] == RECORDS:
                conn.send(list(handler.records))  # on the loop's thread: no handler runs meanwhile
                if request[1]:
                    handler.records.clear()
    except EOFError:
        pass
    finally:
        server.close()


def serve(
    conn: Connection, messages: ctypes.c_int64, octets: ctypes.c_int64, cpu: ctypes.c_double, record: bool = False
) -> None:
    """The sink process: listen on a free port of 127.0.0.1, send the port, serve until told to stop."""
    asyncio.run(_serve(conn, messages, octets, cpu, record))


class SmtpSink:
    """A running sink (see the module doc); a context manager."""

    def __init__(self, *, record: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self._messages = context.RawValue(ctypes.c_int64, 0)
        self._octets = context.RawValue(ctypes.c_int64, 0)
        self._cpu = context.RawValue(ctypes.c_double, 0.0)
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve,
            args=(child, self._messages, self._octets, self._cpu, record),
            name="smtp-sink",
            daemon=True,
        )
        self.host = HOST
        self.port = 0
        self.recording = record

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

    @property
    def pid(self) -> int | None:
        """The sink process's id (None before it starts)."""
        return self._process.pid

    @property
    def url(self) -> str:
        """The sink as an ``smtp://`` URL (plain text: give it ``smtp.allow_plaintext = true``)."""
        return f"smtp://{self.host}:{self.port}"

    def records(self, *, clear: bool = False) -> list[Received]:
        """What the sink accepted since it started (or was last cleared), oldest first;
        ``clear`` forgets them after. Only with ``SmtpSink(record=True)``. Blocks while the
        records cross the pipe (about a second for 100,000), so call it between timed runs."""
        if not self.recording:
            raise RuntimeError("this sink does not record: make it with SmtpSink(record=True)")
        self._conn.send((RECORDS, clear))
        records: list[Received] = self._conn.recv()
        return records

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
