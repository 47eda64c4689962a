"""Uplink throughput, side by side in one run on the unix port against the same Mosquitto.

Measured twice: straight to Mosquitto on loopback (round trip ~0: both loops are CPU-bound
on MicroPython and end up equal), and through a loopback proxy that adds `--rtt-ms` of
round-trip time (default 20 ms, a broker across Wi-Fi and the Internet), where waiting for
each PUBACK is what limits the naive loop.  The headline `records_per_s` and
`naive_records_per_s` are the RTT run; `loopback_*` are the direct run.

- outbox: records drained from the record log by the outbox, QoS 1, up to `window` in flight,
  cursor advanced on PUBACK (what the node does);
- naive: the same records published one by one, each waiting for its PUBACK before the next
  (what a blocking publish-and-wait loop does).

Each loop runs twice, interleaved, and the better run counts (the machine is shared).
Also the RAM the link holds (modules + outbox + client, connected), from gc.mem_alloc().
The last line is one JSON object: records_per_s, naive_records_per_s, ratio, heap_bytes,
loopback_records_per_s, loopback_naive_records_per_s, rtt_ms, records, window.

    python benchmarks/uplink.py [--records 1000] [--window 8] [--rtt-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from umeter import unixport
from umeter.broker import Mosquitto
from umeter_hil.netfault import FaultProxy

SCRIPT = r"""
import asyncio, gc, json, sys, time
gc.collect()
base = gc.mem_alloc()
from meternode.link.mqtt import MQTTClient
from meternode.link.outbox import Outbox
from meternode.link.uplink import MqttLink
from meternode.store import records
from meternode.store.log import Cursor
from meternode.store.log import RecordLog

host, port, n, window, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

def fill(path):
    log = RecordLog(path, 16384, 1 << 22)
    for i in range(n):
        log.append(records.PROFILE, 1700000000 + 900 * i,
                   records.profile(900, 1000 * i, 0, (2300, 2290, 2310), (1000, 900, 1100), (2300, 2000, 2500)))
    return log

async def outbox_run(k):
    log = fill(d + "/a%d" % k)
    cur = Cursor(d + "/a%d.cursor" % k, every=64)
    ob = Outbox(log, cur, "bench-a%d" % k, rate=1e9, window=window)
    link = MqttLink("bench-a%d" % k, {"host": host, "port": port, "discovery": False}, outbox=ob, log=lambda s: None)
    t = asyncio.create_task(link.run())
    while not link.up:
        await asyncio.sleep_ms(5)
    gc.collect()
    heap = gc.mem_alloc() - base
    t0 = time.ticks_us()
    while cur.acked < n:
        await asyncio.sleep_ms(1)
    dt = time.ticks_diff(time.ticks_us(), t0)
    t.cancel()
    await link.client.disconnect()
    return n * 1e6 / dt, heap

async def naive_run(k):
    log = fill(d + "/b%d" % k)
    c = MQTTClient("bench-b%d" % k, host, port)
    await c.connect()
    r = log.reader()
    r.seek(1)
    t0 = time.ticks_us()
    while r.next():
        body = json.dumps(records.to_json_dict("bench-b", r.kind, r.seq, r.ts, r.payload[: r.n]))
        await c.publish("umeter/bench-b/profile", body, qos=1)   # wait for each PUBACK
    dt = time.ticks_diff(time.ticks_us(), t0)
    await c.disconnect()
    return n * 1e6 / dt

async def main():
    # interleaved, best of two each: the machine is shared, a single run is noisy
    rps, heap = await outbox_run(0)
    naive = await naive_run(0)
    rps = max(rps, (await outbox_run(1))[0])
    naive = max(naive, await naive_run(1))
    print("RESULT " + json.dumps({"records_per_s": rps, "naive_records_per_s": naive, "heap_bytes": heap}))

asyncio.run(main())
"""


def _run(host: str, port: int, records: int, window: int, d: str) -> dict:
    script = Path(d) / "bench.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    argv_mp = unixport.command(script, host, str(port), str(records), str(window), d, heap="256k")
    p = subprocess.run(argv_mp, capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit("benchmark failed on MicroPython:\n" + p.stdout + p.stderr)
    return json.loads(lines[-1][7:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    a = ap.parse_args(argv)
    with Mosquitto() as broker:
        with tempfile.TemporaryDirectory(prefix="umeter-bench-") as d:
            direct = _run(broker.host, broker.port, a.records, a.window, d)
        with (
            tempfile.TemporaryDirectory(prefix="umeter-bench-") as d,
            FaultProxy(broker.host, broker.port, latency_ms=a.rtt_ms / 2) as px,
        ):
            rtt = _run(px.host, px.port, a.records, a.window, d)
    r = {
        "records_per_s": rtt["records_per_s"],
        "naive_records_per_s": rtt["naive_records_per_s"],
        "ratio": rtt["records_per_s"] / rtt["naive_records_per_s"],
        "heap_bytes": direct["heap_bytes"],
        "loopback_records_per_s": direct["records_per_s"],
        "loopback_naive_records_per_s": direct["naive_records_per_s"],
        "loopback_ratio": direct["records_per_s"] / direct["naive_records_per_s"],
        "rtt_ms": a.rtt_ms,
        "records": a.records,
        "window": a.window,
    }
    print(
        f"loopback: outbox {r['loopback_records_per_s']:.0f} records/s, naive {r['loopback_naive_records_per_s']:.0f}"
        f" records/s (ratio {r['loopback_ratio']:.2f})"
    )
    print(
        f"{a.rtt_ms:g} ms RTT: outbox (QoS 1, window {a.window}) {r['records_per_s']:.0f} records/s, naive"
        f" publish-and-wait {r['naive_records_per_s']:.0f} records/s (ratio {r['ratio']:.2f}); link heap"
        f" {r['heap_bytes']} bytes"
    )
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
