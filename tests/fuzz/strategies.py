"""Hypothesis strategies for hostile input: iCalendar text and bus messages, and how long to search.

Each fuzz test runs ``FUZZ_EXAMPLES`` examples (a few dozen, so that ``make test`` stays
quick); ``CALALARM_FUZZ_EXAMPLES=5000`` searches longer, and
``python -m tests.benchmarks.fuzz_long`` runs the fuzz tests in a loop for a soak. Under
CI the examples are derandomised, so that a run is repeatable.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.ics"))


def fuzz_settings(examples: int) -> settings:
    """``examples`` examples, or ``CALALARM_FUZZ_EXAMPLES`` of them; no deadline (the tests time each call)."""
    return settings(
        max_examples=int(os.environ.get("CALALARM_FUZZ_EXAMPLES", examples)),
        deadline=None,
        derandomize=os.environ.get("CI") == "true",
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# ---------------------------------------------------------------- measuring one call


@dataclass
class Cost:
    seconds: float = 0.0
    peak_bytes: int = 0  # tracemalloc's peak during the call (0 when not traced)


class Hang(Exception):
    """The block ran past its limit (see :func:`measured`)."""


@contextmanager
def measured(*, memory: bool = False, limit: float = 120.0) -> Iterator[Cost]:
    """Wall time of the block and, with ``memory``, the peak of the memory it allocated.

    A block still running after ``limit`` seconds is interrupted with :class:`Hang` (by
    SIGALRM, in the main thread), so that an endless loop fails the test instead of
    stalling the run."""
    cost = Cost()
    guarded = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def interrupt(signum: int, frame: object) -> None:
        raise Hang(f"still running after {limit} s")

    previous = signal.signal(signal.SIGALRM, interrupt) if guarded else None
    if guarded:
        signal.setitimer(signal.ITIMER_REAL, limit)
    if memory:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - started
        if guarded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        if memory:
            cost.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_PARSE_AND_PLAN = """
import json, resource, sys, time
from datetime import UTC, datetime, timedelta
from alarmd.ical import CalendarError, parse_calendar
from alarmd.triggers import plan_queue
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def current_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = open(sys.argv[1], "rb").read()
try:  # Linux: reset the peak RSS to the current RSS (proc(5), clear_refs "5")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
except OSError:
    pass
before = current_kib()
started = time.perf_counter()
outcome = {"objects": 0, "errors": [], "file_error": ""}
try:
    parsed = parse_calendar(data)
except CalendarError as exc:
    outcome["file_error"] = str(exc)
else:
    outcome["objects"] = len(parsed.objects)
    outcome["errors"] = [str(e) for e in parsed.errors]
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)
    for obj in parsed.objects:
        try:
            plan_queue(obj, calid="c", tz=UTC, now=now, horizon=timedelta(days=7))
        except CalendarError as exc:
            outcome["errors"].append(str(exc))
