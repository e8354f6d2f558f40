"""A local SMTP catcher for the demo: accepts every message and files it as a ``.eml``.

It runs an aiosmtpd server inside the caller's event loop (no thread), so the demo
needs no mail server installed. Each message lands in ``maildir`` as
``<UTC timestamp>-<seq>.eml`` with ``Return-Path`` and ``X-Envelope-To`` headers
added in front, the way a delivering MTA records the envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

log = logging.getLogger(__name__)

MessageCallback = Callable[[EmailMessage, Path], None]
DATA_SIZE_LIMIT = 10 * 1024 * 1024
CLOSE_TIMEOUT = 5.0


class CatcherPortInUse(OSError):
    """The catcher's port is taken; the message says by what, probably, and what to do."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.message = (
            f"cannot start the SMTP catcher: {host}:{port} is already in use "
            "(another catcher, a demo still running, or a local mail server). "
            f"Find the process with `ss -ltnp 'sport = :{port}'` (or `lsof -i :{port}`) and stop it, "
            f"or point smtp.url at a free port, e.g. CALALARM_SMTP_URL=smtp://{host}:{port + 1}"
        )
        super().__init__(errno.EADDRINUSE, self.message)

    def __str__(self) -> str:
        return self.message


class CatcherHandle:
    """A running catcher; :meth:`close` stops it and drops open connections."""

    def __init__(
        self, server: asyncio.AbstractServer, host: str, port: int, maildir: Path, sessions: weakref.WeakSet[SMTP]
    ) -> None:
        self._server = server
        self._sessions = sessions
        self.host = host
        self.port = port
        self.maildir = maildir

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    async def close(self) -> None:
        self._server.close()
        handlers: list[asyncio.Task[Any]] = []
        for session in list(self._sessions):
            transport = session.transport
            if transport is not None:
                transport.close()
            task = getattr(session, "_handler_coroutine", None)
            if isinstance(task, asyncio.Task):
                handlers.append(task)
        if handlers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(handlers, timeout=CLOSE_TIMEOUT)
        await self._server.wait_closed()


class _MaildirHandler:
    """aiosmtpd handler: file each message, then tell ``on_message``."""

    def __init__(self, maildir: Path, on_message: MessageCallback | None) -> None:
        self._maildir = maildir
        self._on_message = on_message
        self._seq = 0

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or b""
        head = f"Return-Path: <{_one_line(envelope.mail_from or '')}>\r\n"
        head += f"X-Envelope-To: {_one_line(', '.join(envelope.rcpt_tos))}\r\n"
        data = head.encode("utf-8") + raw
        try:
            path = self._store(data)
        except OSError as exc:
            log.error("cannot store a caught message in %s: %s", self._maildir, exc)
            return "451 4.3.0 cannot store the message now"
        if self._on_message is not None:
            message = BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(data)
            try:
                self._on_message(message, path)
            except Exception:
                log.exception("the catcher's on_message callback failed for %s", path.name)
        return f"250 2.0.0 OK: stored as {path.name}"

    def _store(self, data: bytes) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        while True:
            self._seq += 1
            path = self._maildir / f"{stamp}-{self._seq:04d}.eml"
            if not path.exists():
                break
        partial = self._maildir / f".{path.name}.part"
        partial.write_bytes(data)
        os.replace(partial, path)  # readers never see half a message
        return path


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def start_catcher(
    host: str, port: int, maildir: Path, on_message: MessageCallback | None = None
) -> CatcherHandle:
    """Listen on ``host:port`` in the running loop; file every message under ``maildir``.

    Raises :class:`CatcherPortInUse` (an :class:`OSError`) when the port is taken.
    """
    await asyncio.to_thread(maildir.mkdir, parents=True, exist_ok=True)
    mail_log = logging.getLogger("mail.log")  # aiosmtpd logs every connection at INFO
    if mail_log.level == logging.NOTSET:
        mail_log.setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    handler = _MaildirHandler(maildir, on_message)
    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory() -> SMTP:
        session = SMTP(
            handler,
            hostname="calalarm-catcher",
            enable_SMTPUTF8=True,
            data_size_limit=DATA_SIZE_LIMIT,
            loop=loop,
        )
        sessions.add(session)
        return session

    try:
        server = await loop.create_server(factory, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CatcherPortInUse(host, port) from exc
        if exc.errno == errno.EACCES:
            raise OSError(
                errno.EACCES, f"cannot start the SMTP catcher on {host}:{port}: ports below 1024 need root; use 8025"
            ) from exc
        raise
    bound_port = server.sockets[0].getsockname()[1] if server.sockets else port
    handle = CatcherHandle(server, host, int(bound_port), maildir, sessions)
    log.info("SMTP catcher listening on %s:%d, filing messages in %s", host, handle.port, maildir)
    return handle
