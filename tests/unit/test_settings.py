from pathlib import Path

import pytest

from common.settings import ConfigError, SmtpEndpoint, SmtpSettings, load_settings, parse_listen, smtp_password


def test_defaults_are_the_embedded_deployment() -> None:
    s = load_settings(None, env={})
    assert s.database.url.startswith("sqlite:///")
    assert s.bus.url == "memory://"
    assert s.smtp.endpoint == SmtpEndpoint("127.0.0.1", 25, "starttls")  # TLS unless plain text is allowed
    assert not s.smtp.allow_plaintext


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
        ("smtp://mail:2525", SmtpEndpoint("mail", 2525, "starttls")),
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
        ("", {"CALALARM_ALARMD_ACK_TIMEOUT": "30"}, "must exceed smtp.deadline"),
        ("", {"CALALARM_SMTP_DEADLINE": "5"}, "smtp.deadline .* must be at least smtp.timeout"),
        ("", {"CALALARM_SMTP_POOL_SIZE": "0"}, "smtp.pool_size must be at least 1"),
        ("", {"CALALARM_SMTP_RATE_LIMIT": "-1"}, "smtp.rate_limit must be 0"),
        ("", {"CALALARM_SMTP_RATE_BURST": "0"}, "smtp.rate_burst must be at least 1"),
        ("", {"CALALARM_SMTP_ALLOW_PLAINTEXT": "maybe"}, "smtp.allow_plaintext must be a bool"),
        (
            "",
            {"CALALARM_SMTP_ALLOW_PLAINTEXT": "true", "CALALARM_SMTP_URL": "smtps://mail"},
            "allow_plaintext applies to smtp:// only",
        ),
        (
            "",
            {"CALALARM_SMTP_ALLOW_PLAINTEXT": "yes", "CALALARM_SMTP_URL": "smtp://mail", "CALALARM_SMTP_USERNAME": "u"},
            "password in clear text to mail",
        ),
        ("", {"CALALARM_SMTP_PASSWORD": "a", "CALALARM_SMTP_PASSWORD_FILE": "/x"}, "not both"),
        ("", {"CALALARM_NOTIFYD_DESCRIPTION_MAX": "10"}, "notifyd.description_max"),
        ("", {"CALALARM_NOTIFYD_DEDUP_RETENTION": "30"}, "notifyd.dedup_retention must be longer"),
        ("", {"CALALARM_SMTP_URL": "http://x"}, "smtp.url"),
        ("", {"CALALARM_ALARMD_DEFAULT_TZ": "Mars/Olympus"}, "IANA"),
        ("", {"CALALARM_ALARMD_DEFAULT_TZ": "Europe"}, "IANA"),
        ("", {"CALALARM_ALARMD_PUBLISH_AHEAD": "-0.5"}, "alarmd.publish_ahead must be 0 to 10 seconds"),
        ("", {"CALALARM_ALARMD_PUBLISH_AHEAD": "11"}, "alarmd.publish_ahead must be 0 to 10 seconds"),
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


def test_plain_text_only_when_allowed() -> None:
    assert load_settings(None, env={"CALALARM_SMTP_URL": "smtp://relay"}).smtp.endpoint.tls == "starttls"
    allowed = load_settings(None, env={"CALALARM_SMTP_URL": "smtp://relay", "CALALARM_SMTP_ALLOW_PLAINTEXT": "1"})
    assert allowed.smtp.endpoint.tls == "plain"
    local_auth = {"CALALARM_SMTP_URL": "smtp://127.0.0.1", "CALALARM_SMTP_ALLOW_PLAINTEXT": "1"}
    assert load_settings(None, env={**local_auth, "CALALARM_SMTP_USERNAME": "u"}).smtp.username == "u"


def test_lists_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[notifyd]\nallowed_domains = ["example.com", "*.example.org"]\n')
    assert load_settings(path, env={}).notifyd.allowed_domains == ("example.com", "*.example.org")
    env = {"CALALARM_NOTIFYD_ALLOWED_DOMAINS": "a.example, *.b.example ,"}
    assert load_settings(None, env=env).notifyd.allowed_domains == ("a.example", "*.b.example")


def test_password_never_in_the_settings_repr() -> None:
    settings = load_settings(None, env={"CALALARM_SMTP_PASSWORD": "hunter2-secret"})
    assert settings.smtp.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(settings)


def test_password_sources(tmp_path: Path) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("from-file\n")
    assert smtp_password(SmtpSettings(password="direct"), env={}) == "direct"
    assert smtp_password(SmtpSettings(password_file=str(secret)), env={}) == "from-file"
    assert smtp_password(SmtpSettings(), env={"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-file"
    assert smtp_password(SmtpSettings(url="smtps://u:in-url@mail"), env={}) == "in-url"
    with pytest.raises(ConfigError, match="cannot read"):
        smtp_password(SmtpSettings(password_file=str(tmp_path / "missing")), env={})


def test_metrics_and_logging_settings_default_to_off_and_text() -> None:
    s = load_settings(None, env={})
    assert (s.alarmd.metrics_listen, s.notifyd.metrics_listen) == ("", "")
    assert (s.logging.format, s.logging.level) == ("text", "INFO")


def test_metrics_and_logging_settings_from_file_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[alarmd]\nmetrics_listen = "127.0.0.1:9464"\n[logging]\nformat = "json"\nlevel = "warning"\n')
    env = {"CALALARM_NOTIFYD_METRICS_LISTEN": ":9465", "CALALARM_LOGGING_FORMAT": "keyvalue"}
    s = load_settings(path, env=env)
    assert (s.alarmd.metrics_listen, s.notifyd.metrics_listen) == ("127.0.0.1:9464", ":9465")
    assert (s.logging.format, s.logging.level) == ("keyvalue", "warning")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CALALARM_ALARMD_METRICS_LISTEN": "9464"}, "alarmd.metrics_listen '9464': write HOST:PORT"),
        ({"CALALARM_NOTIFYD_METRICS_LISTEN": "localhost:http"}, "notifyd.metrics_listen .*HOST:PORT"),
        ({"CALALARM_ALARMD_METRICS_LISTEN": "127.0.0.1:70000"}, "alarmd.metrics_listen"),
        ({"CALALARM_ALARMD_METRICS_LISTEN": "::1:9464"}, r"\[::1\]:9464 on IPv6"),
        ({"CALALARM_LOGGING_FORMAT": "xml"}, 'logging.format .xml.: use "text", "keyvalue" or "json"'),
        ({"CALALARM_LOGGING_LEVEL": "LOUD"}, "logging.level 'LOUD': use DEBUG, INFO, WARNING or ERROR"),
    ],
)
def test_bad_metrics_and_logging_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env=env)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9465", ("0.0.0.0", 9465)),
        ("[::1]:9464", ("::1", 9464)),
        ("metrics.example.com:80", ("metrics.example.com", 80)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_metrics_listen_addresses(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen, "alarmd.metrics_listen") == expected
