"""A node under a flood (issue 10, item 5): 3000 forged messages per second for 10 s from
another client of a real Mosquitto, on the MicroPython unix port. The node keeps measuring
without a gap, its heap stays bounded, and within 10 s of the flood's end it answers a real
message. (Before the fix: MemoryError, the link down, the node exited.)

- forged commands on …/cmd, to a node with commands at the sim board's heap (boards/sim.json);
- forged frames on …/policy/small, to a node with commands and a policy, at 384k (POLICY_HEAP:
  a policy node loaded from source needs more than the sim board's heap on the 64-bit port,
  flood or not; `umeter sim` ran policy nodes so before it ran the .mpy build in budgeted
  heaps; docs/memory.md)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from meternode.link.actions import make_command
from meternode.policy import smallenc
from umeter import unixport
from umeter.broker import mosquitto_path
from umeter.policy import compile_source

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

POLICY_HEAP = "384k"  # a policy node loaded from source (see above)
KEY = bytes(range(32))
NODE = "fl1"
RATE = 3000  # forged messages per second
FLOOD_S = 10.0


def _policy() -> dict:
    return compile_source(
        {
            "name": "flood",
            "tariffs": ["offpeak", "peak"],
            "seasons": [{"start": "01-01", "weekday": [["00:00", "offpeak"], ["17:00", "peak"]]}],
            "prices": {"per_kwh": {"offpeak": 0.1, "peak": 0.3}},
            "dr": [{"trigger": "price_above", "level": 0.5, "shed_s": 10, "restore_random_s": 0}],
        }
    )


def _start_node(root: Path, port: int, policy: bool) -> tuple[subprocess.Popen, Path]:
    root.mkdir()
    shutil.copy(unixport.boards_dir() / "sim.json", root / "board.json")
    shutil.copy(Path(__file__).with_name("flood_node_main.py"), root / "main.py")
    cfg = {
        "node_id": NODE,
        "telemetry_s": 1.0,
        "profile_s": 60,
        "cmd_key": KEY.hex(),
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 10},
        "sim": {"realtime": True, "currents": [{"rms": 5.0}]},
    }
    heap = json.loads((unixport.boards_dir() / "sim.json").read_text())["heap"]  # the sim board's heap
    if policy:
        cfg["policy"] = _policy()
        heap = POLICY_HEAP
    (root / "config.json").write_text(json.dumps(cfg))
    console = root / "console.log"
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    proc = subprocess.Popen(
        unixport.command(root / "main.py", heap=heap),
        cwd=root,
        env=env,
        stdout=console.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, console


def _mon(console: Path) -> list[dict]:
    return [json.loads(x[4:]) for x in console.read_text(errors="replace").splitlines() if x.startswith("MON ")]


def _flood(host: str, port: int, topic: str, make, seconds: float) -> int:
    # `make(k)` -> payload; RATE per second in 10-ms slices, QoS 0 and 1 alternately, written
    # as ready-made PUBLISH packets on a plain socket: a paho client signing and sending one
    # message at a time could not keep the rate on a loaded machine (the attacker's CPU is
    # not what this test measures). PUBACKs are read and dropped by a thread.
    from meternode.link.mqttconn import connect_packet, publish_packet

    pkts = [publish_packet(topic, make(k), k & 1, False, (k % 65000) + 1) for k in range(int(RATE * seconds))]
    s = socket.create_connection((host, port))
    s.sendall(connect_packet("attacker", 60, True))
    assert s.recv(4)[:1] == b"\x20", "no CONNACK"
    done = threading.Event()

    def drain() -> None:
        s.settimeout(0.2)
        while not done.is_set():
            try:
                if not s.recv(65536):
                    return
            except TimeoutError:
                pass
            except OSError:
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    sent = 0
    t0 = time.monotonic()
    try:
        while sent < len(pkts):
            el = time.monotonic() - t0
            due = min(int(el * RATE) + RATE // 100, len(pkts))
            if due > sent:
                s.sendall(b"".join(pkts[sent:due]))
                sent = due
            time.sleep(0.01)
        return sent, time.monotonic() - t0
    finally:
        done.set()
        t.join(2)
        s.close()


@pytest.mark.parametrize("leaf", ["cmd", "policy/small"])
def test_a_flood_of_forged_messages_leaves_metering_heap_and_link_intact(tmp_path, mosquitto, leaf):
    proc, console = _start_node(tmp_path / "node", mosquitto.port, policy=leaf != "cmd")
    got: queue.Queue = queue.Queue()
    obs = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
    obs.on_message = lambda c, u, m: got.put((time.monotonic(), m.topic, m.payload))
    obs.connect(mosquitto.host, mosquitto.port)
    obs.subscribe(f"umeter/{NODE}/#", qos=1)
    obs.loop_start()
    seen: list = []

    def wait(pred, timeout: float, what: str) -> tuple:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = got.get(timeout=0.1)
            except queue.Empty:
                assert proc.poll() is None, f"node exited: {console.read_text()[-3000:]}"
                continue
            seen.append(item)
            if pred(item):
                return item
        raise AssertionError(f"{what}: not within {timeout} s; console:\n{console.read_text()[-3000:]}")

    try:
        wait(lambda m: m[1].endswith("/telemetry"), 30, "first telemetry")
        if leaf != "cmd":
            # the node makes its small-frame handler when the first frame comes (docs/memory.md):
            # one forged frame first, so that the heap measured before is the node's with it
            obs.publish(f"umeter/{NODE}/policy/small", smallenc.encode_price(b"g" * 32, NODE, 1, 9.99, 60), qos=1)
            wait(lambda m: m[1].endswith("/policy/result"), 10, "the first frame's result")
        time.sleep(2.0)
        before = _mon(console)
        assert before, console.read_text()[-2000:]
        now = int(time.time())

        def forged_cmd(k: int) -> bytes:
            return make_command(b"f" * 32, NODE, "relay", {"on": False}, k + 1, now + 600, f"f{k}")

        def forged_frame(k: int) -> bytes:
            return smallenc.encode_price(b"g" * 32, NODE, k + 1, 9.99, 60)

        t_flood = time.monotonic()
        make = forged_cmd if leaf == "cmd" else forged_frame
        n, took = _flood(mosquitto.host, mosquitto.port, f"umeter/{NODE}/{leaf}", make, FLOOD_S)
        t_end = time.monotonic()
        # The rate is what the broker took in: 3000/s here when the machine is free; on a loaded
        # one Mosquitto's socket pushes back (1900/s seen beside two test suites). Still a flood
        # many times anything legitimate; the rate reached is reported, not a pass condition.
        print(f"flood: {n} messages in {took:.1f} s = {n / took:.0f}/s")
        assert n == int(RATE * FLOOD_S) and n / took >= RATE / 6, f"the flood ran at {n / took:.0f} messages/s"

        # within 10 s of the flood's end a real one is answered. The broker may still hold a
        # full queue for the node when the flood ends and then drops what comes next (its
        # max_queued_messages): like an operator's tool, send again every 2 s until answered.
        deadline = t_end + 10.0
        k = 0
        r = None
        while r is None and time.monotonic() < deadline:
            k += 1
            if leaf == "cmd":
                real = make_command(KEY, NODE, "read_now", None, k, int(time.time()) + 600, f"real-{k}")
                obs.publish(f"umeter/{NODE}/cmd", real, qos=1)
                want = lambda m: m[1].endswith("/cmd/result") and b'"real-' in m[2]  # noqa: E731
            else:
                obs.publish(f"umeter/{NODE}/policy/small", smallenc.encode_price(KEY, NODE, k, 0.2, 5), qos=1)
                want = lambda m: m[1].endswith("/policy/result") and b'"done"' in m[2]  # noqa: E731
            try:
                r = wait(want, min(2.0, max(0.1, deadline - time.monotonic())), "the real result")
            except AssertionError:
                if proc.poll() is not None:
                    raise
        assert r is not None, f"no real message answered within 10 s of the flood's end:\n{console.read_text()[-3000:]}"
        assert json.loads(r[2])["ok"] is True
        t_ok = time.monotonic()
        time.sleep(1.5)
        mon = _mon(console)
        text = console.read_text(errors="replace")
    finally:
        obs.loop_stop()
        obs.disconnect()
        proc.kill()
        proc.wait()

    assert "MemoryError" not in text and "memory allocation failed" not in text, text[-3000:]
    assert "task ended" not in text, text[-3000:]
    flood = [m for m in mon if m["wall"] >= before[-1]["wall"]]
    # measuring without a gap: a measured second closes in every 2-s stretch of the flood, and
    # the sim clock (driven by the samples) keeps up with the wall clock
    for a, b in zip(flood, flood[2:] + flood[-1:], strict=False):
        if b["wall"] - a["wall"] >= 2.0:
            assert b["sec"] > a["sec"], (a, b)
    secs = flood[-1]["sec"] - flood[0]["sec"]
    span = flood[-1]["wall"] - flood[0]["wall"]
    assert secs >= span - 3, f"{secs} measured seconds in {span:.1f} s"
    assert max(m["lag"] for m in flood) - before[-1]["lag"] < 3.0, [round(m["lag"], 2) for m in flood]
    # heap bounded: what the node holds (free heap after a collection, every 500 ms) never
    # drops more than its working set below what it held before the flood (a packet being
    # read, up to MAX_PACKET 16 KB, its parse, the bounded queues filling up), and is back
    # where it was once the flood is over: nothing was kept (garbage between collections is
    # no measure, MicroPython collects when the heap is full; leaks over many more messages
    # are benchmarks/fuzz.py's heap figures)
    # The before and after figures are readings taken while no telemetry report was in flight
    # (flood_node_main.py: a report holds ~4 KB while its publish is awaited, and which side of
    # it a reading fell on was up to the scheduler: 4 KB of swing on a loaded machine).
    low = min(m["free"] for m in flood)
    held0 = [m for m in before if m["quiet"]][-1]["free"]
    held1 = [m for m in flood if m["quiet"]][-1]["free"]
    assert low > held0 - 24 * 1024, (held0, low)
    assert held1 > held0 - 2 * 1024, f"heap before {held0}, after {held1}; it allows 2 KB"
    # the flood's refusals: counted, a handful of events, a bounded number of results
    events = [x for x in seen if x[1].endswith("/event") and b"cmd_rejected" in x[2]]
    assert len(events) <= 32, len(events)
    print(
        f"flood of {leaf}: {n} in {t_end - t_flood:.1f} s; a real one ({k} sent) answered "
        f"{t_ok - t_end:.1f} s after; free heap after gc: lowest {low} B, "
        f"before {held0} B, after {held1} B; {secs} measured s in {span:.1f} s; "
        f"{len(events)} cmd_rejected events"
    )
