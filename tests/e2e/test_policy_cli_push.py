"""`umeter policy push` / `umeter ota push` / `resume` / `status` as a user runs them, against a
simulated fleet behind a real Mosquitto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from umeter.fleetsim import FleetSim
from umeter.signing import Keystore, fleet_identity

UMETER = [sys.executable, "-m", "umeter"]
SRC = 'name = "flat"\ntariffs = ["std"]\n[[seasons]]\nstart = "01-01"\nweekday = [["00:00", "std"]]\n'


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*UMETER, *args], capture_output=True, text=True, timeout=120, env=env)


def test_push_resume_and_status_from_the_command_line(mosquitto, tmp_path: Path) -> None:
    env = dict(os.environ, UMETER_KEYSTORE=str(tmp_path / "keys"), UMETER_FLEET_DB=str(tmp_path / "fleet.db"))
    env["NO_COLOR"] = "1"
    key = Keystore(tmp_path / "keys").create("acme")
    (tmp_path / "p.toml").write_text(SRC)
    faulty = {"sim-00003", "sim-00004"}
    with FleetSim(30, mosquitto.url, fleet_identity(key, "acme"), tmp_path / "fleet", faulty=faulty) as sim:
        nodes = tmp_path / "nodes.txt"
        nodes.write_text("\n".join(sim.node_ids) + "\n")
        b = tmp_path / "p.bundle"
        r = _run(env, "policy", "sign", str(tmp_path / "p.toml"), "--fleet", "acme", "--version", "1", "--all",
                 "-o", str(b))  # fmt: skip
        assert r.returncode == 0, r.stderr
        # targets from the fleet inventory (the provisioning database): the site "north"
        from umeter.inventory import Fleet

        inv = Fleet(tmp_path / "fleet.db")
        for k, n in enumerate(sim.node_ids):
            inv.bind(f"uid{k:04d}", n, "sim", "north" if k < 12 else "south", None, None)
        r = _run(env, "policy", "push", str(b), "--site", "north", "--broker", mosquitto.url, "--id", "cli0")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Campaign cli0 (policy v1) done: 12/12 ok, 0 failed"), r.stdout
        assert sim.policy_versions() == {1: 12, 0: 18}
        r = _run(env, "policy", "push", str(b), "--nodes-file", str(nodes), "--broker", mosquitto.url, "--id", "cli1",
                 "--canary", "10%", "--batch", "10")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Campaign cli1 (policy v1) done: 30/30 ok, 0 failed"), r.stdout
        assert "canary: 3 nodes, 3 answered" in r.stderr
        r = _run(env, "policy", "push", str(b), "--site", "east", "--broker", mosquitto.url)
        assert r.returncode == 1 and "the fleet inventory has no nodes at site east" in r.stderr
        # firmware: two nodes fail their health check in the canary -> halted, exit 1
        build = tmp_path / "build"
        build.mkdir()
        (build / "app.py").write_text("print('v2')\n")
        fb = tmp_path / "fw.bundle"
        r = _run(env, "ota", "sign", str(build), "--fleet", "acme", "--version", "2", "--all", "-o", str(fb))
        assert r.returncode == 0, r.stderr
        r = _run(env, "ota", "push", str(fb), "--nodes-file", str(nodes), "--broker", mosquitto.url, "--id", "fw2",
                 "--canary", "20%", "--batch", "10", "--halt-on-failures", "5%", "--json")  # fmt: skip
        assert r.returncode == 1
        rep = json.loads(r.stdout)
        assert (rep["state"], rep["ok"], rep["failed"]) == ("halted", 4, 2)
        assert "umeter: error: campaign fw2 halted: 2 failures — inspect with `umeter policy status fw2`" in r.stderr
        r = _run(env, "policy", "status", "fw2")
        assert "sim-00003 stage 0: failed rolled_back version 2 not confirmed after 1 boot(s): rolled back" in r.stdout
        r = _run(env, "policy", "resume", "fw2", "--broker", mosquitto.url)
        assert r.returncode == 1 and "halted on failures — look at the per-node results" in r.stderr
        r = _run(env, "policy", "resume", "fw2", "--broker", mosquitto.url, "--force")
        assert r.returncode == 1, r.stderr  # done, but 2 nodes failed: a script must see it
        assert r.stdout.startswith("Campaign fw2 (firmware v2) done: 28/30 ok, 2 failed")
        assert r.stderr.strip().splitlines()[-1] == (
            "umeter: error: campaign fw2 done with 2 of 30 nodes failed or timed out — see which and why: "
            "`umeter policy status fw2`"
        )
        r = _run(env, "policy", "status", "--json")
        assert [(c["id"], c["state"]) for c in json.loads(r.stdout)] == [
            ("cli0", "done"),
            ("cli1", "done"),
            ("fw2", "done"),
        ]
        assert sim.node("sim-00010").agent.slots.state()["versions"] == {"a": 2}


def test_simulate_command_serves_a_push(mosquitto, tmp_path: Path) -> None:
    import signal
    import time

    env = dict(os.environ, UMETER_KEYSTORE=str(tmp_path / "keys"), UMETER_FLEET_DB=str(tmp_path / "fleet.db"))
    env["NO_COLOR"] = "1"
    Keystore(tmp_path / "keys").create("acme")
    (tmp_path / "p.toml").write_text(SRC)
    ids = tmp_path / "ids.txt"
    sim = subprocess.Popen(
        [*UMETER, "policy", "simulate", "--nodes", "40", "--fleet", "acme", "--broker", mosquitto.url,
         "--list", str(ids), "--faulty", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ids.exists() and time.monotonic() < deadline:
            assert sim.poll() is None, sim.stderr.read()
            time.sleep(0.1)
        assert len(ids.read_text().split()) == 40
        b = tmp_path / "p.bundle"
        assert _run(env, "policy", "sign", str(tmp_path / "p.toml"), "--fleet", "acme", "--version", "1", "--all",
                    "-o", str(b)).returncode == 0  # fmt: skip
        r = _run(env, "policy", "push", str(b), "--nodes-file", str(ids), "--broker", mosquitto.url, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["ok"] == 40
    finally:
        sim.send_signal(signal.SIGINT)
        _, err = sim.communicate(timeout=20)
    assert sim.returncode == 0, err
    assert "40 simulated nodes" in err and "(4 with failing firmware)" in err
