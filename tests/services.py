"""Where the real services are, and what to do when one is missing.

Locally a missing service skips its tests with the reason; under ``CI=true`` it
fails them, so a green CI run always means the real services were exercised.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_ADMIN_URL = os.environ.get("CALALARM_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("CALALARM_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} is not answering on {host}:{port}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI needs it (.ci/run starts it)")
    pytest.skip(f"{message}; start it to run this test")


def require_postgres() -> None:
    require("PostgreSQL", "127.0.0.1", 5432)


def require_rabbitmq() -> None:
    require("RabbitMQ", "127.0.0.1", 5672)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database for one test module; yield its SQLAlchemy URL; drop it."""
    import sqlalchemy as sa

    require_postgres()
    name = f"calalarm_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def unique_exchange() -> str:
    """An exchange name of its own, so tests never see each other's messages."""
    return f"ens-test-{uuid.uuid4().hex[:10]}"
