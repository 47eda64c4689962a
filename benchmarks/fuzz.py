"""Fuzzing every parser that takes bytes from outside, with a large budget.

The firmware's parsers (MQTT packets from the broker, LoRa modem bytes, command envelopes,
policy bundles, OTA messages and chunks, LoRa downlinks and LoRa-sized policy frames, LoRa
uplink frames, what is stored on flash) each run in their own MicroPython unix-port process at the sim board's heap
(`$UMETER_MICROPYTHON` picks another port, e.g. a 32-bit one); the host's `umeter decode`
inputs and what the host consumer takes from the broker run on CPython. The cases come from
tests/firmware/fuzzing.py (the normal suite runs the same targets with a small budget:
tests/firmware/test_fuzz.py and tests/host/test_fuzz_host.py).

    python benchmarks/fuzz.py [--cases 15000] [--seed 1] [--only mqtt_packets,...] [--cpython]

`--cpython` also runs the firmware parsers on CPython (the host reuses them). Per parser: the
cases, the exceptions it does not document (`uncaught`, with the first inputs that raised
them) and how far the heap rose over the run after a warm-up. The last line is one JSON
object: {"cases": {parser: n}, "total_cases", "uncaught", "max_heap_growth_bytes", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FW_TESTS = ROOT / "tests" / "firmware"
sys.path[:0] = [str(ROOT / "host"), str(ROOT / "firmware"), str(FW_TESTS)]

from umeter import unixport  # noqa: E402

FIRMWARE = (
    "mqtt_packets",
    "modem_lines",
    "command_envelopes",
    "policy_bundles",
    "ota_messages",
    "small_frames",
    "lora_frames",
    "stored_records",
)
HOST = ("decode_inputs", "consumer_payloads")
# Share of --cases per parser: a stored-records case writes, opens, scans and appends to a
# log on the filesystem (~10 ms on the unix port), the others take well under a millisecond.
SHARE = {"stored_records": 1 / 3, "consumer_payloads": 1 / 3}  # the consumer commits each to SQLite
# Two targets are other branches' code, fuzzed here through what they expose: the LoRa
# modem's byte reader (boards: LoRaModem.feed in link/lorawan.py) and the host consumer
# (ingest: Consumer.ingest in umeter/consumer.py and validate.py).

_RUNNER = """
import sys, json, asyncio
import fuzzing
r = asyncio.run(fuzzing.run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
print("FUZZ " + json.dumps(r))
"""


def _board_heap() -> str:
    return json.loads((unixport.boards_dir() / "sim.json").read_text()).get("heap", unixport.DEFAULT_HEAP)


def run_unixport(name: str, n: int, seed: int, heap: str, scratch: str, runner: Path) -> dict:
    env = dict(os.environ, MICROPYPATH=unixport.micropypath(FW_TESTS))
    t = time.monotonic()
    p = subprocess.run(
        unixport.command(runner, name, str(n), str(seed), scratch, heap=heap),
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    line = next((x for x in p.stdout.splitlines() if x.startswith("FUZZ ")), None)
    if line is None:  # the interpreter itself died: that is an uncaught failure too
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        return {"parser": name, "cases": 0, "uncaught": 1, "examples": [{"error": " | ".join(tail)}],
                "heap_growth_bytes": 0, "outcomes": {}, "seconds": time.monotonic() - t}  # fmt: skip
    r = json.loads(line[5:])
    r["seconds"] = time.monotonic() - t
    return r


def run_cpython(name: str, n: int, seed: int, scratch: str) -> dict:
    import tracemalloc

    import fuzzing

    tracemalloc.start()
    t = time.monotonic()
    try:
        r = asyncio.run(fuzzing.run(name, n, seed, scratch, warmup=1000))
    finally:
        tracemalloc.stop()
    r["seconds"] = time.monotonic() - t
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cases", type=int, default=15000, help="cases per parser after the warm-up [15000; stored records a third]"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--heap", default=None, help="unix-port heap [the sim board's]")
    ap.add_argument("--only", default="", help="comma-separated parser names")
    ap.add_argument("--cpython", action="store_true", help="also run the firmware parsers on CPython")
    a = ap.parse_args(argv)
    only = {x for x in a.only.split(",") if x}
    heap = a.heap or _board_heap()
    results: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="umeter-fuzz-") as tmp:
        runner = Path(tmp) / "fuzzrun.py"
        runner.write_text(_RUNNER)
        for name in FIRMWARE:
            if only and name not in only:
                continue
            n = int(a.cases * SHARE.get(name, 1))
            r = run_unixport(name, n, a.seed, heap, tmp, runner)
            results.append((name, f"unix port, {heap} heap", r))
            _line(name, results[-1][1], r)
            if a.cpython:
                r = run_cpython(name, n, a.seed, tmp)
                results.append(("cpython/" + name, "CPython", r))
                _line("cpython/" + name, "CPython", r)
        for name in HOST:
            if only and name not in only:
                continue
            r = run_cpython(name, int(a.cases * SHARE.get(name, 1)), a.seed, tmp)
            results.append((name, "CPython", r))
            _line(name, "CPython", r)
    summary = {
        "cases": {k: r["cases"] for k, _, r in results},
        "total_cases": sum(r["cases"] for _, _, r in results),
        "uncaught": sum(r["uncaught"] for _, _, r in results),
        "max_heap_growth_bytes": max((r["heap_growth_bytes"] for _, w, r in results if w != "CPython"), default=0),
        "max_heap_growth_bytes_cpython": max(
            (r["heap_growth_bytes"] for _, w, r in results if w == "CPython"), default=0
        ),
        "heap_growth_bytes": {k: r["heap_growth_bytes"] for k, _, r in results},
        "uncaught_examples": {k: r["examples"] for k, _, r in results if r["examples"]},
        "micropython": unixport.micropython_path(),
        "heap": heap,
        "seed": a.seed,
        "seconds": round(sum(r["seconds"] for _, _, r in results), 1),
    }
    print(
        f"{summary['total_cases']} cases over {len(results)} parsers, {summary['uncaught']} uncaught, "
        f"heap rose at most {summary['max_heap_growth_bytes']} B on the unix port."
    )
    print(json.dumps(summary))
    return 1 if summary["uncaught"] else 0


def _line(name: str, where: str, r: dict) -> None:
    top = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items(), key=lambda kv: -kv[1])[:4])
    print(
        f"{name:28s} {r['cases']:7d} cases {r['uncaught']:4d} uncaught  heap +{r['heap_growth_bytes']:6d} B  "
        f"{r['seconds']:6.1f} s  ({where}; {top})",
        flush=True,
    )
    for e in r["examples"]:
        print(f"    uncaught: {e.get('error')}  input {e.get('input', '')[:80]}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
