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

``SmtpSink(record=True, faults=Faults(...))`` plays a server with faults, for the fault
scenarios (``tests/acceptance/test_fault_scenarios.py``); without ``faults`` none of
this runs and the sink costs what it did. Which instances get a fault is a function of
(``seed``, ``X-Alarm-Ref``, ``X-Alarm-Trigger``) (:meth:`Faults.fault_for`), so the test
can tell which ones it expects to have been retried; only an instance's *first* message
gets its fault, the next one is accepted:

- ``temporary``: a share answered at the end of DATA with a 4xx reply (one of 421, 451
  and 454, by the same hash: the client must try again later);
- ``drop``: a share answered by dropping the connection once the data arrived, before
  any reply (a server that crashed mid-transaction);
- ``slow``: a share answered after ``slow_delay`` seconds (a client that gives up first
  never gets the ``250``: the message is not counted, as aiosmtpd cancels the handler
  when the connection goes);
- ``refuse_prefix``: RCPT TO of an address whose local part starts with it is refused
  with ``refuse_reply`` (``550 …``) every time.

:meth:`SmtpSink.set_faults` replaces the plan while the sink runs;
:meth:`SmtpSink.kill_on_accept` makes the sink SIGKILL a process right after the ``250``
of the next message it accepts has gone out (notifyd killed between the server's
acceptance and its delivery record: the documented crash window, on purpose);
:meth:`SmtpSink.fault_events` lists what the sink did (:class:`FaultEvent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import multiprocessing
import os
import re
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, NamedTuple

from aiosmtpd.smtp import SMTP

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RECORDS = "records"  # the parent's request for the records (then True to clear them, or False)
FAULTS = "faults"  # the parent's request to replace the fault plan (then the Faults)
KILL = "kill-on-accept"  # ... to SIGKILL a process after the next accepted message (then its pid)
EVENTS = "events"  # ... for the fault events so far
DROP_WAIT = 5.0  # seconds a dropped session's handler waits to be cancelled
TEMPORARY_REPLIES = (
    "421 4.3.0 Service shutting down, try again later",
    "451 4.3.0 Local error in processing, try again later",
    "454 4.7.0 Temporary failure, try again later",
)
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


@dataclass(frozen=True)
class Faults:
    """What a faulty sink does besides accepting (see the module doc); shares are 0 to 1 and
    add up to 1 at most."""

    temporary: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    slow_delay: float = 0.0
    refuse_prefix: str = ""  # the local part's start; "" refuses nobody
    refuse_reply: str = "550 5.1.1 Mailbox unavailable"
    seed: int = 0
    temporary_replies: tuple[str, ...] = TEMPORARY_REPLIES

    def fault_for(self, ref: str, trigger: str) -> str | None:
        """``"temporary"``, ``"drop"``, ``"slow"`` or None: what the first message of the
        instance (``X-Alarm-Ref``, ``X-Alarm-Trigger``) gets."""
        point = _unit(self.seed, ref, trigger)
        for kind, share in (("temporary", self.temporary), ("drop", self.drop), ("slow", self.slow)):
            if point < share:
                return kind
            point -= share
        return None

    def temporary_reply(self, ref: str, trigger: str) -> str:
        """The 4xx reply an instance chosen for ``temporary`` gets."""
        return self.temporary_replies[int(_unit(self.seed + 1, ref, trigger) * len(self.temporary_replies))]

    def refuses(self, address: str) -> bool:
        return bool(self.refuse_prefix) and address.startswith(self.refuse_prefix)


def _unit(seed: int, ref: str, trigger: str) -> float:
    """A number in [0, 1) that depends on nothing but the arguments."""
    digest = hashlib.blake2b(f"{seed}\x1f{ref}\x1f{trigger}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class FaultEvent(NamedTuple):
    """Something a faulty sink did instead of (or besides) accepting a message."""

    at: float  # time.time() in the sink
    kind: str  # temporary, drop, slow (given up by the client), slow-accepted, refused, kill
    ref: str  # the message's X-Alarm-Ref ("" for a refused recipient: no message yet)
    trigger: str
    detail: str  # the reply, the address refused, the pid killed


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


class _Faulty(_Counting):
    """The handler of a sink with :class:`Faults`: the faults first, then as :class:`_Counting`."""

    def __init__(
        self,
        messages: ctypes.c_int64,
        octets: ctypes.c_int64,
        cpu: ctypes.c_double,
        record: bool,
        faults: Faults,
    ) -> None:
        super().__init__(messages, octets, cpu, record)
        self.faults = faults
        self.events: list[FaultEvent] = []
        self.kill_pid: int | None = None
        self._faulted: set[tuple[str, str]] = set()  # instances whose first message got its fault

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.faults.refuses(address):
            self.events.append(FaultEvent(time.time(), "refused", "", "", address))
            return self.faults.refuse_reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        content = envelope.original_content or b""
        end = content.find(_HEADER_END)
        block = b"\r\n" + (content if end < 0 else content[:end])
        ref, trigger = _header(_ALARM_REF, block), _header(_ALARM_TRIGGER, block)
        instance = (ref, trigger)
        kind = None if instance in self._faulted else self.faults.fault_for(ref, trigger)
        if kind is not None:
            self._faulted.add(instance)
        if kind == "temporary":
            reply = self.faults.temporary_reply(ref, trigger)
            self.events.append(FaultEvent(time.time(), kind, ref, trigger, reply))
            return reply
        if kind == "drop":
            self.events.append(FaultEvent(time.time(), kind, ref, trigger, "connection dropped after DATA"))
            if isinstance(server.transport, asyncio.Transport):
                server.transport.abort()
            await asyncio.sleep(DROP_WAIT)  # connection_lost cancels this handler: no reply is read
            return "421 4.3.0 dropped"
        if kind == "slow":
            try:
                await asyncio.sleep(self.faults.slow_delay)  # cancelled when the client gives up first
            except asyncio.CancelledError:
                self.events.append(FaultEvent(time.time(), kind, ref, trigger, "the client left first"))
                raise
            if server.transport is None or server.transport.is_closing():
                self.events.append(FaultEvent(time.time(), kind, ref, trigger, "the client left first"))
                return "421 4.3.0 too late"
            self.events.append(FaultEvent(time.time(), "slow-accepted", ref, trigger, "the client waited"))
        reply = await super().handle_DATA(server, session, envelope)
        if self.kill_pid is not None:
            pid, self.kill_pid = self.kill_pid, None
            self.events.append(FaultEvent(time.time(), "kill", ref, trigger, str(pid)))
            # After this handler returns, aiosmtpd writes the 250 to the socket before the
            # loop runs the callback: the client has its acceptance when the kill lands.
            asyncio.get_running_loop().call_soon(_kill, pid)
        return reply


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def _serve(
    conn: Connection,
    messages: ctypes.c_int64,
    octets: ctypes.c_int64,
    cpu: ctypes.c_double,
    record: bool = False,
    faults: Faults | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    handler = (
        _Counting(messages, octets, cpu, record) if faults is None else _Faulty(messages, octets, cpu, record, faults)
    )
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
            elif isinstance(request, tuple) and request and isinstance(handler, _Faulty):
                if request[0] == FAULTS:
                    handler.faults = request[1]
                    conn.send(True)
                elif request[0] == KILL:
                    handler.kill_pid = int(request[1])
                    conn.send(True)
                elif request[0] == EVENTS:
                    conn.send(list(handler.events))
    except EOFError:
        pass
    finally:
        server.close()


def serve(
    conn: Connection,
    messages: ctypes.c_int64,
    octets: ctypes.c_int64,
    cpu: ctypes.c_double,
    record: bool = False,
    faults: Faults | None = None,
) -> None:
    """The sink process: listen on a free port of 127.0.0.1, send the port, serve until told to stop."""
    asyncio.run(_serve(conn, messages, octets, cpu, record, faults))


class SmtpSink:
    """A running sink (see the module doc); a context manager."""

    def __init__(self, *, record: bool = False, faults: Faults | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._messages = context.RawValue(ctypes.c_int64, 0)
        self._octets = context.RawValue(ctypes.c_int64, 0)
        self._cpu = context.RawValue(ctypes.c_double, 0.0)
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=serve,
            args=(child, self._messages, self._octets, self._cpu, record, faults),
            name="smtp-sink",
            daemon=True,
        )
        self.host = HOST
        self.port = 0
        self.recording = record
        self.faulty = faults is not None

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

    def _ask(self, request: tuple[Any, ...]) -> Any:
        if not self.faulty:
            raise RuntimeError("this sink has no faults: make it with SmtpSink(faults=Faults(...))")
        self._conn.send(request)
        return self._conn.recv()

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault plan (``Faults()``: none); instances already faulted stay so."""
        self._ask((FAULTS, faults))

    def kill_on_accept(self, pid: int) -> None:
        """SIGKILL ``pid`` right after the ``250`` of the next message accepted (once)."""
        self._ask((KILL, pid))

    def fault_events(self) -> list[FaultEvent]:
        """What the sink did instead of (or besides) accepting, oldest first."""
        events: list[FaultEvent] = self._ask((EVENTS,))
        return events

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
