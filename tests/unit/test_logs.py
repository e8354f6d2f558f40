"""common/logs.py: the three line formats, their escaping, the URL-password guard, setup_logging."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from common.logs import (
    JsonFormatter,
    KeyValueFormatter,
    TextFormatter,
    logfmt_value,
    setup_logging,
    without_addresses,
)
from common.settings import LoggingSettings

CREATED = 1795428000.25  # 2026-11-23T10:00:00.250Z
SECRET = "s3cr3t-Pa55"


def record(
    msg: str = "published",
    *args: object,
    level: int = logging.INFO,
    name: str = "alarmd.dispatcher",
    exc: bool = False,
    **extra: object,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"cannot reach amqp://calalarm:{SECRET}@broker:5672/ (second line\nhere)")
        except RuntimeError:
            exc_info = sys.exc_info()
    made = logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)
    made.created, made.msecs = CREATED, 250.0
    made.__dict__.update(extra)
    return made


def test_keyvalue_is_logfmt_one_line() -> None:
    line = KeyValueFormatter().format(record(alarm=42, attempt=1, calid="jac", rid="", state="inflight"))
    assert line == (
        "ts=2026-11-23T10:00:00.250Z level=info logger=alarmd.dispatcher msg=published "
        'alarm=42 attempt=1 calid=jac rid="" state=inflight'
    )


def test_keyvalue_escapes_quotes_newlines_and_controls() -> None:
    line = KeyValueFormatter().format(
        record('ack "odd"\nforged=line', reason='550 "no"\r\nuser', sep="a\u2028b", tab="x\ty", eq="a=b", flag=True)
    )
    assert "\n" not in line
    assert "\r" not in line
    assert "\u2028" not in line
    assert r'msg="ack \"odd\"\nforged=line"' in line
    assert r'reason="550 \"no\"\r\nuser"' in line
    assert r'sep="a\u2028b"' in line
    assert r'tab="x\ty"' in line
    assert 'eq="a=b"' in line
    assert "flag=true" in line


def test_logfmt_values() -> None:
    assert [logfmt_value(v) for v in ("jac", "", None, 7, 1.5, "two words", "é", "back\\slash")] == [
        "jac",
        '""',
        '""',
        "7",
        "1.5",
        '"two words"',
        "é",
        r'"back\\slash"',
    ]


def test_json_is_one_object_per_line_with_the_extra_fields() -> None:
    line = JsonFormatter().format(
        record("ack", level=logging.WARNING, alarm=42, status="failed", reason='550 "x"\nnext', calid="Jürgen")
    )
    assert "\n" not in line
    assert line.isascii()
    assert json.loads(line) == {
        "ts": "2026-11-23T10:00:00.250Z",
        "level": "warning",
        "logger": "alarmd.dispatcher",
        "msg": "ack",
        "alarm": 42,
        "status": "failed",
        "reason": '550 "x"\nnext',
        "calid": "Jürgen",
    }


def test_json_and_keyvalue_carry_the_exception_on_the_same_line() -> None:
    for formatter in (JsonFormatter(), KeyValueFormatter()):
        line = formatter.format(record("the bus failed", level=logging.ERROR, exc=True))
        assert "\n" not in line
        assert "Traceback" in line
        assert "RuntimeError" in line


def test_text_is_the_classic_line_plus_the_fields_the_message_does_not_show() -> None:
    line = TextFormatter().format(record("acked renl=%s %s", "42:1", "delivered", renl="42:1", status="delivered"))
    assert line.endswith(" INFO alarmd.dispatcher acked renl=42:1 delivered status=delivered")
    plain = TextFormatter().format(record("alarmd dispatching"))
    assert plain.endswith(" INFO alarmd.dispatcher alarmd dispatching")
    escaped = TextFormatter().format(record("ack", reason='550 "no"\nuser'))
    assert escaped.endswith(r' ack reason="550 \"no\"\nuser"')


@pytest.mark.parametrize("formatter", [TextFormatter(), KeyValueFormatter(), JsonFormatter()], ids=type)
def test_a_password_in_a_url_never_appears(formatter: logging.Formatter) -> None:
    lines = [
        formatter.format(record("cannot use the bus at %s", f"amqp://calalarm:{SECRET}@broker:5672/vhost")),
        formatter.format(record("waiting", url=f"postgresql+psycopg://calalarm:{SECRET}@db/calalarm")),
        formatter.format(record("smtp", url=f"smtps://u%40x:{SECRET}@mail:465 and more")),
        formatter.format(record("the bus failed", level=logging.ERROR, exc=True)),
    ]
    for line in lines:
        assert SECRET not in line, line
        assert ":***@" in line, line
    # URLs without a password are left as they are.
    assert "amqp://calalarm@broker/" in formatter.format(record("bus %s", "amqp://calalarm@broker/"))


def test_without_addresses() -> None:
    reason = "delivered to 1 of 2 recipients; refused: bob@example.com: 550 5.1.1 <bob@example.com>\nno such user"
    assert without_addresses(reason) == (
        "delivered to 1 of 2 recipients; refused: <address>: 550 5.1.1 <<address>> no such user"
    )


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_setup_logging_installs_the_chosen_format_and_level(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    setup_logging(LoggingSettings(format="JSON", level="warning"), stream=out, force=True)
    logging.getLogger("alarmd.test").info("not shown")
    logging.getLogger("alarmd.test").warning("shown", extra={"alarm": 7})
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["alarm"] == 7
    # Called again (alarmd --log-level DEBUG): its own handler is replaced, not doubled.
    again = io.StringIO()
    setup_logging(LoggingSettings(format="keyvalue"), level="debug", stream=again)
    logging.getLogger("alarmd.test").debug("debug now", extra={"alarm": 8})
    assert out.getvalue().count("\n") == 1
    assert again.getvalue().endswith('msg="debug now" alarm=8\n')
    assert root_logger.level == logging.DEBUG


def test_setup_logging_leaves_someone_elses_handlers_alone(root_logger: logging.Logger) -> None:
    theirs = logging.StreamHandler(io.StringIO())
    root_logger.addHandler(theirs)
    assert setup_logging(LoggingSettings(), stream=io.StringIO()) is None
    assert theirs in root_logger.handlers
