"""Heap cost of the firmware on the MicroPython unix port, loaded from source vs the x64 .mpy build.

Two measurements, side by side in one run, each in fresh `micropython` processes with a 1 MB
heap (so nothing is refused) and `gc.mem_alloc()` read after `gc.collect()`:

- imports: the heap one subsystem's modules hold once imported. `alone` is a fresh process
  importing only that subsystem (its own dependencies included); `marginal` is what it adds
  when imported after the ones above it in the table (the order a node loads them).
- nodes: a whole virtual node (meternode.node.Node + run(), boards/sim.json, the sim HAL in
  real time) in four configurations: plain (metering only, no MQTT), +store (store-and-forward
  to a local Mosquitto), +cmd_key (authenticated commands), +policy (the demo policy too).
  Read after start-up (`--settle` s) and after `--run` s more; `held` is mem_alloc above the
  interpreter's own baseline, i.e. everything the node keeps.

The numbers are for the 64-bit port: objects are machine words, see docs/memory.md for the
32-bit estimate. The last line is one JSON object.

    python benchmarks/memory.py [--settle 3] [--run 30] [--heap-check 160k,176k,192k,208k]

`--heap-check` also runs the +cmd_key node (store-and-forward and commands) at each of these
smaller heaps from the .mpy build and from source and reports whether the uplink started and
the free heap after start-up and after `--run` s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from umeter import unixport
from umeter.broker import Mosquitto

SUBSYSTEMS = (
    ("metrology", ("meternode.config", "meternode.hal", "meternode.hal.sim", "meternode.metrology.meter")),
    ("node", ("meternode.node",)),
    ("store", ("meternode.store.records", "meternode.store.log", "meternode.store.cursor",
               "meternode.store.profile", "meternode.store.checkpoint")),
    ("uplink", ("meternode.link.mqttpkt", "meternode.link.mqtt", "meternode.link.backoff",
                "meternode.link.uplink", "meternode.link.outbox", "meternode.link.service")),
    ("commands", ("meternode.link.commands", "meternode.link.actions")),
    ("policy", ("meternode.policy.service",)),
    ("lora", ("meternode.link.loraservice", "meternode.link.airtime", "meternode.link.loralink",
              "meternode.link.lorawan")),
)  # fmt: skip

# The groups are read from a file: the unix port dies ("FATAL: uncaught NLR") on an argument
# longer than ~256 characters.
IMPORT_SCRIPT = r"""
import gc, sys
gc.collect()
a = gc.mem_alloc()
out = []
with open(sys.argv[1]) as f:
    groups = f.read().split(";")
for i in sys.argv[2].split(","):
    for name in groups[int(i)].split(","):
        __import__(name)
        gc.collect()
    b = gc.mem_alloc()
    out.append(b - a)
    a = b
print("RESULT " + " ".join(str(x) for x in out))
"""

NODE_SCRIPT = r"""
import gc, sys
gc.collect()
base = gc.mem_alloc()
import asyncio, json, os
root, settle, run_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.chdir(root)
from meternode import node
from meternode.config import load_json

def sample(tag, n):
    gc.collect()
    u = n.uplink_service
    print("RESULT %s %d %d %d %d" % (tag, gc.mem_alloc() - base, gc.mem_free(), base,
                                     1 if (u is not None and u.link is not None and u.link.up) else 0))

async def main():
    n = node.Node(load_json("board.json"), load_json("config.json"))
    t = asyncio.create_task(n.run())
    await asyncio.sleep_ms(settle * 1000)
    sample("start", n)
    lo = gc.mem_free()
    for _ in range(run_s):
        await asyncio.sleep_ms(1000)
        gc.collect()
        lo = min(lo, gc.mem_free())
    sample("run", n)
    print("RESULT low %d" % lo)
    if t.done():
        print("RESULT dead")

