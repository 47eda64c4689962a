"""Heap a running node holds, per configuration and per way of loading the firmware: from
source, from the .mpy build, and run in place from a ROMFS image; and whether each one runs a
simulated day in its budgeted heap (what it holds + 32 KB) without a MemoryError.

Every measurement runs in a fresh `micropython` process (the unix port that
`umeter.unixport` selects: the pip 64-bit one, or a 32-bit board-like build with
UMETER_MICROPYTHON=...; the .mpy build then targets that binary's architecture):

- imports (1 MB heap): the heap one subsystem's modules hold once imported, `alone` (a fresh
  process, its own dependencies included) and `marginal` (after the rows above it, in the order
  a node loads them);
- nodes (1 MB heap, so nothing is refused): the node booted the way a board boots it (the
  build's main.py, OTA slot selection included) on boards/sim.json with the sim HAL in real
  time, read after start-up (`--settle` s) and after `--run` s more (the least of the last three
  one-second readings); `held` is gc.mem_alloc() above the interpreter's own baseline after
  gc.collect(), i.e. everything the node keeps.
  Configurations: plain (metering, record log, no MQTT), +store (store-and-forward to a local
  Mosquitto), +cmd_key (authenticated commands; during the run each command an operator
  uses is sent, and to +fleet a signed policy bundle),
  +policy (the demo policy in compact form). A ROMFS image is read into the heap first (a
  board maps it from flash) and its bytes are not counted;
- day (the budgeted heap: held after the run + 32 KB, + the image for ROMFS): the same node
  runs one simulated day of its sim clock, its sampler producing blocks as fast as the meter
  takes them (a precomputed block) and the clock advancing `--stride` times as fast as the
  samples (10: the meter meters 2.4 h of samples, everything that runs by the clock --
  checkpoints, the load profile and its records going out over MQTT, the daily freeze, the
  policy's calendar and day counters -- sees 24 h), MQTT and telemetry in real time; lowest
  free heap (gc.mem_free() after a collection, once a second) and every MemoryError the node
  printed.

The last line is one JSON object; "budget" holds the figures the RAM budget is held to
(docs/memory.md): full_mpy_kb, full_romfs_kb, store_cmd_mpy_kb (held after the run), and per
configuration its target heap, lowest free heap and MemoryErrors over the day. Its native_kb
is, per board architecture (boards/*.json), the machine code of the viper kernels the full
node's modules load, read from that board's build (umeter.mpyfile): the unix port keeps it
outside the gc heap, so no held figure here counts it; an rp2 board keeps it in the gc heap
(gc_heap_kb: add it to the 32-bit figures), an esp32 in IRAM.

The third way onto a board, the package frozen into the firmware, needs an interpreter built
with it (a unix port made with FROZEN_MANIFEST including `umeter build --manifest`'s manifest.py:
a local build, nothing CI makes). `--frozen` measures that interpreter's frozen package instead
of the three loads above: the same imports, nodes and day, every module imported from '.frozen'
(no /lib, no image; main.py boots it as a board's does). Its "budget" holds full_frozen_kb and
store_cmd_frozen_kb and the "frozen:..." configurations. It stops with an error naming the
binary when that has no frozen meternode; a normal run stops when the interpreter has one (its
ROMFS run, with '.frozen' first on the path as on a board, would measure the frozen package).

    python benchmarks/memory.py [--settle 3] [--run 30] [--day 86400] [--stride 10] [--jobs 2]
    UMETER_MICROPYTHON=/path/to/micropython32 python benchmarks/memory.py   # a 32-bit port
    UMETER_MICROPYTHON=/path/to/micropython-with-meternode-frozen python benchmarks/memory.py --frozen
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from umeter import mpyfile, unixport
from umeter.broker import Mosquitto
from umeter.build import build

SUBSYSTEMS = (
    ("metrology", ("meternode.config", "meternode.hal", "meternode.hal.sim", "meternode.metrology.meter")),
    ("node", ("meternode.node",)),
    ("store", ("meternode.store.records", "meternode.store.log", "meternode.store.profile",
               "meternode.store.checkpoint")),
    ("uplink", ("meternode.link.mqtt", "meternode.link.uplink", "meternode.link.outbox",
                "meternode.link.service")),
    ("supervision", ("meternode.supervisor", "meternode.tasks")),
    ("commands", ("meternode.link.commands", "meternode.link.actions")),
    ("policy", ("meternode.policy.service", "meternode.policy.engine")),
    ("policy_check", ("meternode.policy.schema",)),
    ("discovery", ("meternode.link.discovery",)),
    ("lora", ("meternode.link.loraservice", "meternode.link.airtime", "meternode.link.loralink",
              "meternode.link.lorawan")),
    ("ota", ("meternode.policy.ota",)),
    ("fleet", ("meternode.policy.agent",)),
)  # fmt: skip

LOADS = ("source", "mpy", "romfs")
FROZEN = "frozen"  # the load --frozen measures
CONFIGS = ("plain", "+store", "+cmd_key", "+policy", "+fleet", "+lora", "+policy+lora", "+fleet+lora")
# "+lora": metering, record log and LoRaWAN, no MQTT; "+policy+lora", "+fleet+lora": those nodes
# with LoRaWAN as MQTT's fallback. The modem is a simulated RAK3172 (umeter_hil.lorasim) on a pty.
MARGIN = 32 * 1024  # the budget: a node runs in a heap this much larger than what it holds
KEY = "5a" * 16
# signed bundles and firmware OTA (+fleet): a fleet identity with one (fixed, test-only) key
FLEET = {"name": "mem", "groups": [], "keys": {}}
MEMORY_ERROR = re.compile(r"MemoryError|memory allocation failed")

# Every script starts here: take the baseline, and for a ROMFS run map the image (read into
# the heap: the unix port has no flash) at /rom, as a board's firmware does at boot, and put
# /rom and /rom/lib on sys.path. The image's own allocation is reported and not counted.
PROLOGUE = r"""
import gc, sys, os
gc.collect()
base = gc.mem_alloc()
img_bytes = 0
def _mount(path):
    global img_bytes
    import vfs
    n = os.stat(path)[6]
    gc.collect()
    a = gc.mem_alloc()
    buf = bytearray(n)
    with open(path, "rb") as f:
        f.readinto(buf)
    vfs.mount(vfs.VfsRom(buf), "/rom")
    sys.path.append("/rom")
    sys.path.append("/rom/lib")
    gc.collect()
    img_bytes = gc.mem_alloc() - a
