"""The one validation path (umeter.validate.classify) in front of both stores: every payload
gets a typed message or a reject with a reason, never an exception; what it accepts, both
stores can hold."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from umeter.backlog import record_payload
from umeter.store import open_store
from umeter.validate import HEAD_BYTES, Record, Reject, Result, State, Telemetry, classify, telemetry_doc

TELEMETRY = {"node": "n1", "seq": 4, "ts": 5, "v": 230.1, "p": 1.0, "e_imp_wh": 1.0, "e_exp_wh": 0.0, "elements": []}


def _doc(base=7, **change):
    _, payload = record_payload("n1", base)
    d = json.loads(payload)
    d.update(change)
    return json.dumps(d).encode()


def test_real_node_payloads_are_accepted():
    for seq in (1, 8):  # a profile and an event, as the outbox sends them
        topic, payload = record_payload("n1", seq)
        m = classify("umeter", topic, payload)
        assert isinstance(m, Record) and (m.node, m.stream, m.seq, m.held) == ("n1", "log", seq, 1)
    assert isinstance(classify("umeter", "umeter/n1/telemetry", json.dumps(TELEMETRY).encode()), Telemetry)
    assert classify("umeter", "umeter/n1/state", b"online") == State("n1", "online")
    assert isinstance(classify("umeter", "umeter/n1/cmd/result", b'{"id": "c1", "ok": true}'), Result)
    unknown = {"node": "n1", "kind": "unknown", "seq": 3, "ts": 9, "error": "profile payload is 7 bytes", "held": 1}
    assert isinstance(classify("umeter", "umeter/n1/profile", json.dumps(unknown).encode()), Record), (
        "the outbox's 'unknown' record keeps its seq"
    )


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        # the payloads that stopped the consumer (issue 10 row 3)
        ("umeter/n1/profile", _doc(ts="abc"), "ts = 'abc' is not an integer"),
        ("umeter/n1/profile", _doc(ts=[]), "ts = [] is not an integer"),
        ("umeter/n1/profile", _doc().replace(b'"ts": 1780006300', b'"ts": 1e400'), "ts = inf is not an integer"),
        ("umeter/n1/profile", _doc().decode().encode("utf-16"), "payload is not UTF-8 (byte 0)"),
        ("umeter/n1/profile", _doc(seq=2**70), f"seq = {2**70} is outside 1..4294967295"),
        ("umeter/n1/profile", _doc(ts=2**70), f"ts = {2**70} is outside 0..4294967295"),
        ("umeter/n1/cmd/result", b'{"id": {"a": 1}, "ok": false}', "id = {'a': 1} is not a command id"),
        # and more of the kind
        ("umeter/n1/profile", b"[1, 2]", "payload is a JSON list, not an object"),
        ("umeter/n1/profile", b'{"seq": NaN}', "NaN is not JSON"),
        ("umeter/n1/profile", _doc(seq=True), "seq = True is not an integer"),
        ("umeter/n1/profile", _doc(kind="event"), "kind = 'event' does not belong on …/profile"),
        ("umeter/n1/profile", _doc(node="n2"), "node = 'n2' is not the topic's node"),
        ("umeter/n1/profile", _doc(held=8), "held = 8 is above seq = 7"),
        ("umeter/n1/profile", _doc(e_imp_mwh="1"), "e_imp_mwh = '1' is not an integer"),
        ("umeter/n1/profile", _doc(e_imp_mwh=2**64), "e_imp_mwh = 18446744073709551616 is outside"),
        ("umeter/n1/profile", _doc(extra=-(2**64)), "does not fit 64 bits"),
        ("umeter/n1/profile", _doc().replace(b'"kind"', b'"x": 1e400, "kind"'), "a number is not finite"),
        ("umeter/n1/profile", _doc(note="a\x00b"), "NUL character"),
        ("umeter/n1/profile", _doc().replace(b'"kind"', b'"k\\ud800": 1, "kind"'), "lone UTF-16 surrogate"),
        ("umeter/n1/profile", b"[" * 100000 + b"]" * 100000, "bytes is over 65536"),
        ("umeter/n1/profile", b"[" * 30000 + b"]" * 30000, "payload is not JSON"),
        (
            "umeter/n1/profile",
            _doc().replace(b'"kind"', b'"x": ' + b"[" * 20 + b"]" * 20 + b', "kind"'),
            "deeper than 16",
        ),
        ("umeter/n1/telemetry", b'{"seq": 1}', "telemetry payload lacks 'node'"),
        ("umeter/n1/telemetry", json.dumps(dict(TELEMETRY, v="x")).encode(), "v = 'x' is not a number"),
        ("umeter/n1/state", b"\xff\xfe", "state is not UTF-8"),
        ("umeter/n1/state", b"x" * 33, "state is not a short printable word"),
        ("umeter/" + "n" * 65 + "/profile", _doc(), "node id of 65 characters"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(topic, payload, reason):
    r = classify("umeter", topic, payload)
    assert isinstance(r, Reject), r
    assert reason in r.reason, r.reason
    assert r.head == payload[:HEAD_BYTES] and r.topic == topic[:256]


def test_a_reject_keeps_the_records_key_when_it_could_be_read():
    r = classify("umeter", "umeter/n1/profile", _doc(12, ts="abc"))
    assert (r.node, r.stream, r.seq) == ("n1", "log", 12)
    assert classify("umeter", "umeter/n1/profile", _doc(seq="x")).seq is None


def test_a_gateway_reading_as_the_outbox_sends_it_is_accepted():
    from meternode.gateway import reading
    from meternode.store import records

    r = reading.Readings()
    r.add(reading.quantity("energy_import"), 123456, -2, reading.unit_index("kWh"))
    r.add(reading.quantity("voltage_l1"), 2314, -1, reading.unit_index("V"))
    r.add(reading.quantity("energy_export"), 2**63 - 1, 0, reading.unit_index("kWh"))  # the i64 edge
    d = records.to_json_dict("gw1", records.READING, 9, 1_780_000_000, reading.pack("dlt645-000000123456", r))
    d["held"] = 1
    m = classify("umeter", "umeter/gw1/reading", json.dumps(d).encode())
    assert isinstance(m, Record) and m.kind == "reading" and m.doc["readings"][0]["value"] == "1234.56"


def test_topics_the_consumer_does_not_keep_are_none():
    for topic in ("other/n1/profile", "umeter/n1", "umeter/n1/policy/state", "umeter/n1/resend", "homeassistant/x/y"):
        assert classify("umeter", topic, b"{}") is None


# -- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
record_keys = ["seq", "ts", "kind", "held", "node", "stream", "period_s", "e_imp_mwh", "code", "arg", "text", "event"]
mutated_records = st.builds(
    lambda seq, changes: _doc(seq, **changes),
    st.integers(1, 50),
    st.dictionaries(st.sampled_from(record_keys), json_values, max_size=3),
)
leaves = st.sampled_from(["profile", "event", "reading", "telemetry", "state", "cmd/result", "other"])
payloads = st.one_of(st.binary(max_size=300), mutated_records, json_values.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaf=leaves, payload=payloads, node=st.text(min_size=0, max_size=70))
def test_classify_never_raises_and_rejects_say_why(leaf, payload, node):
    r = classify("umeter", f"umeter/{node}/{leaf}", payload)
    assert r is None or isinstance(r, Record | Telemetry | State | Result | Reject)
    if isinstance(r, Reject):
        assert r.reason and len(r.head) <= HEAD_BYTES
        r.reason.encode("utf-8")
        r.topic.encode("utf-8")
        r.node.encode("utf-8")


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_store(request, tmp_path_factory):
    if request.param == "sqlite":
        s = open_store(tmp_path_factory.mktemp("v") / "v.sqlite")
    else:
        s = open_store(request.getfixturevalue("pg_url"))
    yield s
    s.close()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(leaf=leaves, payload=payloads)
def test_what_validation_accepts_every_store_holds(shared_store, leaf, payload):
    # One validation path for both stores: an accepted message never makes a store raise
    # (PostgreSQL's jsonb is stricter than SQLite's text: NUL, surrogates, huge numbers).
    r = classify("umeter", f"umeter/n1/{leaf}", payload)
    if r is not None:
        out = shared_store.ingest([r])
        assert len(out.results) == 1


def test_telemetry_doc_takes_what_a_node_sends_and_names_what_is_missing():
    # The sim's view reads telemetry through it: a payload the firmware wrote (encode_into,
    # run on the host) passes whole; anything else is a ValueError that says why.
    from meternode.link import telemetry

    element = {"name": "I1", "i": 4.35, "p": 1000.25, "p_min": 990.0, "p_max": 1010.0, "e_imp_wh": 1.5, "e_exp_wh": 0.0}
    snap = {"v": 230.04, "f": 50.001, "cycles": 50, "elements": [element], "e_imp_mwh": 1500, "e_exp_mwh": 0}
    buf = bytearray(2048)
    n = telemetry.encode_into(buf, "n1", 4, 5, snap)
    d = telemetry_doc(bytes(buf[:n]))
    assert (d["node"], d["seq"], d["ts"], d["e_imp_wh"], d["elements"][0]["name"]) == ("n1", 4, 5, 1.5, "I1")
    assert telemetry_doc(json.dumps(TELEMETRY)) == TELEMETRY
    for payload, why in (
        (json.dumps({k: v for k, v in TELEMETRY.items() if k != "elements"}), "lacks 'elements'"),
        ("[1, 2]", "is a list, not an object"),
        ("{", None),  # json's own message
        (b"\xff\xfe", None),  # not UTF-8
    ):
        with pytest.raises(ValueError, match=why):
            telemetry_doc(payload)


def test_a_monthly_freeze_with_and_without_the_maximum_demand_is_accepted_and_a_bad_one_is_not():
    from meternode.store import records

    def monthly(payload, **change):
        d = records.to_json_dict("n1", records.MONTHLY, 5, 1706745600, payload)
        d.update(change)
        return json.dumps(d).encode()

    new = records.freeze(10**9, 5, 1, 2, (4100500, 1706745600))
    m = classify("umeter", "umeter/n1/profile", monthly(new))
    assert isinstance(m, Record) and (m.kind, m.doc["md_mw"], m.doc["md_at"]) == ("monthly", 4100500, 1706745600)
    old = classify("umeter", "umeter/n1/profile", monthly(records.freeze(10**9, 5, 1, 2)))
    assert isinstance(old, Record) and "md_mw" not in old.doc, "a firmware before billing months"
    r = classify("umeter", "umeter/n1/profile", monthly(new, md_mw=-1))
    assert isinstance(r, Reject) and "md_mw = -1 is outside 0..4294967295" in r.reason, r
    r = classify("umeter", "umeter/n1/profile", monthly(new, md_at="x"))
    assert isinstance(r, Reject) and "md_at = 'x' is not an integer" in r.reason, r