asyncio.run(main())
"""

CONFIGS = ("plain", "+store", "+cmd_key", "+policy")
KEY = "5a" * 16


def _mp(script: Path, args: list[str], path: str, heap: str, timeout: float) -> list[str]:
    env = dict(os.environ, MICROPYPATH=path)
    argv = unixport.command(script, *args, heap=heap)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln[7:] for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit("benchmark step failed on MicroPython:\n" + p.stdout[-3000:] + p.stderr[-3000:])
    return lines


def imports(work: Path, path: str) -> dict:
    script = work / "imports.py"
    script.write_text(IMPORT_SCRIPT)
    gfile = work / "groups.txt"
    gfile.write_text(";".join(",".join(mods) for _, mods in SUBSYSTEMS))
    idx = [str(i) for i in range(len(SUBSYSTEMS))]
    marginal = [int(x) for x in _mp(script, [str(gfile), ",".join(idx)], path, "1m", 120)[0].split()]
    alone = [int(_mp(script, [str(gfile), i], path, "1m", 120)[0]) for i in idx]
    return {name: {"alone": a, "marginal": m} for (name, _), a, m in zip(SUBSYSTEMS, alone, marginal, strict=True)}


def node_config(node_id: str, kind: str, host: str, port: int, policy: dict) -> dict:
    c = {"node_id": node_id, "telemetry_s": 2.0, "profile_s": 60, "sim": {"realtime": True, "seed": 1}}
    if kind != "plain":
        c["mqtt"] = {"host": host, "port": port, "prefix": "umeter", "keepalive": 30}
    if kind in ("+cmd_key", "+policy"):
        c["cmd_key"] = KEY
    if kind == "+policy":
        c["policy"] = policy
    return c


def run_node(work: Path, tag: str, config: dict, path: str, heap: str, settle: int, run_s: int) -> dict:
    root = work / tag
    root.mkdir(parents=True, exist_ok=True)
    (root / "board.json").write_text((unixport.boards_dir() / "sim.json").read_text())
    (root / "config.json").write_text(json.dumps(config))
    script = work / "node.py"
    if not script.exists():
        script.write_text(NODE_SCRIPT)
    r: dict = {"uplink": None}
    try:
        lines = _mp(script, [str(root), str(settle), str(run_s)], path, heap, settle + run_s + 60)
    except SystemExit as e:
        return {"error": str(e).splitlines()[-1][:200]}
    for ln in lines:
        f = ln.split()
        if f[0] in ("start", "run"):
            r[f[0] + "_held"], r[f[0] + "_free"] = int(f[1]), int(f[2])
            r["uplink"] = bool(int(f[4])) if "mqtt" in config else None
        elif f[0] == "low":
            r["low_free"] = int(f[1])
        elif f[0] == "dead":
            r["error"] = "a node task ended"
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=int, default=3, help="seconds from start to the start-up reading")
    ap.add_argument("--run", type=int, default=30, help="seconds running after that")
    ap.add_argument(
        "--heap-check", default="160k,176k,192k,208k", help="smaller heaps to try the +cmd_key node at ('' = none)"
    )
    a = ap.parse_args(argv)
    from umeter.policy import load_any

    policy = load_any(Path(unixport.__file__).parent / "examples" / "demo_policy.toml")
    with tempfile.TemporaryDirectory(prefix="umeter-mem-") as d, Mosquitto() as broker:
        work = Path(d)
        b = subprocess.run(
            [sys.executable, "-m", "umeter", "build", "--board", "sim", "-o", str(work / "build")],
            capture_output=True,
            text=True,
        )
        if b.returncode:
            raise SystemExit("umeter build failed:\n" + b.stdout + b.stderr)
        paths = {"source": unixport.micropypath(), "mpy": str(work / "build" / "lib") + ":.frozen"}
        res: dict = {"imports": {k: imports(work, p) for k, p in paths.items()}, "nodes": {}, "heap_check": {}}
        jobs = []
        for load, p in paths.items():
            for kind in CONFIGS:
                cfg = node_config(f"mem-{load}-{kind.strip('+')}", kind, broker.host, broker.port, policy)
                jobs.append((("nodes", load, kind), (work, f"{load}{kind}", cfg, p, "1m", a.settle, a.run)))
            for heap in filter(None, a.heap_check.split(",")):
                cfg = node_config(f"mem-{load}-{heap}", "+cmd_key", broker.host, broker.port, policy)
                jobs.append((("heap_check", load, heap), (work, f"{load}-{heap}", cfg, p, heap, a.settle, a.run)))
        # the nodes mostly sleep (real-time sim); a few at once keep the run short on 2 cores
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda j: run_node(*j[1]), jobs))
        for key, out in zip(jobs, outs, strict=True):
            res[key[0][0]].setdefault(key[0][1], {})[key[0][2]] = out
    _print(res)
    print(json.dumps(res, separators=(",", ":")))
    return 0


def _kb(x) -> str:
    return "-" if x is None else f"{x / 1024:.1f}"


def _print(res: dict) -> None:
    im = res["imports"]
    print("imports (KB held after gc.collect, 64-bit unix port)")
    print(f"{'subsystem':<10} {'src alone':>9} {'src marg':>9} {'mpy alone':>9} {'mpy marg':>9}")
    for name, _ in SUBSYSTEMS:
        s, m = im["source"][name], im["mpy"][name]
        cells = (_kb(s["alone"]), _kb(s["marginal"]), _kb(m["alone"]), _kb(m["marginal"]))
        print(f"{name:<10} " + " ".join(f"{c:>9}" for c in cells))
    print()
    print("nodes, 1 MB heap (KB held above the interpreter: after start-up, after the run; uplink up)")
    print(f"{'config':<10} {'load':<6} {'start':>8} {'run':>8} uplink")
    for kind in CONFIGS:
        for load in ("source", "mpy"):
            r = res["nodes"][load][kind]
            if "start_held" not in r:
                print(f"{kind:<10} {load:<6} {r.get('error')}")
                continue
            print(f"{kind:<10} {load:<6} {_kb(r['start_held']):>8} {_kb(r['run_held']):>8} {r['uplink']}")
    if res["heap_check"]:
        print()
        print("+cmd_key node at smaller heaps (KB free after gc.collect: start-up, after the run, lowest; uplink up)")
        for load, by_heap in res["heap_check"].items():
            for heap, r in by_heap.items():
                if "start_free" not in r:
                    print(f"{load:<6} {heap:<5} {r.get('error')}")
                    continue
                err = "  " + r["error"] if "error" in r else ""
                print(
                    f"{load:<6} {heap:<5} {_kb(r['start_free']):>8} {_kb(r['run_free']):>8}"
                    f" {_kb(r.get('low_free')):>8} {r['uplink']}{err}"
                )


if __name__ == "__main__":
    sys.exit(main())
