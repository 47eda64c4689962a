"""A firmware OTA pushed to `umeter sim` nodes: the node resets into its new build as a board
would, `umeter sim` starts it again, and the run goes on (it used to stop with "virtual node
node-01 exited with code 0"). Real firmware on the unix port, a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from policy_vnode import Listener, firmware_files

from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle
from umeter.sim import SimRun

KEY = Ed25519PrivateKey.generate()
EXAMPLE = Path(__file__).resolve().parents[2] / "host" / "umeter" / "examples" / "demo_policy.toml"


def _wait(cond, timeout: float, what: str, run: SimRun) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    logs = "\n".join(f"--- {v.node_id}\n{v.log_tail(30)}" for v in run.vnodes)
    raise AssertionError(f"{what}: not within {timeout} s\n{logs}")


def test_a_node_rebooting_into_new_firmware_comes_back_and_the_sim_goes_on(mosquitto, tmp_path):
    from umeter.policy import load_any

    policy = load_any(EXAMPLE)
    lines: list[tuple[str, str]] = []
    run = SimRun(
        nodes=2,
        broker_url=mosquitto.url,
        policy=policy,
        fleet=fleet_identity(KEY, "acme"),
        workdir=tmp_path / "nodes",
        on_console=lambda n, ln: lines.append((n, ln)),
    )
    lis = None
    with run:
        views = lambda: {v.node_id: v for v in run.snapshot()}  # noqa: E731
        _wait(lambda: all(v.policy_state for v in views().values()), 60, "policy services up", run)
        lis = Listener(mosquitto.host, mosquitto.port, "node-01")
        try:
            man = make_manifest(
                "firmware", "acme", 2, (files := firmware_files("2.0.0", broken=False)), make_target(nodes=["node-01"]),
                key=KEY, campaign="fw2",
            )  # fmt: skip
            lis.push_ota(sign_bundle(KEY, man, files))
            ota = lambda leaf, m: leaf == "ota/result" and m["status"] != "accepted"  # noqa: E731
            r, _ = lis.wait(ota, 90, "staged", None)
            assert (r["status"], r["version"]) == ("staged", 2), r
            r, _ = lis.wait(ota, 120, "confirmed", None)
            assert (r["ok"], r["status"], r["version"]) == (True, "confirmed", 2), r
        finally:
            lis.close()
        _wait(lambda: views()["node-01"].restarts >= 1, 10, "node-01 counted as restarted", run)
        seen = views()["node-01"].messages
        _wait(lambda: views()["node-01"].messages > seen + 2, 30, "node-01 reporting again", run)
        v = views()
        assert v["node-02"].restarts == 0 and v["node-02"].messages > 0, "the other node ran on"
        assert not v["node-01"].failing(), v["node-01"].error
        node1 = [ln for n, ln in lines if n == "node-01"]
        assert any("umeter sim: node reset; starting it again" in ln for ln in node1), node1
        assert any("umeter node node-01 v2.0.0" in ln for ln in node1), "the new build is what runs"
