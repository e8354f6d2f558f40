from pathlib import Path

import pytest

from common.settings import ConfigError, SmtpEndpoint, load_settings


def test_defaults_are_the_embedded_deployment() -> None:
    s = load_settings(None, env={})
    assert s.database.url.startswith("sqlite:///")
    assert s.bus.url == "memory://"
    assert s.smtp.endpoint == SmtpEndpoint("127.0.0.1", 8025, "plain")


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[bus]\nurl = "amqp://guest:guest@127.0.0.1/"\n[smtp]\nfrom = "a@b"\n[alarmd]\nack_timeout = 45\n')
    s = load_settings(path, env={"CALALARM_DATABASE_URL": "postgresql://x/y", "CALALARM_ALARMD_BATCH_SIZE": "7"})
    assert s.bus.url == "amqp://guest:guest@127.0.0.1/"
    assert s.smtp.sender == "a@b"
    assert s.alarmd.ack_timeout == 45.0
    assert s.alarmd.batch_size == 7
    assert s.database.url == "postgresql://x/y"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[notifyd]\npool = "mail"\n')
    assert load_settings(None, env={"CALALARM_CONFIG": str(path)}).notifyd.pool == "mail"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail:2525", SmtpEndpoint("mail", 2525, "plain")),
        ("smtp+starttls://mail", SmtpEndpoint("mail", 587, "starttls")),
        ("smtps://u%40x:p@mail", SmtpEndpoint("mail", 465, "implicit", "u@x", "p")),
    ],
)
def test_smtp_urls(url: str, expected: SmtpEndpoint) -> None:
    assert SmtpEndpoint.parse(url) == expected


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("[database\n", {}, "not valid TOML"),
        ("[nope]\n", {}, "unknown section"),
        ("[bus]\nport = 1\n", {}, "unknown setting bus.port"),
        ("", {"CALALARM_ALARMD_ACK_TIMEOUT": "soon"}, "alarmd.ack_timeout must be a float"),
        ("", {"CALALARM_ALARMD_ACK_TIMEOUT": "0"}, "positive"),
        ("", {"CALALARM_ALARMD_ACK_TIMEOUT": "30"}, "must exceed twice smtp.timeout"),
        ("", {"CALALARM_SMTP_URL": "http://x"}, "smtp.url"),
        ("", {"CALALARM_ALARMD_DEFAULT_TZ": "Mars/Olympus"}, "IANA"),
        ("", {"CALALARM_ALARMD_HORIZON_DAYS": "0"}, "alarmd.horizon_days must be a positive"),
        ("", {"CALALARM_ALARMD_EXTEND_EVERY": "-1"}, "alarmd.extend_every must be a positive"),
        ("", {"CALALARM_ALARMD_HORIZON_DAYS": "1", "CALALARM_ALARMD_EXTEND_EVERY": "86400"}, "well under the horizon"),
        ("", {"CALALARM_ALARMD_MIN_INTERVAL": "-5"}, "alarmd.min_interval must be 0"),
    ],
)
def test_bad_configuration_names_the_setting(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env=env)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("/nonexistent/calalarm.toml", env={})


def test_shipped_example_configurations_load() -> None:
    examples = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    assert load_settings(examples / "calalarm.toml", env={}) == load_settings(None, env={})
    standard = load_settings(examples / "standard.toml", env={})
    assert standard.smtp.endpoint.tls == "starttls"
    assert standard.bus.url.startswith("amqp://")