def held():
    gc.collect()
    return gc.mem_alloc() - base - img_bytes
"""

# The groups are read from a file: the unix port dies ("FATAL: uncaught NLR") on an argument
# longer than ~256 characters.
IMPORT_SCRIPT = r"""
if sys.argv[3] != "-":
    _mount(sys.argv[3])
a = held()
out = []
with open(sys.argv[1]) as f:
    groups = f.read().split(";")
for i in sys.argv[2].split(","):
    for name in groups[int(i)].split(","):
        __import__(name)
        gc.collect()
    b = held()
    out.append(b - a)
    a = b
print("RESULT " + " ".join(str(x) for x in out))
"""

# Boots the node through the build's main.py (provisioning check and OTA slot selection in
# meternode/start.py, which forgets the package before main.py imports the node), with the
# node's main() replaced by a measured run as soon as main.py has imported it: real time
# (settle, run) or a fast simulated day.
NODE_SCRIPT = r"""
root, image = sys.argv[1], sys.argv[2]
settle, run_s, day_s, stride = [int(x) for x in sys.argv[3:7]]
if image != "-":
    _mount(image)
os.chdir(root)
import asyncio, time, micropython, builtins

def sample(tag, n, h=None):
    # h: the held figure to report (default: now)
    h = held() if h is None else h
    u = n.uplink_service
    up = 1 if (u is not None and u.link is not None and u.link.up) else 0
    print("RESULT %s %d %d %d %d" % (tag, h, gc.mem_free(), img_bytes, up))

