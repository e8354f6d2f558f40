"""ENS event references: ``enp:///ics/eventalarm?calid=C&uid=U&rid=R&aid=A``.

A *reference* names a notification. A *subscription* is a reference too, possibly
with fewer parameters and possibly a pool: ``enp+pool.NAME:///ics/eventalarm?calid=jac``.
A subscription matches a reference when the bases are equal and every parameter of
the subscription is present, with the same value, in the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import parse_qsl, quote, urlsplit

SCHEME = "enp"
POOL_SCHEME_PREFIX = "enp+pool."
EVENT_ALARM = "/ics/eventalarm"
TODO_ALARM = "/ics/todoalarm"
_POOL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_BASE = re.compile(r"^(/[A-Za-z0-9_-]+)+$")
# What urllib.parse.quote leaves as it is (unreserved, plus the safe characters given).
_KEY_AS_IS = re.compile(r"[A-Za-z0-9_.~-]*")
_VALUE_AS_IS = re.compile(r"[A-Za-z0-9_.~@:,;-]*")
# A reference without a pool whose query needs no unquoting: nothing but these characters.
_PLAIN_REFERENCE = re.compile(r"enp://(/[A-Za-z0-9_/-]*)(?:\?([A-Za-z0-9_.~@:,;=&-]*))?")


class InvalidReference(ValueError):
    """Raised for a string that is not a valid ``enp:`` reference or subscription."""


@dataclass(frozen=True)
class EventReference:
    """A parsed reference. ``params`` keeps the order it was written in."""

    base: str
    params: tuple[tuple[str, str], ...] = ()
    pool: str | None = None

    def __post_init__(self) -> None:
        if not _BASE.match(self.base):
            raise InvalidReference(f"reference base {self.base!r} must look like /ics/eventalarm")
        if self.pool is not None and not _POOL_NAME.match(self.pool):
            raise InvalidReference(f"pool name {self.pool!r} may hold only letters, digits, '_' and '-'")
        keys = [k for k, _ in self.params]
        if len(keys) != len(set(keys)):
            raise InvalidReference(f"reference parameters repeat a name: {keys}")

    @classmethod
    def parse(cls, text: str) -> EventReference:
        """Parse ``enp:///base?k=v&...`` or ``enp+pool.NAME:///base?...``."""
        plain = _PLAIN_REFERENCE.fullmatch(text)
        if plain is not None:
            # The common case (what __str__ writes when no value needs quoting), without
            # urllib: a third of a notification's parse time.
            pairs = [pair.partition("=") for pair in plain.group(2).split("&")] if plain.group(2) else []
            if all(sep for _key, sep, _value in pairs):
                return cls(base=plain.group(1), params=tuple((key, value) for key, _sep, value in pairs))
        parts = urlsplit(text)
        pool: str | None = None
        if parts.scheme.startswith(POOL_SCHEME_PREFIX):
            pool = parts.scheme[len(POOL_SCHEME_PREFIX) :]
        elif parts.scheme != SCHEME:
            raise InvalidReference(f"{text!r}: scheme must be 'enp' or 'enp+pool.NAME'")
        if parts.netloc:
            raise InvalidReference(f"{text!r}: write enp:/// (three slashes, no host)")
        try:
            params = tuple(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
        except ValueError as exc:
            raise InvalidReference(f"{text!r}: bad query string ({exc})") from None
        return cls(base=parts.path, params=params, pool=pool)

    @classmethod
    def alarm(cls, component: str, calid: str, uid: str, rid: str, aid: str) -> EventReference:
        """The reference of one alarm instance (``component`` is 'event' or 'todo')."""
        base = {"event": EVENT_ALARM, "todo": TODO_ALARM}.get(component)
        if base is None:
            raise InvalidReference(f"component must be 'event' or 'todo', not {component!r}")
        return cls(base, (("calid", calid), ("uid", uid), ("rid", rid), ("aid", aid)))

    def __str__(self) -> str:
        return self._text

    @cached_property
    def _text(self) -> str:
        # Cached: the quoting is a visible share of a notification's cost, and a
        # reference is printed several times on its way (logs, acks, headers).
        scheme = SCHEME if self.pool is None else POOL_SCHEME_PREFIX + self.pool
        query = "&".join(f"{_quoted(k, _KEY_AS_IS, '')}={_quoted(v, _VALUE_AS_IS, '@:,;')}" for k, v in self.params)
        return f"{scheme}://{self.base}" + (f"?{query}" if query else "")

    @property
    def param_dict(self) -> dict[str, str]:
        return dict(self.params)

    def get(self, name: str, default: str = "") -> str:
        return self.param_dict.get(name, default)

    def without_pool(self) -> EventReference:
        return EventReference(self.base, self.params)

    def matches(self, reference: EventReference) -> bool:
        """True when this subscription selects ``reference``."""
        if self.base != reference.base:
            return False
        theirs = reference.param_dict
        return all(theirs.get(k) == v for k, v in self.params)

    @property
    def routing_key(self) -> str:
        """The base as a dotted AMQP routing key: ``/ics/eventalarm`` → ``ics.eventalarm``."""
        return self.base.strip("/").replace("/", ".")

    def queue_suffix(self) -> str:
        """A stable, readable name for the queue a pool shares (pool members must agree)."""
        canonical = "&".join(f"{k}={v}" for k, v in sorted(self.params))
        name = f"pool.{self.pool}.{self.routing_key}" if self.pool else self.routing_key
        return name + (f"?{canonical}" if canonical else "")


def _quoted(text: str, as_is: re.Pattern[str], safe: str) -> str:
    """``quote(text, safe=safe)``, without calling it for the common text that needs no quoting."""
    return text if as_is.fullmatch(text) else quote(text, safe=safe)
