"""What an alarm notification carries: everything notifyd needs to write the reminder.

alarmd builds it when it materialises an instance (so a later edit of the source
cannot change a reminder already in flight); notifyd validates it on arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

PAYLOAD_VERSION = 1
ISO_Z = "%Y-%m-%dT%H:%M:%SZ"


class PayloadError(ValueError):
    """A notification payload that cannot be used; the message says which field."""


def format_utc(instant: datetime) -> str:
    """``2026-11-23T10:00:00Z``; ``instant`` must be aware."""
    if instant.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant")
    return instant.astimezone(UTC).strftime(ISO_Z)


def parse_utc(text: str) -> datetime:
    """Inverse of :func:`format_utc`; also accepts any ISO 8601 string with an offset."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class AlarmPayload:
    calid: str
    uid: str
    rid: str  # recurrence id, iCalendar basic form: 20261124T083000Z, or 20261125 (all-day); "" if not recurring
    aid: str
    component: str  # "event" | "todo"
    action: str  # "DISPLAY" | "EMAIL" | "AUDIO" | …
    trigger: str  # UTC ISO Z
    summary: str = ""
    description: str = ""
    location: str = ""
    start: str = ""  # UTC ISO Z, or YYYY-MM-DD for an all-day component
    end: str = ""
    tz: str = "UTC"  # the calendar's time zone, for showing times to people
    alarm_summary: str = ""
    alarm_description: str = ""
    owner: str = ""  # the calendar owner's address, given at enqueue
    recipients: list[str] = field(default_factory=list)
    organizer: str = ""  # "Name <address>" or the address of the component's ORGANIZER
    locale: str = ""  # the language the reminder is written in ("de", "fr_CA"), given at enqueue
    v: int = PAYLOAD_VERSION

    def to_dict(self) -> dict[str, Any]:
        # Shallow, field by field: dataclasses.asdict deep-copies every value, which made
        # it the largest cost of a bulk enqueue; recipients is the only mutable field.
        data = dict(self.__dict__)  # the fields, in their order (a frozen dataclass has nothing else)
        data["recipients"] = list(self.recipients)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlarmPayload:
        version = data.get("v")
        if type(version) is not int or version != PAYLOAD_VERSION:  # True and 1.0 equal 1
            raise PayloadError(f"payload version {version!r} is not {PAYLOAD_VERSION}")
        values = {name: data[name] for name in _FIELD_NAMES if name in data}
        for required in _REQUIRED:
            if required not in values:
                raise PayloadError(f"payload lacks {required!r}")
        payload = cls(**values)
        payload.check()
        return payload

    def check(self) -> datetime:
        """Raise :class:`PayloadError` unless every field has its type, ``component`` is
        event or todo and ``trigger`` an instant; return that instant. What notifyd checks
        on arrival and alarmd before it queues a payload."""
        if type(self.v) is not int or self.v != PAYLOAD_VERSION:
            raise PayloadError(f"payload version {self.v!r} is not {PAYLOAD_VERSION}")
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise PayloadError(f"payload {name!r} must be a string")
        if not isinstance(self.recipients, list | tuple) or not all(isinstance(r, str) for r in self.recipients):
            raise PayloadError("payload 'recipients' must be a list of strings")
        if self.component not in ("event", "todo"):
            raise PayloadError(f"payload 'component' must be event or todo, not {self.component!r}")
        try:
            return parse_utc(self.trigger)
        except (ValueError, OverflowError):  # 9999-12-31T23:59:59-10:00 is past the last UTC instant
            raise PayloadError(f"payload 'trigger' {self.trigger!r} is not an ISO 8601 UTC instant") from None

    @property
    def trigger_at(self) -> datetime:
        return parse_utc(self.trigger)


_FIELD_NAMES = tuple(f.name for f in fields(AlarmPayload))
_TEXT_FIELDS = tuple(name for name in _FIELD_NAMES if name not in ("recipients", "v"))
_REQUIRED = ("calid", "uid", "rid", "aid", "component", "action", "trigger")
