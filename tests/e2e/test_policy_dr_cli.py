"""`umeter policy price | event | cancel` against a virtual node (the real firmware on the unix
port, sim board, real Mosquitto): the frames are signed with the node's key from the keystore
it was provisioned from and take the keystore's frame counter; the node's DR rules act on them;
a keystore restored from an old backup resynchronises from the node's refusal; a forged key, a
rule that is not an event rule and a node that is not there each exit 1 naming what happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from policy_vnode import Listener, VNode

from umeter.broker import mosquitto_path
from umeter.keystore import Keystore
from umeter.policy import compile_source

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="needs Mosquitto (apt-get install mosquitto)")

NODE = "dr1"


def _policy() -> dict:
    return compile_source(
        {
            "name": "dr",
            "tariffs": ["flat"],
            "seasons": [{"start": "01-01", "weekday": [["00:00", "flat"]]}],
            "prices": {"per_kwh": {"flat": 0.2}, "realtime_max_s": 3600},
            "dr": [
                {"trigger": "event", "shed_s": 1, "restore_random_s": 0},
                {"trigger": "price_above", "level": 0.5, "shed_s": 1, "restore_random_s": 0},
            ],
        }
    )


def _umeter(home: Path, broker, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, UMETER_HOME=str(home), NO_COLOR="1")
    b = f"--broker={broker.host}:{broker.port}"
    return subprocess.run(
        [sys.executable, "-m", "umeter", "policy", argv[0], b, "--timeout=20", *argv[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )


def _dr(leaf, m, event: str, rule: int) -> bool:
    # (a DR rule's events name it as 100 + its index in the policy's dr list)
    return leaf == "policy/event" and m["event"] == event and m["rule"] == rule


def test_prices_and_dr_events_from_the_command_line_reach_a_node(mosquitto, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ks = Keystore(home / "keystore.json")
    key = ks.secrets_for(NODE)["cmd_key"]
    ks.secrets_for("ghost")  # provisioned, but not running
    cfg = {
        "node_id": NODE,
        "telemetry_s": 1.0,
        "cmd_key": key,
        "policy": _policy(),
        "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "keepalive": 30, "discovery": False},
        "sim": {"realtime": True, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]},
    }
    lis = Listener(mosquitto.host, mosquitto.port, NODE)
    try:
        with VNode(tmp_path / NODE, cfg) as vn:
            lis.wait(lambda leaf, m: leaf == "policy/state", 60, "the policy running", vn)
            # a DR event now, for 30 s: the event rule (index 0) sheds
            r = _umeter(home, mosquitto, "event", "--node", NODE, "--start", "now", "--duration", "30s")
            assert r.returncode == 0, r.stderr
            assert f"{NODE}: event set on 1 rule(s)" in r.stdout
            lis.wait(lambda leaf, m: _dr(leaf, m, "dr", 100), 20, "the event rule's DR", vn)
            lis.wait(lambda leaf, m: _dr(leaf, m, "shed", 100), 20, "shed by the event rule", vn)
            # cancelled: the condition ends and, after shed_s, the relay closes again
            r = _umeter(home, mosquitto, "cancel", "--node", NODE)
            assert r.returncode == 0, r.stderr
            assert f"{NODE}: DR events cancelled" in r.stdout
            lis.wait(lambda leaf, m: _dr(leaf, m, "dr_end", 100), 20, "the event's end", vn)
            lis.wait(lambda leaf, m: leaf == "policy/event" and m["event"] == "restore", 20, "restored", vn)
            # a real-time price above the price_above rule's level (index 1) sheds
            r = _umeter(home, mosquitto, "price", "0.77", "--valid", "10m", "--node", NODE, "--json")
            assert r.returncode == 0, r.stderr
            a = json.loads(r.stdout)[NODE]
            assert (a["ok"], a["op"], a["price"], a["valid_s"]) == (True, "price", 0.77, 600), a
            got = set()

            def both(leaf, m) -> bool:  # (the same tick's events and state, in either order)
                if leaf == "policy/state" and m["price"] == 0.77:
                    got.add("price")
                if _dr(leaf, m, "shed", 101):
                    got.add("shed")
                return len(got) == 2

            lis.wait(both, 20, "the price in force and shed by the price rule", vn)
            assert ks.get(NODE)["lora_ctr"] == 3, "one counter per frame"

            # the keystore restored from a backup taken before those frames: the node refuses
            # counter 1 as replayed, names its own (3), and the host sends the frame again
            raw = json.loads(ks.path.read_text())
            raw[NODE]["lora_ctr"] = 0
            ks._save(raw)
            r = _umeter(home, mosquitto, "price", "0.1", "--valid", "3h", "--node", NODE)
            assert r.returncode == 0, r.stderr
            assert "counter 1 did not suit the node's 3; sending again" in r.stderr
            assert f"{NODE}: price 0.1 in force for 1 h" in r.stdout, "3 h asked, the policy's realtime_max_s"
            assert ks.get(NODE)["lora_ctr"] == 4
            lis.wait(lambda leaf, m: leaf == "policy/state" and m["price"] == 0.1, 20, "the new price", vn)

            # a frame under another key: refused, nothing changes, exit 1 with the node's why
            r = _umeter(home, mosquitto, "price", "0.9", "--node", NODE, "--key", "22" * 32)
            assert r.returncode == 1
            assert "1 of 1 node(s) did not take the price" in r.stderr
            assert "unauthenticated: HMAC does not match the node key" in r.stderr
            assert "provision it again" in r.stderr
            # an event for the price rule (not an event rule): the node changes nothing
            r = _umeter(home, mosquitto, "event", "--node", NODE, "--duration", "1m", "--rule", "1")
            assert r.returncode == 1
            assert "its policy has no DR rule with trigger event at index 1" in r.stderr
            assert 'needs a [[dr]] with trigger = "event"' in r.stderr and "event set" not in r.stdout
            # two nodes, one of them not running: the other takes it, the command says which failed
            r = _umeter(home, mosquitto, "cancel", "--node", NODE, "--node", "ghost", "--timeout=3")
            assert r.returncode == 1
            assert f"{NODE}: DR events cancelled" in r.stdout
            assert "1 of 2 node(s) did not take the cancel: ghost: no answer in 3 s" in r.stderr
            assert "is the node online" in r.stderr
            assert "Traceback" not in vn.log()
    finally:
        lis.close()
