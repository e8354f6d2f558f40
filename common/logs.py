"""The services' log lines: text for people (the default), ``keyvalue`` (logfmt) or ``json``.

``[logging] format`` picks one; ``level`` the threshold (``alarmd --log-level`` overrides it):

- ``text``: ``2026-11-23 10:00:00,123 INFO alarmd.dispatcher published alarm=42 attempt=2 …``;
- ``keyvalue``: ``ts=2026-11-23T10:00:00.123Z level=info logger=alarmd.dispatcher msg=published
  alarm=42 attempt=2 …``, one line per record, values quoted and escaped where needed;
- ``json``: ``{"ts": "2026-11-23T10:00:00.123Z", "level": "info", "logger": …, "msg": …, "alarm": 42}``,
  one object per line.

Code logs with the standard :mod:`logging` module; ``extra={"alarm": 42, "attempt": 1}`` fields
become keys (text appends those its message does not already show). What may be logged: ids
(alarm id, calid, uid, rid, aid, attempt, renl id, status), never email addresses, summaries or
passwords. As a last guard every formatter blanks the password of a URL (``amqp://u:***@host``).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from typing import Any, TextIO

from common.settings import LoggingSettings

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s/]*@")
_ADDRESS = re.compile(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BARE = re.compile(r"[^\s=\"\\\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_UNESCAPED = re.compile("[\x7f-\x9f\u2028\u2029]")  # controls json.dumps leaves as they are
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def redact_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    if "://" not in text:
        return text
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def without_addresses(text: str) -> str:
    """``text`` on one line with every email address replaced by ``<address>`` (for reasons that
    quote server replies naming recipients)."""
    return _ADDRESS.sub("<address>", " ".join(_CONTROLS.sub(" ", text).split()))


def fields(record: logging.LogRecord) -> list[tuple[str, Any]]:
    """The ``extra=`` fields of ``record``, in the order they were given."""
    return [(key, value) for key, value in record.__dict__.items() if key not in _STANDARD and key[:1] != "_"]


def logfmt_value(value: Any) -> str:
    """``value`` as logfmt writes it: bare when it can be, else in double quotes with ``\\``, ``"``
    and control characters escaped (a newline is ``\\n``: one record stays one line)."""
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if not text:
        return '""'
    if _BARE.fullmatch(text):
        return text
    return _UNESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


@functools.lru_cache(maxsize=256)  # the same few names on every line
def _key(name: str) -> str:
    return _KEY_UNSAFE.sub("_", name) or "_"


def _utc(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [record.exc_text or ""]
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(part for part in parts if part)


class TextFormatter(logging.Formatter):
    """``asctime level logger message`` and the ``extra=`` fields the message does not show."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        message = record.message
        extra = [f"{_key(k)}={logfmt_value(v)}" for k, v in fields(record) if f"{k}=" not in message]
        return f"{line} {' '.join(extra)}" if extra else line

    def format(self, record: logging.LogRecord) -> str:
        return redact_url_passwords(super().format(record))


class KeyValueFormatter(logging.Formatter):
    """logfmt: ``ts=… level=info logger=… msg="…" key=value …`` (an exception as ``exc="…"``)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"ts={_utc(record)}",
            f"level={record.levelname.lower()}",
            f"logger={logfmt_value(record.name)}",
            f"msg={logfmt_value(record.getMessage())}",
        ]
        parts.extend(f"{_key(k)}={logfmt_value(v)}" for k, v in fields(record) if k not in {"ts", "level", "logger"})
        exc = _exception(self, record)
        if exc:
            parts.append(f"exc={logfmt_value(exc)}")
        return redact_url_passwords(" ".join(parts))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, the ``extra=`` fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _utc(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields(record):
            document.setdefault(key, value)
        exc = _exception(self, record)
        if exc:
            document["exc"] = exc
        # ASCII only: U+2028 and the like would end the line for some readers.
        return redact_url_passwords(json.dumps(document, default=str))


FORMATTERS: dict[str, type[logging.Formatter]] = {
    "text": TextFormatter,
    "keyvalue": KeyValueFormatter,
    "json": JsonFormatter,
}


class _ServiceHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`setup_logging` installs (and replaces when called again)."""


def setup_logging(
    settings: LoggingSettings, *, level: str | None = None, stream: TextIO | None = None, force: bool = False
) -> logging.Handler | None:
    """Log to ``stream`` (stderr) in ``settings.format`` from ``level`` (else ``settings.level``) up.

    Like :func:`logging.basicConfig`, it leaves a root logger that already has handlers of
    someone else's alone (a test runner's) unless ``force``; a handler of its own from an earlier
    call is replaced. Returns the handler installed, or None.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not isinstance(h, _ServiceHandler)]
    if foreign and not force:
        return None
    for old in root.handlers[:]:
        if isinstance(old, _ServiceHandler) or force:
            root.removeHandler(old)
            if isinstance(old, _ServiceHandler):
                old.close()
    handler = _ServiceHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(FORMATTERS[settings.format.lower()]())
    root.addHandler(handler)
    root.setLevel((level or settings.level).upper())
    return handler