outcome["seconds"] = time.perf_counter() - started
outcome["rss_growth"] = (peak_kib() - before) * 1024
print(json.dumps(outcome))
"""


def parse_in_a_process(path: Path) -> dict[str, Any]:
    """Parse and plan the file at ``path`` in a fresh interpreter: its wall time and how much
    its peak RSS grew (no tracemalloc, which slows Python 3 to 4 times), and what it found."""
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_AND_PLAN, str(path)],
        capture_output=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ---------------------------------------------------------------- iCalendar pieces

HEAD = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//calalarm//fuzz//EN\r\n"
TAIL = "END:VCALENDAR\r\n"
# The object that must survive whatever stands beside it: its alarm fires at GOOD_TRIGGER.
GOOD_UID = "good@fuzz.test"
GOOD_START = "20270105T100000Z"
GOOD_TRIGGER = "2027-01-05T09:45:00Z"
GOOD = (
    f"BEGIN:VEVENT\r\nUID:{GOOD_UID}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{GOOD_START}\r\nDURATION:PT1H\r\n"
    "SUMMARY:Good\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nDESCRIPTION:Good\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\n"
    "END:VEVENT\r\n"
)

# Text that has broken parsers somewhere: controls, separators, encodings, injections.
NASTY = [
    "",
    " ",
    ":",
    ";",
    ",",
    "\\",
    '"',
    "\x00",
    "\x0b",
    "\x1b[31m",
    "\x7f",
    "\ufeff",
    "\ufffd",
    "\u2028",
    "\u202e",
    "é",
    "€",
    "😀",
    "a\r\nBcc: eve@evil.test",
    "x\nSubject: injected",
    "=?utf-8?b?QmNjOiBldmVAZXZpbC50ZXN0?=",
    "mailto:eve@evil.test",
    "<script>alert(1)</script>",
    "{{ 7*7 }}",
    "${jndi:ldap://x}",
    "%s%n",
    "-1",
    "0",
    "99999999999999999999",
    "1e309",
    "NaN",
    "20261301T250000Z",
    "-PT",
    "P99999999W",
    "PT-5M",
    "BEGIN:VEVENT",
    "END:VCALENDAR",
]
nasty_text = st.sampled_from(NASTY) | st.text(max_size=30) | st.text(alphabet="\\;:,=\"'\r\n\t \x00", max_size=12)

moments = st.builds(
    lambda y, mo, d, h, mi, s: f"{y:04d}{mo:02d}{d:02d}T{h:02d}{mi:02d}{s:02d}",
    st.sampled_from([1, 1600, 1970, 2000, 2025, 2026, 2027, 2038, 9999]) | st.integers(1900, 2100),
    st.integers(1, 12),
    st.integers(1, 31) | st.sampled_from([0, 32, 99]),
    st.integers(0, 23) | st.just(24),
    st.integers(0, 59),
    st.integers(0, 60),
)
date_values = st.one_of(
    moments.map(lambda m: m + "Z"),
    moments,
    moments.map(lambda m: m[:8]),
    nasty_text,
)
durations = st.one_of(
    st.builds(
        lambda sign, n, unit: f"{sign}P{'T' if unit in 'HMS' else ''}{n}{unit}",
        st.sampled_from(["", "-", "+"]),
        st.integers(0, 10**6) | st.sampled_from([0, 1, 15, 10**9, 10**12]),
        st.sampled_from("WDHMS"),
    ),
    nasty_text,
)
FREQS = ["SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"]
WEEKDAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]


def _number_list(low: int, high: int) -> st.SearchStrategy[str]:
    return st.lists(st.integers(low, high), min_size=1, max_size=4).map(lambda xs: ",".join(map(str, xs)))


@st.composite
def rrules(draw: st.DrawFn) -> str:
    """RRULE values from sensible to absurd: COUNT=10^9, INTERVAL=0, BY… parts out of range or never met."""
    # Sub-daily rules are drawn less often: each plans thousands of occurrences (bounded, but slow).
    freq = draw(st.sampled_from(FREQS[2:] * 3 + FREQS[:2] + ["SOMETIMES", ""]))
    parts = [f"FREQ={freq}"]
    optional: dict[str, st.SearchStrategy[str]] = {
        "INTERVAL": st.sampled_from(["0", "-1", "1", "2", "7", "1000", "1000000000"]),
        "COUNT": st.sampled_from(["0", "-5", "1", "3", "1000000000", "x"]),
        "UNTIL": date_values,
        "BYMONTH": _number_list(-1, 14),
        "BYMONTHDAY": _number_list(-32, 32),
        "BYYEARDAY": _number_list(-367, 367),
        "BYWEEKNO": _number_list(-54, 54),
        "BYHOUR": _number_list(0, 25),
        "BYMINUTE": _number_list(0, 61),
        "BYSECOND": _number_list(0, 61),
        "BYSETPOS": _number_list(-400, 400),
        "BYDAY": st.lists(
            st.builds(
                lambda n, d: f"{n}{d}",
                st.sampled_from(["", "+1", "-1", "5", "+53", "-54", "0"]),
                st.sampled_from([*WEEKDAYS, "XX"]),
            ),
            min_size=1,
            max_size=3,
        ).map(",".join),
        "WKST": st.sampled_from([*WEEKDAYS, "ZZ"]),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        parts.append(f"{key}={draw(optional[key])}")
    if draw(st.booleans()):
        parts = draw(st.permutations(parts))
    return ";".join(parts)


@st.composite
def valarms(draw: st.DrawFn) -> str:
    lines = [f"ACTION:{draw(st.sampled_from(['DISPLAY', 'EMAIL', 'AUDIO', 'NONE', 'X-' + 'A' * 40]) | nasty_text)}"]
    kind = draw(st.sampled_from(["relative", "end", "absolute", "nasty", "none"]))
    if kind == "relative":
        lines.append(f"TRIGGER:{draw(durations)}")
    elif kind == "end":
        lines.append(f"TRIGGER;RELATED=END:{draw(durations)}")
    elif kind == "absolute":
        lines.append(f"TRIGGER;VALUE=DATE-TIME:{draw(date_values)}")
    elif kind == "nasty":
        lines.append(f"TRIGGER:{draw(nasty_text)}")
    if draw(st.booleans()):
        lines.append(f"REPEAT:{draw(st.sampled_from(['1', '3', '1000', '1001', '-1', 'x', '99999999999']))}")
        lines.append(f"DURATION:{draw(durations)}")
    for name in draw(
        st.lists(st.sampled_from(["SUMMARY", "DESCRIPTION", "ATTENDEE", "UID", "ACKNOWLEDGED"]), max_size=3)
    ):
        lines.append(f"{name}:{draw(nasty_text)}")
    return "BEGIN:VALARM\r\n" + "\r\n".join(lines) + "\r\nEND:VALARM\r\n"


@st.composite
def hostile_objects(draw: st.DrawFn) -> str:
    """One VEVENT/VTODO (or a broken one) built from pieces, most of them hostile."""
    name = draw(st.sampled_from(["VEVENT", "VEVENT", "VTODO"]))
    uid = draw(st.sampled_from(["bad-1", "bad-2", "bad-1"]) | nasty_text.map(lambda t: f"bad-{t}"))
    params = draw(st.sampled_from(["", ";VALUE=DATE", ";TZID=Europe/Berlin", ";TZID=Mars/Olympus", ";TZID=Hostile"]))
    lines = [f"BEGIN:{name}", f"UID:{uid}", f"DTSTART{params}:{draw(date_values)}"]
    for prop in draw(
        st.lists(
            st.sampled_from(
                [
                    "DTEND",
                    "DUE",
                    "DURATION",
                    "RRULE",
                    "RRULE",
                    "EXDATE",
                    "RDATE",
                    "RECURRENCE-ID",
                    "STATUS",
                    "SUMMARY",
                    "DESCRIPTION",
                    "ORGANIZER",
                    "ATTENDEE",
                    "X-MOZ-LASTACK",
                    "X-MOZ-SNOOZE-TIME",
                    "DTSTART",
                ]
            ),
            max_size=5,
        )
    ):
        if prop == "RRULE":
            lines.append(f"RRULE:{draw(rrules())}")
        elif prop == "DURATION":
            lines.append(f"DURATION:{draw(durations)}")
        elif prop in ("EXDATE", "RDATE"):
            values = draw(st.lists(date_values, min_size=1, max_size=3))
            lines.append(f"{prop}:{','.join(values)}")
        elif prop == "STATUS":
            lines.append(f"STATUS:{draw(st.sampled_from(['CANCELLED', 'CONFIRMED']) | nasty_text)}")
        elif prop in ("DTEND", "DUE", "RECURRENCE-ID", "X-MOZ-LASTACK", "X-MOZ-SNOOZE-TIME", "DTSTART"):
            lines.append(f"{prop}:{draw(date_values)}")
        else:
            lines.append(f"{prop}:{draw(nasty_text)}")
    body = "\r\n".join(lines) + "\r\n" + "".join(draw(st.lists(valarms(), max_size=3)))
    structure = draw(st.sampled_from(["ok", "ok", "ok", "unclosed", "nested", "stray-end", "mismatched", "deep"]))
    if structure == "unclosed":
        return body
    if structure == "nested":
        return body + "BEGIN:X-INNER\r\nX-A:1\r\n" + f"END:{name}\r\n"
    if structure == "stray-end":
        return body + "END:VALARM\r\n" + f"END:{name}\r\n"
    if structure == "mismatched":
        return body + f"END:{'VTODO' if name == 'VEVENT' else 'VEVENT'}\r\n"
    if structure == "deep":
        depth = draw(st.integers(1, 40))
        return body + "BEGIN:X-D\r\n" * depth + "END:X-D\r\n" * depth + f"END:{name}\r\n"
    return body + f"END:{name}\r\n"


@st.composite
def hostile_timezones(draw: st.DrawFn) -> str:
    rule = draw(
        st.sampled_from(["", "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\n"]) | rrules().map(lambda r: f"RRULE:{r}\r\n")
    )
    offset = draw(st.sampled_from(["+0100", "-0500", "+2500", "x", "+01", "-0000"]))
    return (
        "BEGIN:VTIMEZONE\r\nTZID:Hostile\r\nBEGIN:STANDARD\r\n"
        f"DTSTART:{draw(moments)}\r\nTZOFFSETFROM:{offset}\r\nTZOFFSETTO:{offset}\r\n{rule}"
        "END:STANDARD\r\nEND:VTIMEZONE\r\n"
    )


@st.composite
def calendars_with_a_good_object(draw: st.DrawFn) -> str:
    """The good object first, then hostile objects, time zones and calendar-level lines."""
    pieces = draw(
        st.lists(
            st.one_of(
                hostile_objects(),
                hostile_timezones(),
                nasty_text.map(lambda t: f"X-HOSTILE:{t}\r\n".replace("\r\n\r\n", "\r\n")),
                st.sampled_from(
                    ["END:VEVENT\r\n", "BEGIN:VALARM\r\n", "END:VALARM\r\n", "BEGIN:VCALENDAR\r\n", "END:VCALENDAR\r\n"]
                ),
            ),
            min_size=1,
            max_size=4,
        )
    )
    end = draw(st.sampled_from([TAIL, TAIL, "", TAIL + "trailing garbage\r\n"]))
    return HEAD + GOOD + "".join(pieces) + end


@st.composite
def mutated_corpus(draw: st.DrawFn) -> bytes:
    """A file of tests/corpus/ with lines dropped, duplicated, cut, swapped or garbled, or bytes flipped."""
    data = draw(st.sampled_from(CORPUS_FILES)).read_bytes()
    if draw(st.booleans()):
        lines = data.split(b"\n")
        for _ in range(draw(st.integers(1, 6))):
            if not lines:
                break
            i = draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["drop", "dup", "cut", "garble", "swap", "insert", "repeat"]))
            if action == "drop":
                del lines[i]
            elif action == "dup":
                lines.insert(i, lines[i])
            elif action == "cut":
                lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
            elif action == "garble":
                at = draw(st.integers(0, len(lines[i])))
                lines[i] = lines[i][:at] + draw(st.binary(min_size=1, max_size=8)) + lines[i][at:]
            elif action == "swap":
                j = draw(st.integers(0, len(lines) - 1))
                lines[i], lines[j] = lines[j], lines[i]
            elif action == "insert":
                lines.insert(i, draw(nasty_text).encode("utf-8", "surrogatepass"))
            else:  # repeat a line many times: huge property lists
                lines[i:i] = [lines[i]] * draw(st.integers(10, 300))
        data = b"\n".join(lines)
    else:
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        data = bytes(raw)
    return data


random_bytes = st.binary(max_size=2000).map(lambda b: b"BEGIN:VCALENDAR\r\n" + b) | st.binary(max_size=200)


def encodings(text: str) -> st.SearchStrategy[str | bytes]:
    """``text`` as str, as UTF-8 (with or without BOM), with LF or CR-only line ends."""
    return st.sampled_from(
        [
            text,
            text.encode("utf-8", "surrogatepass"),
            b"\xef\xbb\xbf" + text.encode("utf-8", "surrogatepass"),
            text.replace("\r\n", "\n"),
            text.replace("\r\n", "\r").encode("utf-8", "surrogatepass"),
        ]
    )


# ---------------------------------------------------------------- bus messages

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(NASTY),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def with_changes(base: dict[str, Any], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with some keys replaced by drawn values, some dropped and some added."""

    @st.composite
    def changed(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(base)
        for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=4, unique=True)):
            if draw(st.integers(0, 4)) == 0:
                del out[key]
            else:
                out[key] = draw(values)
        for key in draw(st.lists(st.text(max_size=10), max_size=2)):
            out[key] = draw(values)
        return out

    return changed()


