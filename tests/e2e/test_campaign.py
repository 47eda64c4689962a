"""Campaigns through a real Mosquitto to a simulated fleet running the firmware's own policy
and OTA code: canary then batches, per-node results, halt on failures, resume from SQLite."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from umeter.campaign import CampaignDB, CampaignSpec, MqttTransport, ota_messages, plan_stages, run
from umeter.errors import PolicyError
from umeter.fleetsim import FleetSim
from umeter.policy import compile_source, policy_bundle
from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle

KEY = Ed25519PrivateKey.generate()
FLEET = fleet_identity(KEY, "acme", ["north"])
POLICY = compile_source(
    {"name": "flat", "tariffs": ["std"], "seasons": [{"start": "01-01", "weekday": [["00:00", "std"]]}]}
)


def _firmware(version: int, campaign: str) -> bytes:
    files = {"meternode/__init__.py": f'VERSION = "1.{version}"\n'.encode()}
    man = make_manifest("firmware", "acme", version, files, make_target(all_nodes=True), key=KEY, campaign=campaign)
    return sign_bundle(KEY, man, files)


def test_plan_has_a_canary_then_batches() -> None:
    assert plan_stages(10, 5, 4) == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert plan_stages(3, 0, 2) == [1, 1, 2]


def test_policy_campaign_reaches_every_node_in_stages(mosquitto, tmp_path: Path) -> None:
    with FleetSim(200, mosquitto.url, FLEET, tmp_path / "fleet") as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        spec = CampaignSpec("policy", sim.node_ids, canary_pct=5, batch=50, stage_timeout_s=30, id="p1")
        db.create(spec, policy_bundle(KEY, "acme", 2, POLICY, make_target(groups=["north"]), campaign="p1"))
        lines: list[str] = []
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "p1", t, progress=lines.append)
        assert (rep.state, rep.ok, rep.failed, rep.timeout) == ("done", 200, 0, 0), rep
        assert [ln.split(":")[0] for ln in lines] == ["canary", "batch 1", "batch 2", "batch 3", "batch 4"]
        assert lines[0].startswith("canary: 10 nodes, 10 answered")
        assert sim.policy_versions() == {2: 200}, "every node runs v2 from its own store"
        assert all(sim.node(n).engine is not None for n in sim.node_ids[:5]), "engines built from the policy"
        # the same bundle again: nodes answer "not newer" with version 2, which counts as done
        spec2 = CampaignSpec("policy", sim.node_ids[:20], canary_pct=10, batch=10, id="p1b")
        db.create(spec2, policy_bundle(KEY, "acme", 2, POLICY, make_target(groups=["north"]), campaign="p1b"))
        with MqttTransport(mosquitto.url) as t:
            rep2 = run(db, "p1b", t)
        assert (rep2.ok, rep2.failed) == (20, 0)
        assert {r["why"] for r in db.results("p1b")} == {"already at version 2"}


def test_firmware_campaign_halts_on_failed_health_checks_then_resumes(mosquitto, tmp_path: Path) -> None:
    ids = [f"sim-{i:05d}" for i in range(1, 101)]
    faulty = set(ids[6:9])  # in the first batch after a 5-node canary
    with FleetSim(100, mosquitto.url, FLEET, tmp_path / "fleet", faulty=faulty) as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        spec = CampaignSpec("firmware", sim.node_ids, canary_pct=5, batch=20, halt_pct=2, stage_timeout_s=30, id="f1")
        db.create(spec, _firmware(7, "f1"))
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "f1", t)
        assert rep.state == "halted"
        assert (rep.ok, rep.failed, rep.pending) == (22, 3, 75), rep
        failed = {r["node"]: r for r in db.results("f1") if r["state"] == "failed"}
        assert set(failed) == faulty
        assert all(r["status"] == "rolled_back" and "rolled back" in r["why"] for r in failed.values())
        assert all(sim.node(n).agent.slots.running is None for n in faulty), "faulty nodes back on the old build"
        assert sim.node(ids[0]).agent.slots.state()["active"] == "a", "healthy nodes confirmed the new slot"
        assert sim.received == 25, "later batches were never sent"
        with pytest.raises(PolicyError, match="halted on failures"), MqttTransport(mosquitto.url) as t:
            run(db, "f1", t)
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "f1", t, force=True)
        assert (rep.state, rep.ok, rep.failed) == ("done", 97, 3)
        assert rep.reasons == {"version 7 not confirmed after 1 boot(s)": 3}


def test_campaign_resumes_from_sqlite_without_resending(mosquitto, tmp_path: Path) -> None:
    with FleetSim(60, mosquitto.url, FLEET, tmp_path / "fleet", offline={"sim-00060"}) as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        spec = CampaignSpec("policy", sim.node_ids, canary_pct=10, batch=25, halt_pct=5, stage_timeout_s=2, id="r1")
        db.create(spec, policy_bundle(KEY, "acme", 3, POLICY, make_target(all_nodes=True), campaign="r1"))
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "r1", t, max_stages=1)  # the laptop goes to sleep after the canary
        assert (rep.state, rep.ok) == ("paused", 6)
        db.close()
        db = CampaignDB(tmp_path / "fleet.db")  # a new process opens the same state
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "r1", t)
        assert (rep.state, rep.ok, rep.timeout) == ("done", 59, 1), rep
        assert sim.received == 59, "each live node got the bundle exactly once"
        assert next(r for r in db.results("r1") if r["state"] == "timeout")["node"] == "sim-00060"
    # the silent node comes back: a forced resume retries just the nodes that timed out
    with FleetSim(1, mosquitto.url, FLEET, tmp_path / "fleet", ids=["sim-00060"]) as late:
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "r1", t, force=True)
        assert (rep.state, rep.ok, rep.timeout) == ("done", 60, 0), rep
        assert late.received == 1 and late.policy_versions() == {3: 1}


def test_a_bundle_for_another_group_halts_after_the_canary(mosquitto, tmp_path: Path) -> None:
    with FleetSim(40, mosquitto.url, FLEET, tmp_path / "fleet") as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(
            CampaignSpec("policy", sim.node_ids, canary_pct=5, batch=10, id="g1"),
            policy_bundle(KEY, "acme", 2, POLICY, make_target(groups=["south"]), campaign="g1"),
        )
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "g1", t)
        assert (rep.state, rep.failed, rep.pending) == ("halted", 2, 38)
        assert rep.reasons == {"not targeted": 2}
        assert sim.policy_versions() == {0: 40}


def test_a_large_firmware_bundle_is_streamed_in_chunks(mosquitto, tmp_path: Path) -> None:
    import base64
    import json

    from umeter.campaign import NODE_BUFFER, TOPIC_BYTES, _packet, ota_messages

    files = {f"meternode/m{k}.py": (f"# module {k}\n" + "x = 1\n" * 3000).encode() for k in range(3)}
    man = make_manifest("firmware", "acme", 9, files, make_target(all_nodes=True), key=KEY, campaign="big")
    env = sign_bundle(KEY, man, files)
    msgs = ota_messages(env)
    # every message a node's MQTT client reads into its 1-KiB buffer, no block of its own
    import re

    from umeter import unixport

    fw = (unixport.firmware_root() / "meternode" / "link" / "mqtt.py").read_text()
    assert re.search(r"^_READ = const\((\d+)\)", fw, re.M).group(1) == str(NODE_BUFFER), "the node's buffer"
    assert all(_packet(len(m), TOPIC_BYTES) <= NODE_BUFFER for m in msgs)
    chunks = [json.loads(m) for m in msgs[1:-1]]
    assert {c["op"] for c in chunks} == {"file"} and len(chunks) > 3 * 18000 // 768
    part = [c for c in chunks if c["name"] == "meternode/m1.py"]
    assert [c["off"] for c in part] == sorted(c["off"] for c in part)
    assert b"".join(base64.b64decode(c["data"]) for c in part) == files["meternode/m1.py"]
    rep, d = _firmware_campaign(mosquitto, tmp_path, 3, env, "big", canary_pct=34, batch=2)
    assert (rep.state, rep.ok) == ("done", 3)
    assert (d / "meternode/m1.py").read_bytes() == files["meternode/m1.py"]


def _firmware_campaign(mosquitto, tmp_path: Path, n: int, env: bytes, cid: str, **spec):
    # a firmware campaign to n simulated nodes: its report and the second node's slot a
    with FleetSim(n, mosquitto.url, FLEET, tmp_path / "fleet") as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(CampaignSpec("firmware", sim.node_ids, id=cid, **spec), env)
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, cid, t)
        return rep, Path(sim.node(sim.node_ids[1]).agent.slots.slot_dir("a"))


def test_a_firmware_of_many_files_streams_its_manifest_before_the_files(mosquitto, tmp_path: Path) -> None:
    import base64
    import json

    from umeter.campaign import MANIFEST_MAX, NODE_BUFFER, TOPIC_BYTES, _packet, ota_messages
    from umeter.errors import PolicyError

    # 110 files: the manifest alone (~12 KB) is far over a node's 1-KiB buffer.  On main at
    # 3e57599 it went in one begin (the envelope as an object, up to 16 KiB), which a node in
    # its budgeted heap has no block for; now the begin gives its size and signature and the
    # manifest follows in chunks without a name, then the files in the manifest's order
    files = {f"lib/meternode/pkg{k // 20}/module_{k:03d}.mpy": bytes([k]) * 700 for k in range(110)}
    man = make_manifest("firmware", "acme", 9, files, make_target(all_nodes=True), key=KEY, campaign="many")
    env = sign_bundle(KEY, man, dict(reversed(files.items())))  # the envelope's files in another order
    mtext = json.loads(env)["m"]
    msgs = ota_messages(env)
    assert all(_packet(len(m), TOPIC_BYTES) <= NODE_BUFFER for m in msgs)
    begin, *chunks = [json.loads(m) for m in msgs]
    assert begin == {"op": "begin", "bundle": {"m": len(mtext.encode()), "s": json.loads(env)["s"]}}, begin
    k = next(i for i, c in enumerate(chunks) if "name" in c)
    assert b"".join(base64.b64decode(c["data"]) for c in chunks[:k]) == mtext.encode()
    assert [c["off"] for c in chunks[:k]] == sorted(c["off"] for c in chunks[:k])
    order = list(dict.fromkeys(c["name"] for c in chunks[k:-1]))
    assert order == list(json.loads(mtext)["files"]), "the files in the manifest's order"
    rep, d = _firmware_campaign(mosquitto, tmp_path, 2, env, "many", canary_pct=50, batch=1)
    assert (rep.state, rep.ok) == ("done", 2)
    assert (d / "lib/meternode/pkg5/module_109.mpy").read_bytes() == files["lib/meternode/pkg5/module_109.mpy"]
    assert (d / "manifest.json").read_text() == mtext
    # a manifest no node takes: refused on the host with the reason, not dropped by every node
    files = {"app.py": b"x"}
    many = make_target(nodes=[f"node-{k:06d}" for k in range(MANIFEST_MAX // 12)])
    man = make_manifest("firmware", "acme", 9, files, many, key=KEY)
    env = sign_bundle(KEY, man, files)
    with pytest.raises(PolicyError, match="a node takes at most"):
        ota_messages(env)
    with pytest.raises(PolicyError, match="a node takes at most"):  # before a campaign starts
        CampaignDB(tmp_path / "refused.db").create(CampaignSpec("firmware", ["n1"], id="huge"), env)


def test_simulated_nodes_can_check_signatures_with_the_firmware_ed25519(mosquitto, tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate()
    with FleetSim(12, mosquitto.url, FLEET, tmp_path / "fleet", pure=True) as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(
            CampaignSpec("policy", sim.node_ids, canary_pct=50, batch=6, id="pure"),
            policy_bundle(KEY, "acme", 4, POLICY, make_target(all_nodes=True), campaign="pure"),
        )
        db.create(
            CampaignSpec("policy", sim.node_ids, canary_pct=50, batch=6, id="forged"),
            policy_bundle(other, "acme", 5, POLICY, make_target(all_nodes=True), campaign="forged"),
        )
        with MqttTransport(mosquitto.url) as t:
            assert run(db, "pure", t).ok == 12
            rep = run(db, "forged", t)
        assert (rep.state, rep.failed, rep.reasons) == ("halted", 6, {"unknown key": 6})
        assert sim.policy_versions() == {4: 12}


@pytest.mark.parametrize("window", [100, 10**6])
def test_a_streamed_build_is_sent_a_window_ahead_of_the_nodes_progress(tmp_path: Path, window: int) -> None:
    # A broker holds a bounded queue per client and drops the rest (Mosquitto's
    # max_queued_messages, 1000 by default: a source build is 1200+ chunks).  Here it holds
    # 150: sent all at once (window 10**6, as before the progress reports) chunks are lost and
    # the build never gets through; 100 ahead of the node's "got" reports, every chunk arrives.
    from umeter.broker import Mosquitto
    from umeter.campaign import ota_messages

    files = {f"meternode/big{k}.py": bytes((k * 7 + j) % 251 for j in range(60000)) for k in range(4)}
    man = make_manifest("firmware", "acme", 9, files, make_target(all_nodes=True), key=KEY, campaign="win")
    env = sign_bundle(KEY, man, files)
    assert len(ota_messages(env)) > 300
    with Mosquitto(extra_conf="max_queued_messages 150\n") as b, FleetSim(1, b.url, FLEET, tmp_path / "f") as sim:
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(CampaignSpec("firmware", sim.node_ids, id="win", stage_timeout_s=20), env)
        with MqttTransport(b.url, window=window) as t:
            rep = run(db, "win", t)
        got = db.results("win")[0]
    if window == 100:
        assert (rep.state, rep.ok) == ("done", 1) and got["status"] in ("staged", "confirmed"), got
    else:
        # chunks lost: refused at the first gap ("chunk at N, have M bytes"), or the end lost too
        assert rep.ok == 0 and (got["state"], got["status"]) in (("failed", "rejected"), ("timeout", None)), got
        assert got["status"] is None or "chunk at" in got["why"], got


class _OlderFirmware:
    """Wraps a simulated node so that it answers as firmware from before the streamed manifest
    (main up to 3e57599): its OTA `begin` took the envelope only with the manifest's text,
    and its envelope parser refused anything else with the message below; everything else it
    did as the firmware does now (a `file` chunk with no transfer in progress is dropped
    without an answer, an `end` with none is refused). Records the begins it gets."""

    WHY = 'malformed: expected {"m": <manifest text>, "s": <signature hex>, "f": {...}}'

    def __init__(self, node) -> None:
        self.node, self.handle_now, self.begins = node, node.handle, []
        node.handle = self.handle

    def handle(self, leaf: str, payload: bytes):
        import json

        msg = json.loads(payload) if leaf == "ota" else {}
        if msg.get("op") == "begin":
            b = msg["bundle"]
            self.begins.append("streamed" if isinstance(b, dict) and isinstance(b.get("m"), int) else "manifest")
            if self.begins[-1] == "streamed":
                a = self.node.agent
                a._abort_ota()
                return [("ota/result", a._result(False, "rejected", a.slots.version(), None, self.WHY))]
        return self.handle_now(leaf, payload)


@pytest.mark.parametrize("end_sent", [True, False])  # the streamed form's `end` out before the refusal, or not
def test_a_node_on_older_firmware_gets_the_build_in_the_form_it_takes(mosquitto, tmp_path: Path, end_sent) -> None:
    import json

    from umeter.campaign import LEGACY_REFUSAL, ota_messages

    files = {f"lib/meternode/pkg{k // 20}/module_{k:03d}.mpy": bytes([k]) * 500 for k in range(60)}
    man = make_manifest("firmware", "acme", 9, files, make_target(all_nodes=True), key=KEY, campaign="mixed")
    env = sign_bundle(KEY, man, files)
    assert _OlderFirmware.WHY.startswith(LEGACY_REFUSAL)
    msgs = ota_messages(env)
    assert isinstance(json.loads(msgs[0])["bundle"]["m"], int), "a streamed manifest"
    # the transport's window: all of them, or all but the last two (more than a node's 64
    # chunks between progress reports, so the rest follows its report)
    window = 256 if end_sent else len(msgs) - 2
    assert len(msgs) < 256 and window > 64
    old = json.loads(ota_messages(env, stream=False)[0])
    assert isinstance(old["bundle"], str) and json.loads(old["bundle"])["m"] == json.loads(env)["m"]
    with FleetSim(3, mosquitto.url, FLEET, tmp_path / "fleet") as sim:
        older = _OlderFirmware(sim.node(sim.node_ids[1]))
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(CampaignSpec("firmware", sim.node_ids, id="mixed", canary_pct=34, batch=2), env)
        lines: list[str] = []
        with MqttTransport(mosquitto.url, window=window) as t:
            rep = run(db, "mixed", t, progress=lines.append)
            assert t.legacy == 1
        assert (rep.state, rep.ok, rep.failed, rep.timeout) == ("done", 3, 0, 0), (rep, db.results("mixed"))
        assert older.begins == ["streamed", "manifest"]
        assert "1 on older firmware" in lines[-1], lines
        for n in sim.node_ids:
            d = Path(sim.node(n).agent.slots.slot_dir("a"))
            assert (d / "lib/meternode/pkg2/module_059.mpy").read_bytes() == files["lib/meternode/pkg2/module_059.mpy"]


def test_an_older_firmware_refusal_stands_when_its_form_cannot_carry_the_build(mosquitto, tmp_path: Path) -> None:
    import json

    from umeter.campaign import LEGACY_BEGIN_MAX, ota_messages

    # a manifest of ~200 files: its begin is over what firmware before the streamed manifest takes
    files = {f"lib/meternode/pkg{k // 20}/a_long_module_name_{k:04d}.mpy": bytes([k]) * 10 for k in range(200)}
    man = make_manifest("firmware", "acme", 9, files, make_target(all_nodes=True), key=KEY, campaign="huge")
    env = sign_bundle(KEY, man, files)
    assert len(json.loads(env)["m"]) > LEGACY_BEGIN_MAX
    with pytest.raises(PolicyError, match="firmware before the streamed manifest takes at most"):
        ota_messages(env, stream=False)
    with FleetSim(1, mosquitto.url, FLEET, tmp_path / "fleet") as sim:
        older = _OlderFirmware(sim.node(sim.node_ids[0]))
        db = CampaignDB(tmp_path / "fleet.db")
        db.create(CampaignSpec("firmware", sim.node_ids, id="huge", canary_pct=100, batch=1, stage_timeout_s=20), env)
        with MqttTransport(mosquitto.url) as t:
            rep = run(db, "huge", t)
            assert t.legacy == 0
        assert (rep.ok, rep.failed) == (0, 1)
        assert db.results("huge")[0]["why"] == _OlderFirmware.WHY
        assert older.begins == ["streamed"]


def _node_n1(mosquitto) -> tuple[mqtt.Client, queue.Queue[bytes]]:
    # node n1's side, played by the test: what the transport sends it, in order
    got: queue.Queue[bytes] = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.put(m.payload)
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("umeter/n1/ota", qos=1)
    sub.loop_start()
    return sub, got


def test_a_late_confirmation_of_the_last_build_does_not_stop_the_next_ones_stream(mosquitto) -> None:
    # A node reports "confirmed" (or "rolled_back") after it rebooted into a build; if that
    # report reaches the transport after the next bundle was pushed to the node, it is not that
    # bundle's answer: its stream must go on with the node's progress (a flaky CI run of
    # tests/e2e/test_ota_vnode.py lost the next push so: nothing after its first window).
    files = {f"meternode/f{k}.py": bytes((k * 5 + j) % 251 for j in range(20000)) for k in range(3)}
    env = sign_bundle(KEY, make_manifest("firmware", "acme", 7, files, make_target(all_nodes=True), key=KEY), files)
    total = len(ota_messages(env))
    assert total > 4
    sub, got = _node_n1(mosquitto)
    try:
        time.sleep(0.3)
        with MqttTransport(mosquitto.url, window=2) as t:
            t.push("firmware", "n1", env)
            first = [got.get(timeout=5) for _ in range(2)]
            report = {"ok": True, "status": "confirmed", "version": 6, "campaign": None}
            sub.publish("umeter/n1/ota/result", json.dumps(report), qos=1)
            assert t.results.get(timeout=5)[2]["status"] == "confirmed"
            progress = {"ok": True, "status": "accepted", "got": 1}
            sub.publish("umeter/n1/ota/result", json.dumps(progress), qos=1)
            more = [got.get(timeout=5) for _ in range(2)]  # the next window, after the report
            assert more[0] not in first and json.loads(more[0]).get("op") != "begin"
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_a_late_answer_to_the_bundle_before_does_not_end_the_next_ones_stream(mosquitto) -> None:
    # A small bundle goes out whole; before the node's "staged" reaches the transport, the next
    # (large) bundle is pushed to the same node. The node answers in the order it got the
    # messages: the first bundle's answer comes first and is not the second's. Taking it for the
    # second's final answer dropped that stream after its first window (docs/policy.md).
    small = _firmware(7, "first")
    files = {f"meternode/f{k}.py": bytes((k * 7 + j) % 251 for j in range(20000)) for k in range(3)}
    large = sign_bundle(KEY, make_manifest("firmware", "second", 8, files, make_target(all_nodes=True), key=KEY), files)
    assert len(ota_messages(small)) == 1 and len(ota_messages(large)) > 4
    sub, got = _node_n1(mosquitto)

    def answer(res: dict) -> None:
        sub.publish("umeter/n1/ota/result", json.dumps(res), qos=1)

    try:
        time.sleep(0.3)
        with MqttTransport(mosquitto.url, window=2) as t:
            t.push("firmware", "n1", small)
            assert json.loads(got.get(timeout=5))["op"] == "begin"
            t.push("firmware", "n1", large)
            first = [got.get(timeout=5) for _ in range(2)]
            # the first bundle's progress and answer, late; then the second's progress
            answer({"ok": True, "status": "accepted", "version": 6, "campaign": "first", "got": 40})
            answer({"ok": True, "status": "staged", "version": 7, "campaign": "first"})
            assert t.results.get(timeout=5)[2]["campaign"] == "first"
            assert t.results.get(timeout=5)[2]["status"] == "staged"
            time.sleep(0.3)
            assert got.empty()  # the first bundle's progress moved nothing of the second's window
            assert t.streaming() == 1
            answer({"ok": True, "status": "accepted", "version": 7, "campaign": None})
            more = [got.get(timeout=5) for _ in range(1)]  # the window, one further on
            assert more[0] not in first and json.loads(more[0]).get("op") != "begin"
            # the second bundle's own final answer ends its stream
            answer({"ok": False, "status": "rejected", "version": 7, "campaign": "second", "why": "bad file: x"})
            assert t.results.get(timeout=5)[2]["status"] == "accepted"
            assert t.results.get(timeout=5)[2]["campaign"] == "second"
            assert t.streaming() == 0
    finally:
        sub.loop_stop()
        sub.disconnect()
