"""Shared fixtures: real brokers on loopback."""

from __future__ import annotations

import sys

import pytest

from umeter.broker import EmbeddedBroker, Mosquitto, mosquitto_path


@pytest.fixture(autouse=True)
def _billing_time_in_utc():
    """`meternode.ticks.LOCAL_S` is a board's global, the node's billing time: firmware run in
    this process sets it (the CPython fuzz targets' policy service loads a policy in UTC+1,
    policy/rare.py), so each test ends by putting it back to UTC, as a new board starts."""
    yield
    t = sys.modules.get("meternode.ticks")
    if t is not None:
        t.LOCAL_S = 0


@pytest.fixture
def mosquitto():
    if mosquitto_path() is None:
        pytest.skip("Mosquitto is not installed (apt-get install mosquitto); CI installs it")
    with Mosquitto() as m:
        yield m


@pytest.fixture
def embedded_broker():
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(params=["mosquitto", "amqtt"])
def any_broker(request):
    """The same test against a real Mosquitto and against the embedded amqtt broker."""
    return request.getfixturevalue("mosquitto" if request.param == "mosquitto" else "embedded_broker")


def _postgres_missing() -> str | None:
    from umeter.pgserver import pg_bindir

    if pg_bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql); CI installs it"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server per test worker (initdb + start: ~1 s); tests get their own database."""
    why = _postgres_missing()
    if why:
        pytest.skip(why)
    from umeter.pgserver import PostgresServer

    with PostgresServer() as pg:
        yield pg


@pytest.fixture
def pg_url(postgres_server, request):
    """A fresh, empty database on the worker's PostgreSQL server."""
    import re

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + f"_{id(request) % 100000}"
    return postgres_server.create_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test against both stores: an SQLite file and a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "meter.sqlite")
    return request.getfixturevalue("pg_url")