def sample_payload() -> dict[str, Any]:
    """An EMAIL alarm's payload as it travels (tests/payloads.py), to colleagues at example.com."""
    from tests.payloads import payload_dict

    return payload_dict(action="EMAIL", recipients=["bob@example.com", "Carol <carol@example.com>"])


HOSTILE_ADDRESSES = [
    "eve@evil.test",
    "bob@example.com, eve@evil.test",
    "bob@example.com\r\nBcc: eve@evil.test",
    "bob@example.com>\r\nTo: eve@evil.test",
    '"Bob" <bob@example.com>, <eve@evil.test>',
    "eve@evil.test\x00@example.com",
    "bob@example.com.evil.test",
    "=?utf-8?q?eve=40evil.test?= <bob@example.com>",
    "<>",
    "@",
    "a" * 400 + "@example.com",
    "bob@exämple.com",
    "bøb@example.com",
]
# What a payload's fields may hold from a hostile publisher: injections, huge text, wrong types.
payload_values = st.one_of(
    nasty_text,
    st.sampled_from(HOSTILE_ADDRESSES),
    st.integers(1, 6).map(lambda n: "x\r\nX-Injected: 1 " * (10**n // 17)),  # up to a megabyte
    json_values,
)


@st.composite
def hostile_payloads(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["fields", "fields", "recipients", "not an object"]))
    if kind == "not an object":
        return draw(json_values)
    base = sample_payload()
    if kind == "recipients":
        base["recipients"] = draw(st.lists(st.sampled_from(HOSTILE_ADDRESSES) | st.text(max_size=20), max_size=6))
        return base
    return draw(with_changes(base, payload_values))


@st.composite
def notification_bodies(draw: st.DrawFn) -> bytes | dict[str, Any]:
    """A message on the notification queue: garbage bytes, or an envelope (a dict) that may be
    wrong in any field, hold a hostile payload, or be over the size limit (key ``"pad"``)."""
    kind = draw(st.sampled_from(["envelope", "envelope", "envelope", "garbage", "json", "deep"]))
    if kind == "garbage":
        return draw(st.binary(max_size=300) | st.sampled_from([b"", b"\xff\xfe", b"{", b"null", b"[]"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "deep":
        return (
            b'{"v":1,"type":"notification","renl":{"ack_to":"alarmd","renl_id":"deep:1","timeout":60},"x":'
            + b"[" * 200_000
        )
    body: dict[str, Any] = {
        "v": 1,
        "type": "notification",
        "id": draw(st.text(max_size=10)),
        "ref": "enp:///ics/eventalarm?calid=jac&uid=u1&rid=&aid=1",
        "properties": {"hostname": "h", "pid": 1, "process": "alarmd", "timestamp": 0},
        "payload": draw(hostile_payloads()),
        "renl": {"ack_to": "alarmd", "renl_id": "", "timeout": 60.0},
    }
    envelope_values = st.one_of(
        json_values,
        st.sampled_from(
            ["enp:///ics/eventalarm?calid=a%0D%0ABcc:+x", "http://x", "enp+pool.p:///ics/eventalarm", 2, None]
        ),
    )
    body = draw(with_changes(body, envelope_values))
    if isinstance(body.get("renl"), dict) and draw(st.booleans()):
        body["renl"] = draw(with_changes({"ack_to": "alarmd", "renl_id": "", "timeout": 60.0}, json_values))
    if draw(st.integers(0, 9)) == 0:
        body["pad"] = "p" * 1_000_001  # over common.ens.envelope.MAX_MESSAGE_BYTES
    return body


@st.composite
def forged_acks(draw: st.DrawFn) -> bytes | dict[str, Any]:
    """A message on alarmd's ack queue: garbage, or an ack envelope that is wrong or forged.

    ``renl_id`` may hold the placeholders ``{inflight}``, ``{pending}``, ``{failed}`` (the id of
    such an instance), filled in by the test."""
    kind = draw(st.sampled_from(["ack", "ack", "ack", "garbage", "deep"]))
    if kind == "garbage":
        return draw(st.binary(max_size=200) | st.sampled_from([b"", b"{}", b"[]", b'{"v":1}']))
    if kind == "deep":
        return b'{"v":1,"type":"ack","renl_id":"1:1","status":"failed","reason":' + b"[" * 100_000
    renl_ids = st.one_of(
        st.sampled_from(
            [
                "{inflight}:7",  # an attempt that never was
                "{inflight}:0",
                "{pending}:1",  # never published
                "{failed}:1",
                "999999:1",  # no such instance
                "0:0",
                "-1:1",
                "99999999999999999999999:1",  # over any integer column
                "²:1",  # str.isdigit() says yes, int() says no
                "٣:1",
                "1:1:1",
                " 1:1",
                "",
            ]
        ),
        st.text(max_size=12),
    )
    body = {
        "v": 1,
        "type": "ack",
        "renl_id": draw(renl_ids),
        "status": draw(st.sampled_from(["delivered", "failed", "retry"])),
        "reason": draw(nasty_text | st.just("r" * 100_000)),
        "properties": {},
    }
    return draw(with_changes(body, json_values)) if draw(st.booleans()) else body
