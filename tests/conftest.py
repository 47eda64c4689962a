"""Shared fixtures: real brokers on loopback."""

from __future__ import annotations

import pytest

from umeter.broker import EmbeddedBroker, Mosquitto, mosquitto_path


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
