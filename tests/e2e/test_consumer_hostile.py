"""Nothing a node publishes stops the consumer (issue 10 row 3), against a real Mosquitto: each
payload that used to kill paho's network thread (so no later record of any node was stored)
is now a reject with its reason, and the next record is stored; hypothesis-generated payloads
likewise, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umeter.backlog import record_payload
from umeter.broker import mosquitto_path
from umeter.consumer import Consumer
from umeter.validate import Reject, classify

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")


def _bad(**change) -> bytes:
    d = json.loads(record_payload("bad", 5)[1])
    d.update(change)
    return json.dumps(d).encode()


POISON = {
    "ts_text": ("umeter/bad/profile", _bad(ts="abc")),
    "ts_list": ("umeter/bad/profile", _bad(ts=[])),
    "ts_1e400": ("umeter/bad/profile", _bad(ts=0).replace(b'"ts": 0', b'"ts": 1e400')),
    "utf16_json": ("umeter/bad/profile", record_payload("bad", 5)[1].decode().encode("utf-16")),
    "seq_2_70": ("umeter/bad/profile", _bad(seq=2**70)),
    "ts_2_70": ("umeter/bad/profile", _bad(ts=2**70)),
    "result_id_object": ("umeter/bad/cmd/result", b'{"id": {"x": 1}, "ok": false, "status": "rejected"}'),
}


class Pub:
    def __init__(self, broker) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.max_queued_messages_set(0)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def send(self, topic: str, payload: bytes, wait: bool = True) -> None:
        info = self.c.publish(topic, payload, qos=1)
        if wait:
            info.wait_for_publish(5)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _alive(c: Consumer) -> None:
    assert c.connection() == "connected"
    assert c._client._thread.is_alive(), "paho's network thread still runs"
    assert c.stats["errors"] == 0, "nothing reached the store that it refused"


@pytest.mark.parametrize("case", list(POISON))
def test_a_poison_payload_is_rejected_and_the_next_records_are_stored(case, mosquitto, tmp_path):
    topic, payload = POISON[case]
    with Consumer(tmp_path / "c.sqlite", mosquitto.host, mosquitto.port) as c:
        p = Pub(mosquitto)
        try:
            p.send(*record_payload("good", 1))
            p.send(topic, payload)
            p.send(*record_payload("good", 2))  # on the old consumer, nothing after the poison was stored
            p.send(*record_payload("bad", 6))
            c.wait_for(lambda: c.count("good") == 2 and c.count("bad") == 1, 10, "the records after the poison")
            _alive(c)
            [rej] = c.rejects()
            assert rej["topic"] == topic and rej["head"] == payload[:256] and rej["node"] == "bad"
            assert rej["reason"] == classify("umeter", topic, payload).reason
            assert c.counters()["rejects"] == 1
            c.wait_for(lambda: c.health()["rejects"] == 1, 2, "the reject in the health counts (updated after commit)")
        finally:
            p.close()


node_names = st.text(
    alphabet=st.characters(blacklist_characters="/+#", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=70
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
fields = ["seq", "ts", "kind", "held", "node", "e_imp_mwh", "code", "text", "id", "v", "elements"]
payloads = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda s, ch: _bad(**{"seq": s, **ch}),
        st.integers(1, 40),
        st.dictionaries(st.sampled_from(fields), json_values, max_size=2),
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.text(max_size=60).map(lambda t: t.encode("utf-16")),
)
leaves = st.sampled_from(["profile", "event", "reading", "telemetry", "state", "cmd/result"])


def test_hypothesis_payloads_never_stop_the_consumer(mosquitto, db_url):
    with Consumer(db_url, mosquitto.host, mosquitto.port, gap_wait=60) as c:
        p = Pub(mosquitto)
        canary = itertools.count(1)
        sent = {"rejects": 0}

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(batch=st.lists(st.tuples(node_names, leaves, payloads), min_size=1, max_size=6))
        def run(batch):
            for node, leaf, payload in batch:
                topic = f"umeter/{node}/{leaf}"
                if isinstance(classify("umeter", topic, payload), Reject):
                    sent["rejects"] += 1
                p.send(topic, payload, wait=False)
            seq = next(canary)
            p.send(*record_payload("canary", seq))
            c.wait_for(lambda: c.count("canary") == seq, 10, f"canary record {seq} after a hostile batch")
            _alive(c)

        try:
            run()
        finally:
            p.close()
        assert c.counters()["rejects"] + c.counters()["duplicates"] >= 1
        assert c.stats["rejects"] <= sent["rejects"], "nothing valid was rejected"
        assert c.stats["received"] >= sent["rejects"]
