"""deploy/: the units, the example configurations and the RabbitMQ definitions agree with the code."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest

from alarmd.dispatcher import Dispatcher
from common.ens.abc import as_subscription
from common.ens.amqp import ACK_ROUTING_PREFIX, DEFAULT_EXCHANGE, AmqpBus, queue_name
from common.ens.reference import EVENT_ALARM, TODO_ALARM
from common.settings import AlarmdSettings, NotifydSettings, load_settings, smtp_password
from notifyd.service import STOP_GRACE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DEFINITIONS = ["definitions.json", "definitions-quorum.json"]


def directives(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file or drop-in, values in order (sections are not told apart)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span of the forms the units use: ``90s``, ``5min``, ``2``."""
    match = re.fullmatch(r"(\d+)\s*(s|min)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "min" else 1)


def code_queues() -> dict[str, str]:
    """The durable queues the services declare with the default settings: name → binding key."""
    pool = NotifydSettings().pool
    queues = {}
    for base in (EVENT_ALARM, TODO_ALARM):
        subscription = as_subscription(f"enp+pool.{pool}://{base}")  # as notifyd.service.Notifier subscribes
        queues[queue_name(f"{DEFAULT_EXCHANGE}.{subscription.queue_suffix()}")] = subscription.routing_key
    ack_key = ACK_ROUTING_PREFIX + AlarmdSettings().ack_to
    queues[queue_name(f"{DEFAULT_EXCHANGE}.{ack_key}")] = ack_key
    return queues


def definitions(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "rabbitmq" / name).read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("service", ["alarmd", "notifyd"])
def test_units_are_notify_services_with_a_watchdog_and_hardening(service: str) -> None:
    unit = directives(DEPLOY / f"{service}.service")
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": [f"/opt/calalarm/bin/{service}"],
        "Environment": ["CALALARM_CONFIG=/etc/calalarm/calalarm.toml"],
        "User": ["calalarm"],
        "Group": ["calalarm"],
        "Restart": ["on-failure"],
        "KillSignal": ["SIGTERM"],
        "StateDirectory": ["calalarm"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "NoNewPrivileges": ["yes"],
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "MemoryDenyWriteExecute": ["yes"],
    }
    for key, values in expected.items():
        for value in values:
            assert value in unit.get(key, []), f"{service}.service: {key}={value}"
    assert "@system-service" in unit["SystemCallFilter"]
    for dependency in ("network-online.target", "postgresql.service", "rabbitmq-server.service"):
        assert dependency in unit["After"][0].split()
        assert dependency in unit["Wants"][0].split()
    assert 10 <= seconds(unit["WatchdogSec"][0]) <= 60
    # A burst of 10,000 reminders logs 10,000 lines: more than journald's default lets through.
    assert int(unit["LogRateLimitBurst"][0]) / seconds(unit["LogRateLimitIntervalSec"][0]) > 10_000 / 30


def test_stop_timeouts_outlast_a_clean_stop() -> None:
    """systemd must not SIGKILL a service still finishing what it has in hand."""
    bus_close = inspect.signature(AmqpBus.__init__).parameters["close_timeout"].default
    dispatcher_grace = inspect.signature(Dispatcher.close).parameters["grace"].default
    alarmd = seconds(directives(DEPLOY / "alarmd.service")["TimeoutStopSec"][0])
    notifyd = seconds(directives(DEPLOY / "notifyd.service")["TimeoutStopSec"][0])
    assert alarmd > dispatcher_grace + STOP_GRACE + bus_close  # alarmd --with-notifier
    assert notifyd > STOP_GRACE + bus_close


def test_the_smtp_credential_reaches_the_smtp_password(tmp_path: Path) -> None:
    """LoadCredential= puts the file in $CREDENTIALS_DIRECTORY (%d); the unit's Environment= names it."""
    unit = directives(DEPLOY / "notifyd.service")
    [credential] = unit["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == "/etc/calalarm/smtp-password"
    (tmp_path / name).write_text("s3cret\n", encoding="utf-8")
    variables = dict(value.split("=", 1) for value in unit["Environment"])
    env = {key: value.replace("%d", str(tmp_path)) for key, value in variables.items() if key != "CALALARM_CONFIG"}
    settings = load_settings(DEPLOY / "examples" / "standard.toml", env=env)
    assert settings.smtp.password_file == str(tmp_path / name)
    assert smtp_password(settings.smtp, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    # Without the Environment= line (a drop-in that clears it) the credential is still found by name.
    plain = load_settings(DEPLOY / "examples" / "standard.toml", env={})
    assert smtp_password(plain.smtp, env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"


def test_the_embedded_example_is_sqlite_in_the_state_directory_and_the_in_process_bus() -> None:
    settings = load_settings(DEPLOY / "examples" / "embedded.toml", env={})
    assert settings.database.url == "sqlite:////var/lib/calalarm/calalarm.db"  # StateDirectory=calalarm
    assert settings.bus.url == "memory://"
    assert settings.smtp.endpoint.tls == "plain"
    dropin = directives(DEPLOY / "examples" / "alarmd-embedded.conf")
    assert dropin["ExecStart"] == ["", "/opt/calalarm/bin/alarmd --with-notifier"]


def test_the_standard_example_keeps_secrets_out() -> None:
    settings = load_settings(DEPLOY / "examples" / "standard.toml", env={})
    assert settings.database.url.startswith("postgresql")
    assert settings.bus.url.startswith("amqp://")
    assert (settings.smtp.password, settings.smtp.password_file) == ("", "")


@pytest.mark.parametrize("name", DEFINITIONS)
def test_definitions_declare_what_the_code_declares(name: str) -> None:
    data = definitions(name)
    quorum = data["vhosts"][0]["metadata"].get("default_queue_type") == "quorum"
    exchanges = {e["name"]: e for e in data["exchanges"]}
    assert exchanges[DEFAULT_EXCHANGE] | {"vhost": None} == {
        "name": DEFAULT_EXCHANGE,
        "vhost": None,
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }
    queues = {q["name"]: q for q in data["queues"]}
    expected = code_queues()
    assert expected.keys() <= queues.keys()
    for queue in expected:
        assert queues[queue]["durable"] is True
        assert queues[queue]["auto_delete"] is False
        # The code declares these queues without arguments; a redeclaration with other
        # arguments fails (PRECONDITION_FAILED). On a vhost whose default queue type is
        # quorum, the broker adds x-queue-type=quorum to the code's declaration.
        assert queues[queue]["arguments"] == ({"x-queue-type": "quorum"} if quorum else {})
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in data["bindings"]}
    assert {(DEFAULT_EXCHANGE, queue, key) for queue, key in expected.items()} <= bindings
    assert {entry["vhost"] for entry in data["exchanges"] + data["queues"] + data["bindings"] + data["policies"]} == {
        data["vhosts"][0]["name"]
    }


@pytest.mark.parametrize("name", DEFINITIONS)
def test_dead_lettering_covers_the_durable_queues(name: str) -> None:
    data = definitions(name)
    [policy] = data["policies"]
    dead_exchange = policy["definition"]["dead-letter-exchange"]
    assert dead_exchange in {e["name"] for e in data["exchanges"]}
    dead_queues = {b["destination"] for b in data["bindings"] if b["source"] == dead_exchange}
    assert dead_queues, "dead letters need a queue to land in"
    for queue in code_queues():
        assert re.search(policy["pattern"], queue), queue
    for queue in dead_queues:
        assert not re.search(policy["pattern"], queue), "a dead-letter queue must not dead-letter into itself"


@pytest.mark.parametrize("name", DEFINITIONS)
def test_the_service_user_may_use_every_name_the_code_uses(name: str) -> None:
    data = definitions(name)
    [user] = data["users"]
    assert "password" not in user
    assert "password_hash" not in user  # set with rabbitmqctl change_password
    [permissions] = data["permissions"]
    names = [
        DEFAULT_EXCHANGE,
        *code_queues(),
        queue_name(f"{DEFAULT_EXCHANGE}.sub.ics.eventalarm.0123456789ab"),  # a plain subscription's queue
        *(e["name"] for e in data["exchanges"]),
        *(q["name"] for q in data["queues"]),
    ]
    for kind in ("configure", "write", "read"):
        for entity in names:
            assert re.fullmatch(permissions[kind], entity), f"{kind} {entity}"
    assert not re.fullmatch(permissions["configure"], "amq.direct")
