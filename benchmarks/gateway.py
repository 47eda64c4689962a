"""The gateway, measured on the MicroPython unix port, side by side in one run.

1. Frames decoded per second per protocol: our codecs (scanner + allocation-free value
   decoding into preallocated Readings) against a plain-Python reference decoder written
   here the obvious way (slices, bytes(), int(hex), a dict per frame), on the same frames
   (DL/T 645 read answer, CJ/T 188 901F answer, M-Bus RSP_UD of a heat meter, Modbus RTU
   PZEM answer).  Each is timed twice, interleaved; the better run counts.
2. Heap held by the gateway with 1 meter, 8 DL/T 645 meters, 8 meters of 4 protocols and
   16 meters (4 protocols, 2 buses), from gc.mem_alloc() before and after GatewayService()
   on a node that has its record log, loaded from source and from .mpy; the part of it
   that is new interned names (the qstr pool, shared by everything loaded later) is shown
   apart.  And the free heap the gateway NEEDS (what node.py's _GATEWAY_NEED gate is
   set from): a whole node (MQTT to a local Mosquitto, store-and-forward, the sim front end)
   with ballast that leaves F bytes free where node.py checks, started with the gate off;
   F is bisected to the lowest at which the gateway starts and every meter is read within
   the run with no MemoryError.
3. Polling cycle for the 8 meters at 2400 baud on the simulated buses (whose answers are
   paced like a UART): one cycle per bus, both buses at once as on a node, against the
   bus's theoretical minimum = sum of every request's and answer's line time (11 bits a
   character) + the turnaround gap before each request; the meters' own latency (5 ms in
   the simulation) is part of the measured time, not of the minimum.

The port is the one the toolchain runs (UMETER_MICROPYTHON selects e.g. the 32-bit build);
the .mpy files are compiled for it (x64 or x86).  The last line is one JSON object.

    python benchmarks/gateway.py [--frames 2000] [--need 1,8] [--need-run 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from umeter import unixport
from umeter_hil.bussim import CJT188Meter, DLT645Meter, MBusMeter, ModbusMeter, SimBus, demo_config, demo_meters

DECODE = r"""
import gc, sys, time
from meternode.gateway import cjt188, dlt645, mbus, modbus
from meternode.gateway import reading as R

frames = {}
for name, hexs in DATA.items():
    frames[name] = bytes(int(hexs[i:i + 2], 16) for i in range(0, len(hexs), 2))
N = int(sys.argv[1])
r = R.Readings()

def ours_645(f):
    sc = SC645
    sc.reset(); sc.feed(f); n = sc.next(); r.clear()
    dlt645.values(sc.buf, sc.start, r)
    return r.n

def ours_188(f):
    sc = SC188
    sc.reset(); sc.feed(f); sc.next(); r.clear()
    cjt188.values(sc.buf, sc.start, r)
    return r.n

def ours_mbus(f):
    sc = SCMB
    sc.reset(); sc.feed(f); sc.next(); r.clear()
    mbus.values(sc.buf, sc.start, r)
    return r.n

def ours_modbus(f):
    c = COL
    c.reset(); c.feed(f); c.next(); r.clear()
    MAP.decode(0, c.buf, 3, r)
    return r.n

SC645 = dlt645.scanner(); SC188 = cjt188.scanner(); SCMB = mbus.MBusScanner(); COL = modbus.Collector()
MAP = modbus.RegisterMap("pzem004t")

# -- the plain-Python reference: what one writes first -----------------------------------
def _bcd(b):
    s = "".join("%02x" % x for x in reversed(b))
    return int(s)

def ref_645(f):
    i = f.index(0x68)
    f = f[i:]
    L = f[9]
    if sum(f[:10 + L]) % 256 != f[10 + L] or f[11 + L] != 0x16:
        raise ValueError("checksum")
    data = bytes((x - 0x33) % 256 for x in f[10:10 + L])
    di = int.from_bytes(data[:4], "little")
    return {"di": di, "value": _bcd(data[4:8]) / 100}

def ref_188(f):
    i = f.index(0x68)
    f = f[i:]
    L = f[10]
    if sum(f[:11 + L]) % 256 != f[11 + L]:
        raise ValueError("checksum")
    d = f[11:11 + L]
    return {"volume": _bcd(d[3:7]) / 100, "settle": _bcd(d[8:12]) / 100, "st": d[20]}

