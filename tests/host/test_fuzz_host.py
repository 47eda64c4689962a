"""The parsers of outside bytes on CPython (issue 10, item 4): `umeter decode` inputs with
hypothesis, and the firmware's parsers (which the host reuses: loracodec, bundles, the fleet
simulator's agent) with the seeded fuzzer the unix-port tests use (tests/firmware/fuzzing.py).
A large budget: `python benchmarks/fuzz.py`."""

from __future__ import annotations

import asyncio
import json
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umeter import decode
from umeter.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
import fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=80), st.text(max_size=120)))
def test_decode_lora_names_the_flaw_or_decodes(frame):
    try:
        d = decode.decode_lora(frame)
    except ConfigError as e:
        assert str(e)
        return
    json.dumps(d)


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=60),
    st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()), st.just(b"[" * 5000)),
)
def test_decode_mqtt_names_the_flaw_or_decodes(topic, payload):
    try:
        d = decode.decode_mqtt(topic, payload)
    except ConfigError as e:
        assert str(e)
        return
    json.dumps(d)


@pytest.mark.parametrize("name", sorted(fuzzing.TARGETS) + sorted(fuzzing.HOST_TARGETS))
def test_seeded_fuzz_on_cpython(name, tmp_path):
    tracemalloc.start()
    try:
        r = asyncio.run(fuzzing.run(name, 200 if name != "stored_records" else 80, seed=3, scratch=str(tmp_path)))
    finally:
        tracemalloc.stop()
    assert (r["uncaught"], r["examples"]) == (0, []), r["examples"]
