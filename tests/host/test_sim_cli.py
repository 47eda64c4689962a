"""`umeter sim` as a user runs it: plain lines on a pipe, clean errors, nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

UMETER = [sys.executable, "-m", "umeter"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*UMETER, *args], capture_output=True, text=True, timeout=timeout)


def test_sim_with_duration_prints_readings_from_every_node_and_exits_0():
    r = _run("sim", "--nodes", "3", "--duration", "10", "--interval", "0.5")
    assert r.returncode == 0, r.stderr
    for node, sc in (("node-01", "house"), ("node-02", "solar"), ("node-03", "shop")):
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith(node) and "V=" in ln]
        assert lines, f"no readings from {node}:\n{r.stdout}"
        assert sc in lines[-1]
    solar = [ln for ln in r.stdout.splitlines() if ln.startswith("node-02") and "P=" in ln][-1]
    assert re.search(r"P=-\d+ W", solar), solar
    assert "telemetry from 3 of 3" in r.stderr


def test_unreachable_broker_is_a_one_line_error_naming_it():
    r = _run("sim", "--broker", "mqtt://127.0.0.1:9", "--duration", "1")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "umeter: error: cannot reach MQTT broker mqtt://127.0.0.1:9 (Connection refused) — start the broker, "
        "or leave out --broker to use the embedded one"
    ]


def test_bad_options_are_usage_errors():
    assert _run("sim", "--nodes", "0").returncode == 2
    r = _run("sim", "--broker", "tcp://x:1", "--duration", "1")
    assert r.returncode == 1 and "bad broker URL 'tcp://x:1'" in r.stderr
    # telemetry slower than half the nodes' 60-s load profile would leave intervals unrecorded
    r = _run("sim", "--interval", "31", "--duration", "1")
    assert r.returncode == 1 and "telemetry interval 31.0 s is out of range" in r.stderr and "0.1 to 30 s" in r.stderr


def _node_pids(workdir: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(p.joinpath("cwd").resolve()).startswith(str(workdir)):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


def test_ctrl_c_stops_every_virtual_node(tmp_path):
    proc = subprocess.Popen(
        [*UMETER, "sim", "--nodes", "2", "--keep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    workdir = None
    deadline = time.monotonic() + 20
    while workdir is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"Node flash directories: (\S+)", line)
        if m:
            workdir = Path(m.group(1))
    assert workdir is not None
    while len(_node_pids(workdir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = _node_pids(workdir)
    assert len(pids) == 2
    proc.send_signal(signal.SIGINT)
    # the sim's own bound: 15 s for the nodes to stop on their stop file, then Ctrl-C and kill,
    # 5 s each, per node left (35 s for two); a loaded machine (the parallel suite) has taken
    # more than 20 s here
    proc.wait(40)
    time.sleep(0.2)
    alive = [
        p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]
    ]
    try:
        assert alive == [], f"virtual nodes left running: {alive}"
        assert (workdir / "node-01" / "console.log").exists()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # --keep left it for us


# -- options of the demo: bad input is a one-line error naming it, before anything starts ----------

EXAMPLE = Path(__file__).resolve().parents[2] / "host" / "umeter" / "examples" / "demo_policy.toml"


def _error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    return lines[0]


def test_missing_policy_file_is_a_one_line_error_pointing_at_the_example(tmp_path):
    line = _error_line(_run("sim", "--policy", str(tmp_path / "nope.toml"), "--duration", "1"))
    assert line.startswith(f"umeter: error: policy file '{tmp_path / 'nope.toml'}' not found")
    assert "demo_policy.toml" in line


def test_invalid_policy_is_a_one_line_error_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "x"\ntariffs = ["a", "b"]\n[[seasons]]\nstart = "01-01"\nweekday = [["00:00", "a"], ["07:00", "c"]]\n'
    )
    line = _error_line(_run("sim", "--policy", str(bad), "--duration", "1"))
    assert "policy.seasons[0].weekday[1]" in line and "'c'" in line, line
    bad.write_text("name = \n")
    assert "not valid TOML" in _error_line(_run("sim", "--policy", str(bad), "--duration", "1"))


def test_bad_scenarios_are_one_line_errors():
    assert _error_line(_run("sim", "--scenario", "house,farm", "--duration", "1")) == (
        "umeter: error: unknown scenario 'farm' — choose one of house, solar, shop"
    )
    assert "2 scenarios for 1 nodes" in _error_line(_run("sim", "-n", "1", "--scenario", "house,solar"))
    assert "bad scenario list" in _error_line(_run("sim", "--scenario", "house,,shop"))
    assert "--fleet needs --policy" in _error_line(_run("sim", "--fleet", "acme"))


def test_node_config_carries_the_policy_the_fleet_and_the_scripted_dip():
    from umeter import budget, unixport
    from umeter.policy import compile_file
    from umeter.sim import POLICY_DIP, SimRun, board_definition

    compact = compile_file(EXAMPLE)
    fleet = {"name": "acme", "groups": [], "keys": {"00" * 8: "11" * 32}}
    run = SimRun(nodes=2, scenarios=["shop"], policy=compact, fleet=fleet)
    run.host, run.port = "127.0.0.1", 1883
    c = run.node_config("node-01", run._scenarios[0], 0)
    assert c["policy"] == compact and c["fleet"] == fleet
    # the nodes bill in the policy's local time
    assert c["utc_offset_min"] == compact["tz"] == 0
    east = SimRun(nodes=1, policy=dict(compact, tz=330))
    east.host, east.port = "127.0.0.1", 1883
    assert east.node_config("node-01", east._scenarios[0], 0)["utc_offset_min"] == 330
    assert {"at": POLICY_DIP[0], "freq": POLICY_DIP[2]} in c["sim"]["events"]
    assert c["sim"]["currents"][0]["rms"] == 24.0, "the shop scenario"
    board = board_definition("sim")
    w = unixport.word_bytes()  # the nodes get their configuration's budget (docs/memory.md)
    # a fleet node also takes in a signed bundle at once: at least FLEET_HEAP
    assert run._heap(board) == max(budget.heap_for("+fleet", words=w), 512 * 1024)
    assert "a policy and signed bundles holds" in run.notes[0] and "receiving a bundle needs more" in run.notes[0]
    assert SimRun(nodes=1, policy=compact)._heap(board) == budget.heap_for("+policy", words=w)
    plain = SimRun(nodes=1)
    heap = plain._heap(board)
    assert heap == budget.heap_for("+store", words=w)
    assert plain.notes == [
        f"Nodes run the .mpy build in a {heap // 1024} KB heap each: what a node with store-and-forward holds"
        " + 32 KB (docs/memory.md)."
    ]
    plain.host, plain.port = "127.0.0.1", 1883
    c = plain.node_config("node-01", plain._scenarios[0], 0)
    assert "policy" not in c and "fleet" not in c and "events" not in c["sim"] and "utc_offset_min" not in c


def test_lines_show_pf_q_tariff_and_relay_and_leave_out_what_telemetry_lacks():
    from umeter.cli.sim import render_line, render_table
    from umeter.sim import NodeView, scenario

    t = {
        "v": 231.0,
        "f": 50.0,
        "p": 2966.0,
        "e_imp_wh": 1.5,
        "e_exp_wh": 0.0,
        "seq": 7,
        "elements": [{"i": 13.5, "pf": 0.9509, "q": 963.6}],
    }
    v = NodeView("node-01", scenario("house"), "online", t, 0.0, 3)
    line = render_line(v)
    assert "PF=0.951 Q=+964 var" in line and "tariff" not in line and "relay" not in line, line
    v.telemetry = dict(t, tariff=2)
    v.policy_state = {"tariff": 2, "relay": False}
    line = render_line(v, ["offpeak", "day", "peak"], db=True)
    assert "tariff=2(peak) relay=OFF" in line and "records=0" in line, line
    v.telemetry = dict(t, tariff=2, relay=True)  # telemetry's own relay field wins
    assert "relay=on" in render_line(v)
    table = render_table([v], "here", 0.0, ["offpeak", "day", "peak"], db=True, width=200).renderables[0]
    assert [c.header for c in table.columns] == [
        "node", "state", "P W", "imp Wh", "exp Wh", "V", "relay", "tariff", "Hz", "I A", "event", "rec", "PF",
        "Q var", "scenario", "msgs",
    ]  # fmt: skip
