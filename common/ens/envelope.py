"""Notification and ack envelopes: versioned JSON, never pickle.

A notification on the wire::

    {"v": 1, "type": "notification", "id": "…", "ref": "enp:///ics/eventalarm?…",
     "properties": {"hostname": …, "pid": …, "process": …, "timestamp": …},
     "payload": {…}, "renl": {"ack_to": "alarmd", "renl_id": "42:1", "timeout": 60.0}}

An ack::

    {"v": 1, "type": "ack", "renl_id": "42:1", "status": "delivered", "reason": "",
     "properties": {…}}

Acks in one message, to a publisher whose RENL request says ``"batch_acks": true``
(a subscriber may then gather the acks it sends to one address)::

    {"v": 1, "type": "acks", "acks": [{"renl_id": "42:1", "status": "delivered",
     "reason": "", "properties": {…}}, …]}

Readers ignore keys and properties they do not know, and reject a major version
they do not speak.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from common.ens.reference import EventReference, InvalidReference

VERSION = 1
MAX_MESSAGE_BYTES = 1_000_000
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
# A notification property: how many times the publisher has handed this instance to
# the bus, counting this one (alarmd sets it; 1 is the first publication).
PUBLICATION = "publication"
# A notification property: the instant (milliseconds since the epoch, UTC) before which a
# subscriber should not act on it. alarmd sets it when it publishes an instance ahead of
# its trigger (alarmd.publish_ahead); absent, act at once.
NOT_BEFORE = "not_before"


class EnvelopeError(ValueError):
    """A message on the bus that is not a valid envelope; the text says what is wrong."""


class AckStatus(StrEnum):
    DELIVERED = "delivered"  # processed; the publisher may forget the instance
    FAILED = "failed"  # permanent failure; do not retry
    RETRY = "retry"  # transient failure; publisher reschedules with backoff


Properties = dict[str, str | int | float | bool]


def standard_properties(process: str, now: datetime) -> Properties:
    """The properties every notification and ack carries."""
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "process": process,
        "timestamp": int(now.timestamp() * 1000),
    }


@dataclass(frozen=True)
class Renl:
    """A request for an end-to-end acknowledgment. ``batch_acks``: the publisher also
    reads acks that come several to a message (type ``acks``)."""

    ack_to: str
    renl_id: str
    timeout: float
    batch_acks: bool = False


@dataclass(frozen=True)
class Notification:
    ref: EventReference
    payload: dict[str, Any]
    properties: Properties = field(default_factory=dict)
    renl: Renl | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Set by the bus on receipt, not sent: this message was delivered to a subscriber
    # before (which may have processed it and died before settling it).
    redelivered: bool = field(default=False, compare=False)

    @property
    def first_copy(self) -> bool:
        """No copy of this instance can have been processed before: the publisher's
        first publication of it (property ``publication`` is 1), not redelivered.
        Without the property (another publisher) this is False."""
        publication = self.properties.get(PUBLICATION)
        return type(publication) is int and publication == 1 and not self.redelivered

    def not_before(self) -> datetime | None:
        """Property ``not_before`` as an aware UTC instant; None when absent or not a number."""
        value = self.properties.get(NOT_BEFORE)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "v": VERSION,
            "type": "notification",
            "id": self.id,
            "ref": str(self.ref),
            "properties": self.properties,
            "payload": self.payload,
        }
        if self.renl is not None:
            body["renl"] = {
                "ack_to": self.renl.ack_to,
                "renl_id": self.renl.renl_id,
                "timeout": self.renl.timeout,
            }
            if self.renl.batch_acks:
                body["renl"]["batch_acks"] = True
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Notification:
        body = _load(raw, "notification")
        try:
            ref = EventReference.parse(_field(body, "ref", str))
        except InvalidReference as exc:
            raise EnvelopeError(f"notification 'ref': {exc}") from None
        if ref.pool is not None:
            raise EnvelopeError("notification 'ref' must not name a pool")
        renl_body = body.get("renl")
        return cls(
            ref=ref,
            payload=_field(body, "payload", dict),
            properties=_properties(body),
            renl=None if renl_body is None else _renl(renl_body),
            id=_field(body, "id", str),
        )


@dataclass(frozen=True)
class Ack:
    renl_id: str
    status: AckStatus
    reason: str = ""
    properties: Properties = field(default_factory=dict)
    # Set by the bus on receipt, not sent: delivered to the publisher before, which may
    # have applied it and lost its connection before settling it.
    redelivered: bool = field(default=False, compare=False)

    def to_json(self) -> bytes:
        body = {"v": VERSION, "type": "ack", **self._fields()}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Ack:
        return cls._from_fields(_load(raw, "ack"))

    def _fields(self) -> dict[str, Any]:
        return {
            "renl_id": self.renl_id,
            "status": self.status.value,
            "reason": self.reason,
            "properties": self.properties,
        }

    @classmethod
    def _from_fields(cls, body: dict[str, Any]) -> Ack:
        status = _field(body, "status", str)
        try:
            ack_status = AckStatus(status)
        except ValueError:
            raise EnvelopeError(f"ack 'status' {status!r} is not one of delivered, failed, retry") from None
        return cls(
            renl_id=_field(body, "renl_id", str),
            status=ack_status,
            reason=str(body.get("reason", "")),
            properties=_properties(body),
        )


def acks_to_json(acks: Sequence[Ack]) -> bytes:
    """Several acks in one message (type ``acks``; see the module doc)."""
    body = {"v": VERSION, "type": "acks", "acks": [ack._fields() for ack in acks]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def acks_from_json(raw: bytes | str) -> tuple[list[Ack], list[str]]:
    """The acks of a message (one of type ``ack``, several of type ``acks``), and what is
    wrong with each ack of several that is not valid (the others still count).
    EnvelopeError when the message itself is not valid."""
    body = _load(raw, "ack", also="acks")
    if body["type"] == "ack":
        return [Ack._from_fields(body)], []
    items = _field(body, "acks", list)
    acks: list[Ack] = []
    errors: list[str] = []
    for number, item in enumerate(items, 1):
        try:
            if not isinstance(item, dict):
                raise EnvelopeError("must be an object")
            acks.append(Ack._from_fields(item))
        except EnvelopeError as exc:
            errors.append(f"ack {number} of {len(items)}: {exc}")
    return acks, errors


def renl_of(raw: bytes | str) -> Renl | None:
    """Best effort: the RENL request of a message that may be otherwise invalid.

    Lets a subscriber ack ``failed`` a poison notification instead of leaving the
    publisher to republish it for ever.
    """
    try:
        body = json.loads(raw)
        return _renl(body["renl"])
    except Exception:  # noqa: BLE001 - anything unreadable simply has no RENL
        return None


def _load(raw: bytes | str, kind: str, *, also: str = "") -> dict[str, Any]:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_MESSAGE_BYTES:
        raise EnvelopeError(f"{kind} is {size} bytes, over the {MAX_MESSAGE_BYTES} byte limit")
    try:
        # Strictly UTF-8 (RFC 8259): json.loads would let encoded surrogates through.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"{kind} is not JSON: {exc}") from None
    except RecursionError:
        raise EnvelopeError(f"{kind} is not JSON this reader takes: nested too deep") from None
    if not isinstance(body, dict):
        raise EnvelopeError(f"{kind} must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) or not isinstance(raw, bytes):
        # A lone surrogate ("\\ud800", or in a str) is not Unicode text: it cannot be
        # written to a database, a log file or an email, and failed whole batches of acks.
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise EnvelopeError(f"{kind} holds text that is not valid Unicode (a lone surrogate)") from None
    version = body.get("v")
    if type(version) is not int or version != VERSION:
        raise EnvelopeError(f"{kind} has version {version!r}; this build speaks version {VERSION}")
    if body.get("type") != kind and not (also and body.get("type") == also):
        expected = f"{kind!r} or {also!r}" if also else repr(kind)
        raise EnvelopeError(f"expected a message of type {expected}, got {body.get('type')!r}")
    return body


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        raise EnvelopeError(f"field {name!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _properties(body: dict[str, Any]) -> Properties:
    props = body.get("properties", {})
    if not isinstance(props, dict):
        raise EnvelopeError("field 'properties' must be an object")
    return {str(k): v for k, v in props.items() if isinstance(v, str | int | float | bool)}


def _renl(body: Any) -> Renl:
    if not isinstance(body, dict):
        raise EnvelopeError("field 'renl' must be an object")
    timeout = body.get("timeout")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout < math.inf:
        raise EnvelopeError("renl 'timeout' must be a positive number of seconds")
    return Renl(
        ack_to=_field(body, "ack_to", str),
        renl_id=_field(body, "renl_id", str),
        timeout=float(timeout),
        batch_acks=body.get("batch_acks") is True,
    )
