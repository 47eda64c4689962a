"""The RAM budget is held (docs/memory.md): on this unix port, a node from the .mpy build and one
run in place from a ROMFS image hold no more than umeter.budget says, start store-and-forward
in their budgeted heap (what they hold + 32 KB) without a MemoryError, and the node's own
free-heap gate (nodeinit.py _UPLINK_COST) is the uplink's measured cost for this port, not a guess.
The measurement is benchmarks/memory.py's own (booted through main.py, held after the run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from umeter import budget, unixport
from umeter.broker import Mosquitto
from umeter.build import build

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_KB = 3  # a table entry may sit this far above the measurement (it is rounded up)


def _benchmark():
    spec = importlib.util.spec_from_file_location("memory_benchmark", ROOT / "benchmarks" / "memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("budget")
    res = build("sim", work / "build", romfs=True)
    with Mosquitto() as broker:
        yield _benchmark(), work, res, broker


def _run(setup, load: str, kind: str, heap: int | str, settle: int = 3, run_s: int = 12) -> dict:
    bm, work, res, broker = setup
    path, image = {
        "mpy": (str(res.out / "lib") + ":.frozen", "-"),
        "romfs": (".frozen", str(res.out / "romfs.img")),
        "frozen": (".frozen", "-"),  # the interpreter's own package (a local build of the port)
    }[load]
    tag = f"{load}{kind}-{heap}"
    cfg = bm.node_config(f"budget-{tag.replace('+', '')}", kind, broker.host, broker.port, {})  # one MQTT id each
    if isinstance(heap, int) and image != "-":
        heap += (res.out / "romfs.img").stat().st_size + 1024  # the image: flash on a board
    return bm.run_node(work, tag, cfg, res.out / "main.py", path, image, heap, settle, run_s)


@pytest.mark.parametrize(
    "load,kind", [("mpy", "+cmd_key"), ("romfs", "+store"), ("frozen", "+cmd_key"), ("mpy", "+lora")]
)
def test_a_node_holds_its_budget_and_runs_in_it(setup, load, kind):
    frozen = setup[0].frozen_package() is not None  # '.frozen' comes first on a board-like path
    if (load == "frozen") != frozen:
        pytest.skip(f"{load} on an interpreter {'with' if frozen else 'without'} a frozen meternode (docs/memory.md)")
    words = unixport.word_bytes()
    table = budget.held_kb(kind, words=words, load=load)
    heap = budget.heap_for(kind, words=words, load=load)
    with ThreadPoolExecutor(2) as ex:
        big, tight = ex.map(lambda h: _run(setup, load, kind, h), ["1m", heap])
    assert "error" not in big, big
    if kind == "+cmd_key":  # operated during the run: every command done
        assert big["command"] == tight["command"] == "ok", (big, tight)
    held_kb = big["run_held"] / 1024
    assert held_kb <= table, f"{kind} from {load} holds {held_kb:.1f} KB, its budget says {table}: re-measure"
    # a table far above the measurement is stale (re-measure). (Until session 11 +store from
    # ROMFS held 91.6 or 88.7 KB by the node id's length: a package's constants table pointed at
    # the next heap block and kept a forgotten module alive; umeter.build gives every module a
    # constant object now, docs/memory.md)
    assert held_kb > table - TOLERANCE_KB - 2, f"{kind} from {load} holds {held_kb:.1f} KB, the table {table}: {big}"
    # in its budgeted heap: store-and-forward starts, the link is up (a LoRa-only node's: the
    # simulated network took its frames), nothing runs out of memory
    assert "error" not in tight and not tight.get("uplink_refused"), tight
    if kind == "+lora":
        assert tight["lora_uplinks"] > 0 and tight["memory_errors"] == 0, tight
    else:
        assert tight["uplink"] is True and tight["memory_errors"] == 0, tight
    assert tight["low_free"] > 16 * 1024, tight


def _gate(setup, load: str, kind: str) -> int:
    # nodeinit.uplink_need() for this config, asked of the node's own code on this port and load
    bm, work, res, broker = setup
    cfg = bm.node_config("gate", kind, broker.host, broker.port, {})
    script = work / "gate.py"
    script.write_text(
        bm.PROLOGUE
        + "import sys\n"
        + ("_mount(sys.argv[1])\n" if load == "romfs" else "")
        + "from meternode import nodeinit\n"
        + f"print('GATE', nodeinit.uplink_need({cfg!r}))\n"
    )
    path, args = (str(res.out / "lib") + ":.frozen", []) if load == "mpy" else (".frozen", [str(res.out / "romfs.img")])
    env = dict(os.environ, MICROPYPATH=path)
    out = subprocess.run(unixport.command(script, *args, heap="1m"), capture_output=True, text=True, env=env,
                         timeout=30).stdout  # fmt: skip
    return int(out.split("GATE")[1].split()[0])


@pytest.mark.parametrize("load", ["mpy", "romfs"])
def test_the_uplink_gate_is_the_measured_cost_on_this_port(setup, load):
    working = 16 * 1024  # nodeinit.py _WORKING
    for kind in ("+store", "+cmd_key", "+lora"):
        r = _run(setup, load, kind, "1m", settle=2, run_s=1)
        cost = r["uplink_cost"]  # free heap before - after the node started its uplink
        gate = _gate(setup, load, kind) - working
        assert cost <= gate <= cost + TOLERANCE_KB * 1024, (
            f"{kind} from {load}: the uplink takes {cost} bytes here, nodeinit.py's table says {gate}: "
            "update _UPLINK_COST from benchmarks/memory.py"
        )


def _loaded_as(cwd: Path, path: str) -> tuple[str, int]:
    # nodeinit._loaded() and the module's __file__, the package imported from `path` with cwd `cwd`
    code = "from meternode import nodeinit\nprint('LOADED', nodeinit.__file__, nodeinit._loaded())\n"
    env = dict(os.environ, MICROPYPATH=path)
    r = subprocess.run([unixport.micropython_path(), "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=30)  # fmt: skip
    if "LOADED" not in r.stdout:
        return "", -1  # not importable from there
    f = r.stdout.split("LOADED")[1].split()
    return f[0], int(f[1])


def test_the_gate_tells_source_in_the_working_directory_from_frozen_code(tmp_path):
    # Frozen modules have a __file__ relative to '.frozen' ("meternode/nodeinit.py"); a source
    # package in the working directory ('' comes first on sys.path: a board with the .py files
    # copied to its root) has the same string, and must get the source costs (.mpy class plus
    # the compiler's peak), not the in-place ones.
    assert _loaded_as(unixport.firmware_root(), ".frozen") == ("meternode/nodeinit.py", 0)
    res = build("sim", tmp_path / "build")
    assert _loaded_as(res.out / "lib", ".frozen") == ("meternode/nodeinit.mpy", 1)


def test_frozen_code_gets_the_in_place_costs(tmp_path):
    f, load = _loaded_as(tmp_path, ".frozen")  # nothing in the working directory
    if not f:
        pytest.skip("this interpreter has no frozen meternode (a local build of the unix port: docs/memory.md)")
    assert (f, load) == ("meternode/nodeinit.py", 2), "frozen code runs in place: the ROMFS costs"


def test_the_benchmark_refuses_to_measure_a_load_the_interpreter_cannot_give():
    # --frozen on an interpreter without a frozen meternode names it and what is missing; a
    # normal run on one with it (its ROMFS run would import the frozen package) says so
    bm = _benchmark()
    binary = unixport.micropython_path()
    has = bm.frozen_package() is not None
    with pytest.raises(SystemExit) as e:
        bm.main([] if has else ["--frozen"])
    msg = str(e.value)
    assert binary in msg
    assert ("has meternode frozen in" in msg) if has else ("has no frozen meternode package" in msg), msg


def test_the_fullest_node_starts_in_its_budgeted_heap_without_a_memory_error(setup):
    # +fleet (signed bundles, OTA, the demo policy) from .mpy, its first simulated hours in
    # what it holds + 32 KB.  Measured 2026-12-05 on the 64-bit port: the heap at its first
    # connect had 20 KB free in no piece over 640 bytes (start-up's transient objects scattered
    # between the long-lived ones), and discovery or the next reports failed for want of 440
    # bytes; the node now collects every eighth of its heap allocated (nodeinit.py).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from umeter.policy import load_any
    from umeter.signing import fleet_identity

    bm, work, res, broker = setup
    bm.FLEET.update(fleet_identity(Ed25519PrivateKey.from_private_bytes(bytes(32)), "mem"))
    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    path = str(res.out / "lib") + ":.frozen"
    # what it holds, measured as the benchmark does (a 1-MB heap, held after the run) ...
    cfg = bm.node_config("budget-fleet", "+fleet", broker.host, broker.port, policy)
    big = bm.run_node(work, "mpy-fleet-1m", cfg, res.out / "main.py", path, "-", "1m", 3, 12)
    assert "error" not in big, big
    # ... and the heap the benchmark gives it for the day: that + 32 KB
    heap = bm._heap_for(big["run_held"], 0)
    cfg = bm.node_config("budget-fleet-day", "+fleet", broker.host, broker.port, policy, False)
    r = bm.run_node(work, "mpy-fleet-day", cfg, res.out / "main.py", path, "-", heap, 0, 0, 4 * 3600, 10)
    assert "error" not in r and r["uplink"] is True, r
    assert r["memory_errors"] == 0, r


class _Sender:
    """Publishes `plan` ([(seconds from now, leaf under the node's topic, [payloads])]) to a
    node over the broker from a thread, and keeps the results it answers on policy/result,
    ota/result and cmd/result."""

    def __init__(self, config: dict, plan: list) -> None:
        import json
        import threading
        import time

        from umeter.mqttc import connect, make_client

        m, pre = config["mqtt"], f"umeter/{config['node_id']}"
        self.results: list[tuple[str, dict]] = []
        self.c = make_client(f"send-{config['node_id']}")
        self.c.on_message = lambda c, u, msg: self.results.append((msg.topic[len(pre) + 1 :], json.loads(msg.payload)))
        connect(self.c, m["host"], m["port"])
        self.c.subscribe([(f"{pre}/policy/result", 1), (f"{pre}/ota/result", 1), (f"{pre}/cmd/result", 1)])
        self.c.loop_start()

        def send() -> None:
            t0 = time.monotonic()
            for at, leaf, payloads in plan:
                time.sleep(max(0.0, at - (time.monotonic() - t0)))
                for p in payloads:
                    self.c.publish(f"{pre}/{leaf}", p, qos=1).wait_for_publish(10)

        threading.Thread(target=send, daemon=True).start()

    def close(self) -> list[tuple[str, dict]]:
        self.c.loop_stop()
        self.c.disconnect()
        return self.results


def _fleet_node(setup, tag: str, policy: dict, plan: list, run_s: int) -> tuple[list, dict]:
    # A +fleet node from .mpy in its budgeted heap while `plan` is sent to it (_Sender) ->
    # (its results other than "accepted": (leaf, result)), what run_node measured)
    bm, work, res, broker = setup
    heap = budget.heap_for("+fleet", words=unixport.word_bytes(), load="mpy")
    cfg = bm.node_config(f"budget-{tag}", "+fleet", broker.host, broker.port, policy)
    sender = _Sender(cfg, plan)
    try:
        r = bm.run_node(work, f"mpy-fleet-{tag}", cfg, res.out / "main.py", str(res.out / "lib") + ":.frozen", "-",
                        heap, 2, run_s, operate=False)  # fmt: skip
    finally:
        results = sender.close()
    return [(leaf, m) for leaf, m in results if m["status"] != "accepted"], r


def test_a_fleet_node_takes_every_command_a_signed_bundle_and_a_build_in_its_budgeted_heap_under_the_seventh_qstr_pool(
    setup,
):
    # +fleet from .mpy in its budgeted heap gets the operator's commands (status, set, relay,
    # time, rollback, read_now, one forged), a signed policy bundle (applied) and then a
    # firmware bundle (staged: the node reboots into it; the benchmark's node script reports
    # what it holds and its names just before). Each command loads what it needs and keeps
    # its names: the status command's alone are ~30.  The names a bundle's path interns stay for
    # ever: on main at 957aa96 they took the node from 1210 to 1255 (64-bit) / 1231 to 1277
    # (32-bit) for the policy bundle and to 1262 / 1284 for the build, past the 1260th name,
    # at which the unix ports (and boards, docs/memory.md) allocate a seventh qstr pool of
    # 1280 entries in one block (14 / 9 KB) in a heap that has run for days and holds the
    # message; bundle.py and SHA-512 stayed loaded after it, 14 KB more held.  1250: the
    # boundary less a margin for names a policy's events or a later message may add.
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from meternode.link.actions import make_command
    from umeter.campaign import ota_messages
    from umeter.cli.ota import read_build
    from umeter.policy import load_any, policy_bundle
    from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle

    bm, res = setup[0], setup[2]
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    bm.FLEET.update(fleet_identity(key, "mem"))
    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    # a build of one file (main.py): the path a build's names take is the same whatever its
    # size (a larger one: the test below)
    files = {"main.py": read_build(res.out)[0]["main.py"]}
    build_v2 = make_manifest("firmware", "mem", 2, files, make_target(all_nodes=True), key=key, campaign="fw2")
    cmd_key = bytes.fromhex(bm.KEY)
    ops = [("status", None), ("set", {"key": "telemetry_s", "value": 3.0}), ("relay", {"on": True}),
           ("time", {"epoch": int(time.time())}), ("rollback", {"key": "telemetry_s"}), ("read_now", None)]  # fmt: skip
    cmds = [make_command(cmd_key, "budget-bundle", op, a, ctr=i + 1, exp=int(time.time()) + 3600, msg_id=op)
            for i, (op, a) in enumerate(ops)]  # fmt: skip
    forged = make_command(bytes(16), "budget-bundle", "status", ctr=100, exp=int(time.time()) + 3600, msg_id="forged")
    plan = [
        (1, "cmd", [*cmds, forged]),
        (4, "policy/bundle", [policy_bundle(key, "mem", 1, policy, make_target(all_nodes=True), campaign="p1")]),
        (6, "ota", ota_messages(sign_bundle(key, build_v2, files))),
    ]
    done, r = _fleet_node(setup, "bundle", policy, plan, 20)
    got = {m.get("id"): m for leaf, m in done if leaf == "cmd/result"}
    assert [op for op, _ in ops if got.get(op, {}).get("ok")] == [op for op, _ in ops], (got, r)
    assert not got["forged"]["ok"] and "unauthenticated" in got["forged"]["why"], got["forged"]
    bundles = [(leaf, m["status"], m.get("why")) for leaf, m in done if leaf != "cmd/result"]
    assert bundles == [("policy/result", "applied", None), ("ota/result", "staged", None)], (done, r)
    assert r["memory_errors"] == 0 and r["uplink"] is True, r
    assert "reboot_held" in r, f"the node did not reboot into the staged build: {r}"
    assert r["qstrs"] < 1250, f"{r['qstrs']} names interned after a policy bundle and a firmware build: {r}"
    left = (r["reboot_held"] - r["start_held"]) / 1024
    assert left < 8, f"the bundles left {left:.1f} KB held (bundle.py or SHA-512 kept?): {r}"


def test_a_fleet_node_takes_a_streamed_build_in_its_budgeted_heap(setup):
    # A build too large to go inline comes as `begin`, `file` chunks and `end`.  On main at
    # 63ec4cb its 8-KB chunks needed 6.3-6.6 KB in one piece (the packet, its copy, the text,
    # the decoded bytes) in a heap that had run a while, found none, and the link went down at
    # each redelivery: the build was never staged.  The whole sim build (~106 files): on main
    # at 3e57599 its manifest made a 16-KB `begin`, which the node's MQTT client had no block
    # for ("failed: ... no memory for the message"); its manifest now streams in chunks too.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from umeter.campaign import NODE_BUFFER, ota_messages
    from umeter.cli.ota import read_build
    from umeter.policy import load_any
    from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle

    bm, res = setup[0], setup[2]
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    bm.FLEET.update(fleet_identity(key, "mem"))
    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    files, build = read_build(res.out)
    assert len(files) > 100, "the whole build"
    build_v2 = make_manifest("firmware", "mem", 2, files, make_target(all_nodes=True), key=key, campaign="fw2",
                             build=build)  # fmt: skip
    msgs = ota_messages(sign_bundle(key, build_v2, files))
    done, r = _fleet_node(setup, "stream", policy, [(5, "ota", msgs)], 40)
    assert [(leaf, m["status"]) for leaf, m in done if leaf != "cmd/result"] == [("ota/result", "staged")], (done, r)
    assert r["memory_errors"] == 0 and r["uplink"] is True, r
    assert "reboot_held" in r, f"the node did not reboot into the staged build: {r}"
    assert r["qstrs"] < 1250, f"{r['qstrs']} names interned after a streamed build: {r}"
    assert max(len(m) for m in msgs) < NODE_BUFFER, "every message fits the node's buffer"


def test_a_node_with_lorawan_is_budgeted_with_it():
    # A node with LoRaWAN holds its modem driver, link and codec (and near a qstr pool's end,
    # names): provisioning's heap check and the gate count them (docs/memory.md)
    assert budget.kind({"lora": {"deveui": "0" * 16}}) == "+lora"
    assert budget.kind({"mqtt": {"host": "b"}, "lora": {"deveui": "0" * 16}}) == "+store+lora"
    assert budget.kind({"mqtt": {"host": "b"}, "policy": {"n": "p"}, "lora": {"deveui": "0" * 16}}) == "+policy+lora"
    assert budget.kind({"mqtt": {"host": "b"}, "policy": {"n": "p"}}) == "+policy"
    for words in (8, 4):
        t = budget.HELD_KB[words]["mpy"]
        assert budget.held_kb("+lora", words=words) == t["+lora"] > t["plain"]
        # measured with the policy node; beside a smaller MQTT node, what LoRaWAN added there
        assert budget.held_kb("+store+lora", words=words) == t["+store"] + t["+policy+lora"] - t["+policy"]
        assert budget.heap_for("+fleet+lora", words=words) == (t["+fleet+lora"] + 32 + budget.BUNDLE_KB[words]) * 1024
    with pytest.raises(ValueError, match="no budget for '\\+lora' loaded as flash"):
        budget.held_kb("+lora", words=8, load="flash")


def test_a_policy_node_with_lora_stays_under_the_seventh_qstr_pool_after_a_small_frame_and_the_networks_time(setup):
    # The +policy node with LoRaWAN speaking (mode "always", beside MQTT) interns what its first
    # uplink's DeviceTimeReq (link/nettime.py) and its first LoRa-sized policy frame
    # (policy/small.py) bring, in a heap that has run a while: the 1261st name would allocate
    # the seventh qstr pool at once (1280 entries, ~14 / ~9 KB; docs/memory.md)
    from meternode.policy import smallenc
    from umeter.policy import load_any

    bm, work, res, broker = setup
    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    cfg = bm.node_config("pool-lora", "+policy+lora", broker.host, broker.port, policy)
    cfg["lora"]["mode"] = "always"
    frame = smallenc.encode_price(bytes.fromhex(bm.KEY), "pool-lora", 7, 0.42, 10)
    r = bm.run_node(work, "pool-lora", cfg, res.out / "main.py", str(res.out / "lib") + ":.frozen", "-", "1m", 3, 12,
                    downlinks=[(10, frame)])  # fmt: skip
    assert "error" not in r and r["lora_uplinks"] > 0 and r["lora_policy_frames"] == 1, r
    assert r["qstrs"] < 1260, f"{r['qstrs']} names: the seventh qstr pool ({r['run_held']} bytes held)"