def _fast(s, meter, stride):
    # The sampler makes its first block, then hands a copy of it for every block after (160
    # sets = two whole mains cycles: the waveform stays continuous), advancing its sets, clock
    # and stamps as its own fill() does (_advance); after each second of blocks it coasts
    # stride - 1 seconds (SimSampler.coast: clock and counters run on, the meter registers the
    # interval at its last measured power), so the meter meters every block it gets while
    # everything that runs by the clock sees `stride` times as much time.
    import array
    tpl = array.array("H", s._bufs[0])
    s.fill(tpl)
    bs = s.block_sets
    per = max(1, s.rate // bs)
    k = [0]
    def fill(buf):
        buf[:] = tpl
        us = s._advance(bs)
        k[0] += 1
        if stride > 1 and k[0] % per == 0:
            s.coast(meter, stride - 1)
        return us
    s.fill = fill

async def _measure(n):
    t = asyncio.create_task(n.run())
    if day_s:
        clock = n.hal.clock
        e0 = clock.time()  # integer epoch seconds (the sim's ticks wrap like a board's)
        gc.collect()
        lo = gc.mem_free()
        t0 = time.ticks_ms()
        while clock.time() - e0 < day_s and not t.done():
            await asyncio.sleep_ms(1000)
            gc.collect()
            lo = min(lo, gc.mem_free())
        print("RESULT day %d %d %d" % (clock.time() - e0, time.ticks_diff(time.ticks_ms(), t0), lo))
        sample("run", n)
    else:
        await asyncio.sleep_ms(settle * 1000)
        sample("start", n)
        lo = gc.mem_free()
        hs = []
        for k in range(run_s):
            await asyncio.sleep_ms(1000)
            gc.collect()
            lo = min(lo, gc.mem_free())
            hs.append(held())
        # held after the run: the least of its last three seconds, so a message still being
        # handled at the end (a late command on a loaded host) is not taken for steady state
        sample("run", n, min(hs[-3:]) if hs else None)
        print("RESULT low %d" % lo)
    if t.done():
        print("RESULT dead")
    micropython.qstr_info()
    # the package's modules the node holds, for the machine code they load on a board (after
    # every reading: the line is made here)
    print("RESULT mods " + " ".join(k for k in sys.modules if k.startswith("meternode")))

def _main(root="."):
    builtins.__import__ = _import
    from meternode.config import load_json
    cfg = load_json(root + "/config.json")
    n = sys.modules["meternode.node"].Node(load_json(root + "/board.json"), cfg)
    load_json = None  # as node.main(): the running node holds nothing of config.py
    def reboot(why, h=n.reboot):
        # a planned reboot (into a staged build): what the node held and its names just before.
        # Only names the script or the node already has (it is compiled from source: every
        # identifier is interned, and the benchmark counts them)
        sample("reboot", n)
        micropython.qstr_info()
        h(why)
    n.reboot = reboot
    if day_s:
        _fast(n.hal.sampler, n.meter, stride)
    asyncio.run(_measure(n))

_import = builtins.__import__
def _hook(name, g=None, l=None, fromlist=(), level=0):
    # `from meternode import node` in main.py: import the node module here, patch its main()
    m = _import(name, g, l, fromlist, level)
    if name == "meternode" and fromlist and "node" in fromlist:
        _import("meternode.node")
        sys.modules["meternode.node"].main = _main
    return m
builtins.__import__ = _hook
# compiled from a temporary string, as a board's main.py is from its file: nothing holds the
# text while the node runs (the string exec() is given stays on the stack until it returns)
with open("main.py") as f:
    src = compile(f.read(), "main.py", "exec")
exec(src, {"__name__": "__main__"})
"""


# Is there a meternode package frozen into the interpreter? Prints its __file__ (frozen code
# has a path relative to '.frozen', "meternode/__init__.py") or the import's error.
PROBE_SCRIPT = r"""
import sys
sys.path[:] = [".frozen"]
try:
    import meternode, meternode.node
    print("RESULT", meternode.node.__file__)
except ImportError as e:
    print("RESULT -", repr(e))
"""


def frozen_package() -> str | None:
    """The frozen meternode's node module file name in the interpreter in use, None if it has none."""
    with tempfile.TemporaryDirectory(prefix="umeter-mem-") as d:
        script = Path(d) / "probe.py"
        script.write_text(PROBE_SCRIPT)
        lines, _ = _mp(script, [], ".frozen", "1m", 30)
    f = lines[0].split()
    return f[0] if f[0] != "-" else None


def _mp(script: Path, args: list[str], path: str, heap: str | int, timeout: float) -> tuple[list[str], str]:
    env = dict(os.environ, MICROPYPATH=path)
    argv = unixport.command(script, *args, heap=heap)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln[7:] for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit("benchmark step failed on MicroPython:\n" + p.stdout[-3000:] + p.stderr[-3000:])
    return lines, p.stdout + p.stderr


def imports(work: Path, path: str, image: str) -> dict:
    script = work / "imports.py"
    script.write_text(PROLOGUE + IMPORT_SCRIPT)
    gfile = work / "groups.txt"
    gfile.write_text(";".join(",".join(mods) for _, mods in SUBSYSTEMS))
    idx = [str(i) for i in range(len(SUBSYSTEMS))]
    marginal = [int(x) for x in _mp(script, [str(gfile), ",".join(idx), image], path, "1m", 120)[0][0].split()]
    alone = [int(_mp(script, [str(gfile), i, image], path, "1m", 120)[0][0]) for i in idx]
    return {name: {"alone": a, "marginal": m} for (name, _), a, m in zip(SUBSYSTEMS, alone, marginal, strict=True)}


def _slug(kind: str) -> str:
    """A configuration's name as part of a node id ("+policy+lora" -> "policy-lora")."""
    return kind.strip("+").replace("+", "-")


def node_config(node_id: str, kind: str, host: str, port: int, policy: dict, realtime: bool = True) -> dict:
    c = {"node_id": node_id, "telemetry_s": 2.0, "profile_s": 60, "sim": {"realtime": realtime, "seed": 1}}
    if kind.endswith("+lora"):  # run_node gives it a simulated modem ("port")
        c["lora"] = {"deveui": "70B3D57ED00000%02X" % (sum(node_id.encode()) & 0xFF), "appeui": "0" * 16,
                     "appkey": "00112233445566778899AABBCCDDEEFF", "region": "CN470", "dr": 5,
                     "daily_budget_ms": 600000}  # fmt: skip
        kind = kind[: -len("+lora")] or "plain"
    if kind != "plain":
        c["mqtt"] = {"host": host, "port": port, "prefix": "umeter", "keepalive": 30}
    if kind in ("+cmd_key", "+policy", "+fleet"):
        c["cmd_key"] = KEY
    if kind in ("+policy", "+fleet"):
        c["policy"] = policy
    if kind == "+fleet":
        c["fleet"] = FLEET
    return c


def run_node(work: Path, tag: str, config: dict, main_py: Path, path: str, image: str, heap: str | int,
             settle: int, run_s: int, day_s: int = 0, stride: int = 1, downlinks=(),
             operate: bool = True) -> dict:  # fmt: skip
    # downlinks: (fport, bytes) the simulated network queues for a LoRa node's uplinks;
    # operate: a node with a command key is operated during the run (Operator)
    root = work / tag
    root.mkdir(parents=True, exist_ok=True)
    path = _board_path(root, path)
    (root / "board.json").write_text((unixport.boards_dir() / "sim.json").read_text())
    (root / "config.json").write_text(json.dumps(config))
    (root / "main.py").write_text(main_py.read_text())
    script = work / "node.py"
    if not script.exists():
        script.write_text(PROLOGUE + NODE_SCRIPT)
    args = [str(root), image, str(settle), str(run_s), str(day_s), str(stride)]
    r: dict = {"uplink": None, "heap": unixport.parse_heap(heap)}
    modem = None
    if config.get("lora") and not config["lora"].get("port"):
        from umeter_hil.lorasim import SimModem

        modem = SimModem().start()
        for port, data in downlinks:
            modem.queue_downlink(port, data)
        config = dict(config, lora=dict(config["lora"], port=modem.port))
        (root / "config.json").write_text(json.dumps(config))
    operator = None
    if config.get("cmd_key") and operate and not day_s:
        # the operator's commands (and a +fleet node's policy bundle) during the run: the heap
        # read after the run includes whatever handling them left behind
        operator = Operator(config, at=settle + run_s / 3)
    try:
        lines, out = _mp(script, args, path, heap, settle + run_s + 60 + (day_s // 10 if day_s else 0))
    except SystemExit as e:
        return {"error": str(e).strip().splitlines()[-1][:200], "heap": r["heap"]}
    except subprocess.TimeoutExpired:
        return {"error": "timed out", "heap": r["heap"]}
    finally:
        if operator is not None:
            r["command"] = operator.close()
        if modem is not None:
            r["lora_uplinks"] = len(modem.uplinks)  # frames the network took
            modem.stop()
    for ln in lines:
        f = ln.split()
        if f[0] in ("start", "run", "reboot"):
            r[f[0] + "_held"], r[f[0] + "_free"], r["image"] = int(f[1]), int(f[2]), int(f[3])
            r["uplink"] = bool(int(f[4])) if "mqtt" in config else None
        elif f[0] == "low":
            r["low_free"] = int(f[1])
        elif f[0] == "day":
            r["sim_s"], r["wall_ms"], r["low_free"] = int(f[1]), int(f[2]), int(f[3])
        elif f[0] == "dead":
            r["error"] = "a node task ended"
        elif f[0] == "mods":
            r["modules"] = f[1:]
    r["lora_policy_frames"] = out.count("lora policy frame: ok")
    errs = [ln for ln in out.splitlines() if MEMORY_ERROR.search(ln)]
    r["memory_errors"] = len(errs)  # lines, not matches
    if errs:
        r["memory_error_lines"] = errs[:3]  # what failed, for the report
    m = re.search(r"n_qstr=(\d+)", out)
    if m:
        r["qstrs"] = int(m.group(1))
    m = re.search(r"store-and-forward on: (\d+) bytes free before, (\d+) after", out)
    if m:
        r["uplink_cost"] = int(m.group(1)) - int(m.group(2))
    if "store-and-forward off" in out:
        r["uplink_refused"] = True
    return r


def _board_path(root: Path, path: str) -> str:
    # The package's directory as a board names it: the node runs in `root`, so a module's
    # __file__ -- an interned name, never freed -- is "lib/meternode/node.mpy" as on a board's
    # "/lib", not the host's temporary path (~25 characters more for each of ~40 modules)
    out = []
    for i, d in enumerate(path.split(":")):
        if os.path.isabs(d) and os.path.isdir(d):
            link = root / ("lib" if i == 0 else f"lib{i}")
            if not link.exists():
                link.symlink_to(d, target_is_directory=True)
            d = link.name
        out.append(d)
    return ":".join(out)


class Operator:
    """Operates the node over the broker as an operator does, from `at` seconds from now, half
    a second apart: every command a node takes but `reboot` and `valve` (status, set, rollback,
    relay, time, read_now; authenticated), and a +fleet node a signed policy bundle. Each loads
    what it needs and keeps its names, so the heap read after the run is that of a node in
    service (`status` adds 8 names to a node without LoRa, 12 with it). Not sent: a forged command, hostile input, not
    service; its first refusal keeps the rejection limiter (~0.8 KB on 64-bit, 2 names, flat
    under a flood: tests/e2e/test_flood.py), which the margin covers. `close()`: "ok" when
    every one was done, else what was not."""

    def __init__(self, config: dict, at: float) -> None:
        import threading

        from meternode.link.actions import make_command
        from umeter.mqttc import connect, make_client

        m = config["mqtt"]
        pre = f"{m.get('prefix', 'umeter')}/{config['node_id']}"
        key, node, now = bytes.fromhex(config["cmd_key"]), config["node_id"], int(time.time())
        self.ops = [("status", None), ("set", {"key": "telemetry_s", "value": config["telemetry_s"]}),
                    ("rollback", {"key": "telemetry_s"}), ("relay", {"on": True}), ("time", {"epoch": now}),
                    ("read_now", None)]  # fmt: skip
        sends = [(f"{pre}/cmd", make_command(key, node, op, a, ctr=now + i, exp=now + 3600, msg_id=op))
                 for i, (op, a) in enumerate(self.ops)]  # fmt: skip
        if config.get("fleet"):
            from umeter.policy import load_any, policy_bundle
            from umeter.signing import make_target

            policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
            bundle = policy_bundle(fleet_key(), FLEET["name"], 2, policy, make_target(all_nodes=True), campaign="mem")
            sends.append((f"{pre}/policy/bundle", bundle))
        self.results: dict[str, dict] = {}
        self.c = make_client("umeter-mem-op")

        def on_message(client, userdata, msg) -> None:
            doc = json.loads(msg.payload)
            name = doc.get("id") or ("policy" if msg.topic.endswith("policy/result") else "?")
            if doc.get("status") != "accepted":
                self.results[name] = doc

        def send() -> None:
            for topic, body in sends:
                self.c.publish(topic, body, qos=1)
                time.sleep(0.5)

        self.c.on_message = on_message
        connect(self.c, m["host"], m["port"])
        self.c.subscribe([(f"{pre}/cmd/result", 1), (f"{pre}/policy/result", 1)])
        self.c.loop_start()
        self.want = [op for op, _ in self.ops] + (["policy"] if config.get("fleet") else [])
        self.timer = threading.Timer(at, send)
        self.timer.start()

    def close(self) -> str:
        self.timer.cancel()
        self.c.loop_stop()
        self.c.disconnect()
        bad = [f"{w}: {self.results[w].get('why') if w in self.results else 'no result'}"
               for w in self.want if not self.results.get(w, {}).get("ok")]  # fmt: skip
        return "ok" if not bad else "failed: " + "; ".join(bad)


def fleet_key():
    """The fleet's signing key for +fleet nodes (fixed, test-only: FLEET is its identity)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes(32))


def _heap_for(held: int, image: int) -> int:
    # held + the margin (+ the image, which a board keeps in flash), rounded up to 1 KB
    return (held + MARGIN + image + 1023) // 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=int, default=3, help="seconds from start to the start-up reading")
    ap.add_argument("--run", type=int, default=30, help="seconds running after that")
    ap.add_argument("--day", type=int, default=86400, help="simulated seconds of the budgeted-heap run (0: none)")
    ap.add_argument("--stride", type=int, default=10, help="sim clock seconds per second of samples metered in the day")
    ap.add_argument("--jobs", type=int, default=2, help="budgeted-heap runs at once (they use a CPU each)")
    ap.add_argument("--firmware", help="measure this firmware/ directory instead (e.g. an older checkout)")
    ap.add_argument(
        "-O",
        dest="opt",
        type=int,
        choices=range(4),
        default=None,
        help="mpy-cross optimisation level of the build (3: no line numbers in tracebacks)",
    )
    ap.add_argument(
        "--frozen", action="store_true", help="measure the meternode frozen into the interpreter (UMETER_MICROPYTHON)"
    )
    a = ap.parse_args(argv)
    from umeter.policy import load_any

    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    from umeter.signing import fleet_identity

    FLEET.update(fleet_identity(fleet_key(), "mem"))
    frozen = frozen_package()
    binary = unixport.micropython_path()
    if a.frozen and frozen is None:
        raise SystemExit(
            f"memory.py --frozen: {binary} has no frozen meternode package (import from '.frozen' failed)"
            " -- build the unix port with FROZEN_MANIFEST including `umeter build --board sim --manifest`'s"
            " manifest.py and point UMETER_MICROPYTHON at it"
        )
    if not a.frozen and frozen is not None:
        raise SystemExit(
            f"memory.py: {binary} has meternode frozen in ({frozen}): '.frozen' comes first on the ROMFS"
            " run's path, as on a board, so it would measure the frozen package -- measure it with"
            " --frozen, and .mpy and ROMFS with an interpreter without it"
        )
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="umeter-mem-") as d, Mosquitto() as broker:
        work = Path(d)
        fw = Path(a.firmware) if a.firmware else unixport.firmware_root()
        res_build = build("sim", work / "build", src=fw, romfs=not a.frozen, opt=a.opt)
        image = str(work / "build" / "romfs.img")
        if a.frozen:  # main.py boots it; every module of the package comes from '.frozen'
            paths = {FROZEN: (".frozen", "-", work / "build" / "main.py")}
        else:
            paths = {
                "source": (f"{fw}:.frozen", "-", fw / "main.py"),
                "mpy": (str(work / "build" / "lib") + ":.frozen", "-", work / "build" / "main.py"),
                "romfs": (".frozen", image, work / "build" / "main.py"),
            }
        port = {"arch": res_build.arch, "word_bytes": unixport.word_bytes(), "binary": binary}
        # the build's mpy-cross -O level (None: the default, with line numbers: what the budget is)
        port["opt"] = a.opt
        res: dict = {
            "port": port,
            "image_bytes": res_build.romfs["size"] if res_build.romfs else 0,
            "imports": {k: imports(work, p, img) for k, (p, img, _) in paths.items()},
            "nodes": {},
            "day": {},
        }
        jobs = []
        for load, (p, img, main_py) in paths.items():
            for kind in CONFIGS:
                cfg = node_config(f"mem-{load}-{_slug(kind)}", kind, broker.host, broker.port, policy)
                jobs.append(((load, kind), (work, f"{load}{kind}", cfg, main_py, p, img, "1m", a.settle, a.run)))
        # the nodes mostly sleep (real-time sim); a few at once keep the run short on 2 cores
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda j: run_node(*j[1]), jobs))
        for (load, kind), out in zip((j[0] for j in jobs), outs, strict=True):
            res["nodes"].setdefault(load, {})[kind] = out
        if not a.frozen:  # frozen machine code stays in flash
            res["native"] = native_code(work, fw, res["nodes"]["mpy"])
        if a.frozen:
            res["frozen"] = frozen
        if a.day:
            jobs = []
            for load in (FROZEN,) if a.frozen else ("mpy", "romfs"):
                p, img, main_py = paths[load]
                for kind in CONFIGS:
                    n = res["nodes"][load][kind]
                    if "run_held" not in n:
                        continue
                    heap = _heap_for(n["run_held"], n.get("image", 0))
                    cfg = node_config(f"day-{load}-{_slug(kind)}", kind, broker.host, broker.port, policy, False)
                    args = (work, f"day-{load}{kind}", cfg, main_py, p, img, heap, 0, 0, a.day, a.stride)
                    jobs.append(((load, kind), args))
            with ThreadPoolExecutor(max(1, a.jobs)) as ex:
                outs = list(ex.map(lambda j: run_node(*j[1]), jobs))
            for (load, kind), out in zip((j[0] for j in jobs), outs, strict=True):
                res["day"].setdefault(load, {})[kind] = out
    res["budget"] = budget(res)
    res["seconds"] = round(time.monotonic() - t0, 1)
    _print(res)
    print(json.dumps(res, separators=(",", ":")))
    return 0


def native_code(work: Path, fw: Path, nodes: dict) -> dict:
    """The machine code (viper kernels) the modules each configuration held load on each board
    (the board's own build): the unix port maps it outside the gc heap, so `held` does not
    count it; rp2 keeps it in the gc heap, esp32 in IRAM (umeter.mpyfile)."""
    out = {}
    for bf in sorted(unixport.boards_dir().glob("*.json")):
        bdef = json.loads(bf.read_text())
        arch = bdef.get("arch")
        if bdef.get("hal") == "sim" or arch in {b["arch"] for b in out.values()}:
            continue  # one board per architecture
        lib = work / "native" / bf.stem
        build(bf.stem, lib, src=fw)
        per = {}
        for kind, r in nodes.items():
            mods = r.get("modules") or []
            files = [lib / "lib" / (m.replace(".", "/") + ".mpy") for m in mods]
            files += [lib / "lib" / m.replace(".", "/") / "__init__.mpy" for m in mods]
            infos = [mpyfile.read(f) for f in files if f.exists()]
            per[kind] = {"bytes": sum(i.machine_code() for i in infos),
                         "gc_heap": sum(i.gc_heap_bytes() for i in infos)}  # fmt: skip
        out[bf.stem] = {"arch": arch, "in_gc_heap": arch in mpyfile.IN_GC_HEAP, "configs": per}
    return out


def _kb(x) -> float | None:
    return None if x is None else round(x / 1024, 1)


def budget(res: dict) -> dict:
    """The figures the RAM budget is held to (docs/memory.md)."""
    nodes = res["nodes"]
    b: dict = {"word_bytes": res["port"]["word_bytes"]}
    if FROZEN in nodes:
        b["full_frozen_kb"] = _kb(nodes[FROZEN]["+policy"].get("run_held"))
        b["store_cmd_frozen_kb"] = _kb(nodes[FROZEN]["+cmd_key"].get("run_held"))
    else:
        b["full_mpy_kb"] = _kb(nodes["mpy"]["+policy"].get("run_held"))
        b["full_romfs_kb"] = _kb(nodes["romfs"]["+policy"].get("run_held"))
        b["store_cmd_mpy_kb"] = _kb(nodes["mpy"]["+cmd_key"].get("run_held"))
    # per board architecture: the machine code a full node loads, and what of it is in the gc
    # heap (add it to the 32-bit figures for that board)
    b["native_kb"] = {}
    for name, n in res.get("native", {}).items():
        full = n["configs"].get("+policy", {})
        b["native_kb"][name] = {
            "arch": n["arch"],
            "code_kb": _kb(full.get("bytes")),
            "gc_heap_kb": _kb(full.get("gc_heap")),
        }
    b["configs"] = {}
    for load, by_kind in res.get("day", {}).items():
        for kind, r in by_kind.items():
            b["configs"][f"{load}:{kind.lstrip('+')}"] = {
                "heap_kb": _kb(r["heap"] - r.get("image", 0)),  # the budget (the image is flash)
                "held_kb": _kb(nodes[load][kind].get("run_held")),
                "qstrs": nodes[load][kind].get("qstrs"),  # interned names (this script's ~66 among them)
                "lowest_free_kb": _kb(r.get("low_free")),
                "memory_errors": r.get("memory_errors"),
                "sim_s": r.get("sim_s"),
                "uplink_refused": bool(r.get("uplink_refused")),
                **({"memory_error_lines": r["memory_error_lines"]} if "memory_error_lines" in r else {}),
                **({"error": r["error"]} if "error" in r else {}),
            }
    return b


def _f(x) -> str:
    return "-" if x is None else f"{x / 1024:.1f}"


def _print(res: dict) -> None:
    p = res["port"]
    im = res["imports"]
    loads = [load for load in (*LOADS, FROZEN) if load in im]
    what = f"meternode frozen in ({res['frozen']})" if FROZEN in im else f"ROMFS image {_f(res['image_bytes'])} KB"
    opt = f"; build -O{p['opt']}" if p.get("opt") is not None else ""
    print(f"unix port {p['binary']} ({p['arch']}, {p['word_bytes'] * 8}-bit); {what}{opt}")
    print("imports (KB held after gc.collect): alone / marginal")
    print(f"{'subsystem':<13}" + "".join(f"{load:>16}" for load in loads))
    for name, _ in SUBSYSTEMS:
        cells = [f"{_f(im[load][name]['alone'])} / {_f(im[load][name]['marginal'])}" for load in loads]
        print(f"{name:<13}" + "".join(f"{c:>16}" for c in cells))
    print()
    print("nodes booted by main.py, 1 MB heap (KB held: after start-up, after the run; uplink up; qstrs)")
    for kind in CONFIGS:
        for load in loads:
            r = res["nodes"][load][kind]
            if "start_held" not in r:
                print(f"{kind:<13} {load:<6} {r.get('error')}")
                continue
            print(
                f"{kind:<13} {load:<6} {_f(r['start_held']):>8} {_f(r['run_held']):>8} {r['uplink']!s:<5}"
                f" {r.get('qstrs', '-'):>5}"
                + (f"  command: {r['command']}" if "command" in r else "")
                + (f"  {r['error']}" if "error" in r else "")
            )
    if res.get("day"):
        print()
        print("a simulated day in the budgeted heap (held + 32 KB): heap, lowest free, MemoryErrors, sim s, wall s")
        for load, by_kind in res["day"].items():
            for kind, r in by_kind.items():
                print(
                    f"{kind:<13} {load:<6} {_f(r['heap'] - r.get('image', 0)):>7} {_f(r.get('low_free')):>7}"
                    f" {r.get('memory_errors')!s:>3}"
                    f" {r.get('sim_s', '-')!s:>6} {(r.get('wall_ms') or 0) / 1000:>6.0f}"
                    + ("  uplink refused" if r.get("uplink_refused") else "")
                    + (f"  {r['error']}" if "error" in r else "")
                    + (f"  first: {r['memory_error_lines'][0][:100]}" if r.get("memory_error_lines") else "")
                )
    b = res["budget"]
    print()
    print("machine code (viper kernels) a full node loads on a board, not in this port's held figures:")
    for name, n in b.get("native_kb", {}).items():
        where = "in the gc heap: add it to the 32-bit figures" if n["gc_heap_kb"] else "outside the gc heap"
        print(f"  {name} ({n['arch']}): {n['code_kb']} KB, {n['gc_heap_kb']} KB {where}")
    if FROZEN in im:
        print(
            f"budget: full frozen {b['full_frozen_kb']} KB, store+commands frozen {b['store_cmd_frozen_kb']} KB"
            f" ({b['word_bytes'] * 8}-bit)"
        )
        return
    print(
        f"budget: full .mpy {b['full_mpy_kb']} KB, full ROMFS {b['full_romfs_kb']} KB, "
        f"store+commands .mpy {b['store_cmd_mpy_kb']} KB ({b['word_bytes'] * 8}-bit)"
    )


if __name__ == "__main__":
    sys.exit(main())