def ref_mbus(f):
    L = f[1]
    if sum(f[4:4 + L]) % 256 != f[4 + L]:
        raise ValueError("checksum")
    d = f[19:4 + L]
    out = []
    k = 0
    while k < len(d):
        dif = d[k]; vif = d[k + 1]
        n = {0x4: 4, 0x2: 2, 0x3: 3, 0x1: 1, 0xC: 4, 0xB: 3, 0xA: 2, 0x9: 1, 0xE: 6}.get(dif & 0xF, 0)
        raw = d[k + 2:k + 2 + n]
        v = _bcd(raw) if dif & 0xF >= 9 else int.from_bytes(raw, "little")
        out.append({"dif": dif, "vif": vif, "value": v})
        k += 2 + n
    return out

def ref_crc(b):
    c = 0xFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return c

def ref_modbus(f):
    if ref_crc(f[:-2]) != f[-2] | (f[-1] << 8):
        raise ValueError("crc")
    regs = [int.from_bytes(f[3 + 2 * i:5 + 2 * i], "big") for i in range(f[2] // 2)]
    return {"v": regs[0] / 10, "i": (regs[2] << 16 | regs[1]) / 1000, "p": (regs[4] << 16 | regs[3]) / 10,
            "e": regs[6] << 16 | regs[5], "f": regs[7] / 10, "pf": regs[8] / 100}

def rate(fn, f):
    fn(f)
    gc.collect()
    t0 = time.ticks_us()
    for _ in range(N):
        fn(f)
    return N * 1000000 / time.ticks_diff(time.ticks_us(), t0)

res = {}
for name in ("645", "188", "mbus", "modbus"):
    f = frames[name]
    o = globals()["ours_" + name]; p = globals()["ref_" + name]
    best_o = best_r = 0
    for _ in range(2):
        best_o = max(best_o, rate(o, f))
        best_r = max(best_r, rate(p, f))
    res[name] = [round(best_o), round(best_r)]
print("RESULT " + repr(res).replace("'", '"'))
"""

HEAP = r"""
import gc, json, sys, micropython
gc.collect()
from meternode.node import Node
b = json.load(open("board.json")); c = json.load(open(sys.argv[1]))
n = Node(b, c)
n.uplink()
gc.collect(); gc.collect()
print("QSTR0"); micropython.qstr_info()
before = gc.mem_alloc()
from meternode.gateway.service import GatewayService
g = GatewayService(n, lambda m: None)
gc.collect(); gc.collect()
after = gc.mem_alloc()
print("QSTR1"); micropython.qstr_info()
print("RESULT " + json.dumps({"heap": after - before, "meters": sum(len(p.meters) for p in g.pollers)}))
"""

# A whole node whose gate is off, with ballast leaving argv[2] bytes free after the record
# log is up; it runs argv[3] seconds and says whether every meter was read.
NEED = r"""
import asyncio, gc, json, sys
from meternode import node as N
from meternode import nodegw
nodegw.need = lambda config: 0  # no gate: Node._gateway() uses this module object (imported once)
b = json.load(open("board.json")); c = json.load(open(sys.argv[1]))
target = int(sys.argv[2])
n = N.Node(b, c)
n.uplink()
ballast = []
gc.collect()
while True:
    extra = gc.mem_free() - target
    if extra < 96:
        break
    ballast.append(bytearray(4096 if extra > 8192 else 1024 if extra > 2048 else 48))
    gc.collect()

async def main():
    t = asyncio.create_task(n.run())
    await asyncio.sleep_ms(int(float(sys.argv[3]) * 1000))
    ballast.clear()  # room to say how it went
    gc.collect()
    g = getattr(n, "gateway", None)
    if int(sys.argv[4]) == 0:  # the node alone, the baseline
        print("RESULT " + json.dumps({"ok": not t.done(), "why": "" if not t.done() else "node stopped"}))
        return
    if g is None or t.done():
        print("RESULT " + json.dumps({"ok": False, "why": "not started"}))
        return
    ms = [m for p in g.pollers for m in p.meters]
    bad = [m.id + ": " + m.last_error for m in ms if not m.good or "MemoryError" in m.last_error]
    print("RESULT " + json.dumps({"ok": not bad and len(ms) == int(sys.argv[4]), "why": "; ".join(bad)}))

try:
    asyncio.run(main())
except MemoryError:
    ballast.clear()
    gc.collect()
    print('RESULT {"ok": false, "why": "MemoryError"}')
"""

CYCLE = r"""
import asyncio, gc, json, sys
from meternode.hal import bus as hbus
from meternode.gateway import drivers, poller
cfg = json.load(open("gateway.json"))

class Sink:
    def __init__(self): self.n = 0
    def reading(self, m, r): self.n += 1
    def silent(self, m, w): print("silent", m.id, w)
    def back(self, m): pass
    def note(self, i, t): pass

async def main():
    ps = []
    for name in ("rs485", "mbus"):
        spec = {"sim": True, "port": cfg["buses"][name]["port"]}
        if name == "mbus":
            spec["profile"] = "mbus"
        b = hbus.make(name, hbus.check(name, spec))
        ms = [poller.Meter(drivers.make(m, "m"), 60000, i) for i, m in enumerate(cfg["meters"]) if m["bus"] == name]
        ps.append(poller.Poller(b, ms, Sink(), 500, 0))
    for p in ps:  # first contact (M-Bus link reset) outside the measurement
        await p.cycle()
    import time
    print("READY")
    await asyncio.sleep_ms(1500)  # the host notes the line counters now
    t0 = time.ticks_ms()
    ms = await asyncio.gather(*[p.cycle() for p in ps])
    both = time.ticks_diff(time.ticks_ms(), t0)
    print("RESULT " + json.dumps({"per_bus_ms": ms, "both_ms": both, "good": [p.meters[0].good for p in ps],
                                  "turnaround_ms": [p.bus.turnaround_ms for p in ps],
                                  "requests": [p.bus.sent for p in ps]}))

asyncio.run(main())
"""


def _frames() -> dict[str, str]:
    buf = bytearray(300)
    m = DLT645Meter("000000123456")
    from meternode.gateway import cjt188, dlt645, modbus

    n = dlt645.read_request(buf, "000000123456", 0x00010000)
    f645 = m.answer(bytes(buf[:n]))
    n = cjt188.read_request(buf, 0x10, "00000000001234", 1)
    f188 = CJT188Meter(0x10, "00000000001234").answer(bytes(buf[:n]))
    fmb = MBusMeter(5, "12345678").rsp_ud(5)
    n = modbus.read_request(buf, 7, 4, 0, 9)
    fmod = ModbusMeter(7).answer(bytes(buf[:n]))
    return {"645": f645.hex(), "188": f188.hex(), "mbus": fmb.hex(), "modbus": fmod.hex()}


def _run(script: str, cwd: Path, *args: str, heap: str = "512k", on_ready=None, path: str | None = None,
         raw: bool = False):
    p = cwd / "bench.py"
    p.write_text(script)
    env = dict(os.environ, MICROPYPATH=path or unixport.micropypath())
    proc = subprocess.Popen(unixport.command(p, *args, heap=heap), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY") and on_ready is not None:
            on_ready()
        if line.startswith("RESULT "):
            proc.wait(60)
            return (json.loads(line[7:]), "".join(lines)) if raw else json.loads(line[7:])
    proc.wait(60)
    raise SystemExit("benchmark script failed:\n" + "".join(lines))


# -- heap -------------------------------------------------------------------------------------
CONFIGS = {  # name -> which of the demo meters (indices into demo_config's list), or 16 = all twice
    "1": [0],
    "8x645": "8x645",
    "8": list(range(8)),
    "16": "16",
    # what each `umeter sim --bus` node reads (umeter.simbus.node_meters): a DL/T 645-2007
    # meter, a CJ/T 188 water and a gas meter, a PZEM-004T on Modbus, an M-Bus heat meter
    "sim": [0, 2, 3, 4, 6],
}
NONE = "none"  # --need none: the same node without a gateway (what it needs itself at that point)


def _meters(kind, demo: list[dict]) -> list[dict]:
    if kind == "8x645":
        return [dict(demo[0], address=f"0000001234{i:02d}") for i in range(8)]
    if kind == "16":
        twin = []
        for m in demo:
            m = dict(m)
            if "address" in m:
                m["address"] = m["address"][:-2] + "99"
            elif "unit" in m:
                m["unit"] += 20
            elif "primary" in m:
                m["primary"] += 20
            else:
                m["secondary"] = "11111111"
            twin.append(m)
        return demo + twin
    return [demo[i] for i in kind]


def _node_config(tmp: Path, name: str, gateway: dict, mqtt_port: int | None) -> Path:
    cfg = {"node_id": "bench", "store": {"path": str(tmp / f"store-{name}")},
           "checkpoint": {"dir": ""}, "telemetry_s": 1.0, "sim": {"realtime": True}}
    if gateway is not None:
        cfg["gateway"] = gateway
    if mqtt_port:
        cfg["mqtt"] = {"host": "127.0.0.1", "port": mqtt_port, "keepalive": 30}
    path = tmp / f"config-{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _word_bits(tmp: Path) -> int:
    r = _run('import sys\nprint("RESULT", 64 if sys.maxsize > 2**31 else 32)\n', tmp)
    return int(r)


def _build_mpy(out: Path, arch: str) -> Path:
    from umeter import build

    src = build.firmware_dir()
    for py in build._sources(src):
        rel = py.relative_to(src).as_posix()
        build.compile_one(py, rel, out / Path(rel).with_suffix(".mpy"), arch)
    return out


def _held(tmp: Path, cfg: Path, path: str) -> dict:
    r, out = _run(HEAP, tmp, str(cfg), heap="1m", path=path, raw=True)
    q = [int(x) for x in re.findall(r"n_total_bytes=(\d+)", out)]
    r["qstr"] = q[1] - q[0]
    return r


def _need(tmp: Path, cfg: Path, path: str, meters: int, run_s: float, lo: int = 0, hi: int = 192 * 1024,
          step: int = 2048) -> dict:
    """The lowest free heap (KB resolution `step`) at node.py's gate with which the gateway
    starts and reads every meter in `run_s` s; the free heap the node logged at its gate."""
    trials = []

    def ok(free: int) -> bool:
        r, out = _run(NEED, tmp, str(cfg), str(free), str(run_s), str(meters), heap="1m", path=path, raw=True)
        m = re.search(r"gateway on: (\d+) bytes free before", out)
        good = r["ok"] and "MemoryError" not in out
        trials.append({"target": free, "at_gate": int(m.group(1)) if m else None, "ok": good,
                       "why": r.get("why") or ("MemoryError" if "MemoryError" in out else "")})
        return good

    if not ok(hi):
        return {"need": None, "trials": trials}
    while hi - lo > step:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    at_gate = [t["at_gate"] for t in trials if t["ok"] and t["target"] == hi]  # None: no gate (no gateway)
    return {"need": at_gate[0] if at_gate and at_gate[0] else hi, "trials": trials}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000, help="frames decoded per protocol per run")
    ap.add_argument("--need", default="none,1,8",
                    help="configurations whose needed free heap is bisected: none (the node alone), 1, 8x645, 8, 16, "
                         "sim (the meters of a `umeter sim --bus` node)")
    ap.add_argument("--need-run", type=float, default=10.0, help="seconds each bisection trial runs the node")
    a = ap.parse_args()
    from umeter.broker import Mosquitto

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bits = _word_bits(tmp)
        print(f"unix port: {unixport.micropython_path()} ({bits}-bit)")
        dec = _run("DATA = " + json.dumps(_frames()) + "\n" + DECODE, tmp, str(a.frames))
        print("frames decoded per second on the unix port (ours vs a plain-Python reference decoder):")
        for name, (ours, ref) in dec.items():
            print(f"  {name:<7} {ours:>8}/s  reference {ref:>8}/s  ratio {ours / ref:5.2f}x")
        (tmp / "board.json").write_text((unixport.boards_dir() / "sim.json").read_text())
        mpy = _build_mpy(tmp / "mpy", "x64" if bits == 64 else "x86")
        loads = {"source": unixport.micropypath(), "mpy": f"{mpy}:.frozen"}
        held: dict = {}
        need: dict = {}
        rs485, mb = demo_meters()
        with SimBus(rs485) as b1, SimBus(mb) as b2, Mosquitto() as broker:
            cfg = demo_config(b1.port, b2.port, 60.0)
            for m in _meters("8x645", cfg["meters"]):  # their meters, on the RS-485 line too
                b1.add(DLT645Meter(m["address"]))
            print(f"heap held by the gateway ({bits}-bit unix port; bytes, of which new interned names):")
            for name, kind in CONFIGS.items():
                gw = dict(cfg, meters=_meters(kind, cfg["meters"]))
                path = _node_config(tmp, name, gw, None)
                row = {}
                for load, mp in loads.items():
                    r = _held(tmp, path, mp)
                    row[load] = {"bytes": r["heap"], "qstr": r["qstr"]}
                held[name] = dict(row, meters=r["meters"])
                print(f"  {name:>5} meters: source {row['source']['bytes']:>7} ({row['source']['qstr']:>5} names)"
                      f"   .mpy {row['mpy']['bytes']:>7} ({row['mpy']['qstr']:>5} names)")
            for name in [x for x in a.need.split(",") if x]:
                if name == NONE:
                    gw = None
                else:
                    gw = dict(cfg, meters=[dict(m, interval_s=2.0) for m in _meters(CONFIGS[name], cfg["meters"])])
                path = _node_config(tmp, "need" + name, gw, broker.port)
                need[name] = {}
                # eight DL/T 645 meters of 7 registers each take ~12 s a round at 2400 baud
                run_s = a.need_run * (2 if name == "8x645" else 1)
                for load, mp in loads.items():
                    r = _need(tmp, path, mp, len(gw["meters"]) if gw else 0, run_s)
                    need[name][load] = r["need"]
                    fails = [t for t in r["trials"] if not t["ok"]]
                    worst = max(fails, key=lambda t: t["target"]) if fails else None
                    why = f"; at {worst['target']}: {worst['why'][:60]}" if worst else ""
                    print(f"  free heap needed at the gateway's gate, {name} meters, {load}: {r['need']} bytes "
                          f"({len(r['trials'])} runs{why})")
        rs485, mb = demo_meters()
        with SimBus(rs485) as b1, SimBus(mb) as b2:
            cfg = demo_config(b1.port, b2.port, 60.0)
            (tmp / "gateway.json").write_text(json.dumps(cfg))
            snap: list = []

            def on_ready() -> None:
                snap.extend([[len(b.requests), sum(len(x) for x in b.requests), b.answer_bytes] for b in (b1, b2)])

            cyc = _run(CYCLE, tmp, on_ready=on_ready)
            r0 = [x[0] for x in snap]
            q0 = [x[1] for x in snap]
            a0 = [x[2] for x in snap]
            char_ms = 11 * 1000 / 2400
            mins = []
            for k, b in enumerate((b1, b2)):
                # the measured cycle is the second one: its requests/answers are those after the first
                nreq = len(b.requests) - r0[k]
                req = sum(len(x) for x in b.requests) - q0[k]
                ans = b.answer_bytes - a0[k]
                mins.append((req + ans) * char_ms + nreq * cyc["turnaround_ms"][k])
            both_min = max(mins)
            print(
                "polling cycle for 8 meters at 2400 baud on the simulated buses: "
                f"rs485 {cyc['per_bus_ms'][0]} ms (minimum {mins[0]:.0f} ms), "
                f"mbus {cyc['per_bus_ms'][1]} ms (minimum {mins[1]:.0f} ms); both buses at once {cyc['both_ms']} ms "
                f"vs {both_min:.0f} ms theoretical ({cyc['both_ms'] / both_min:.2f}x)"
            )
    out = {
        "port_bits": bits,
        "decode_per_s": {k: v[0] for k, v in dec.items()},
        "reference_per_s": {k: v[1] for k, v in dec.items()},
        "decode_ratio": {k: round(v[0] / v[1], 2) for k, v in dec.items()},
        "gateway_heap_bytes": held["8"]["source"]["bytes"],
        "meters": held["8"]["meters"],
        "heap_held": held,
        "heap_needed_free": need,
        "cycle_ms": cyc["both_ms"],
        "cycle_min_ms": round(both_min),
        "cycle_ratio": round(cyc["both_ms"] / both_min, 2),
        "per_bus_ms": cyc["per_bus_ms"],
        "per_bus_min_ms": [round(x) for x in mins],
        "baud": 2400,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
