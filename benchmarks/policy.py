"""Signature checks and fleet campaigns, measured side by side in one run.

1. Ed25519 verification of an RFC 8032 vector: the firmware's pure-Python code on the
   MicroPython unix port, the same code on CPython, and the `cryptography` package (C) on
   CPython — ms per verification (best of 5 rounds: a shared machine only adds time) and the
   ratios; plus a whole policy-bundle check on the unix port (parse, SHA-256 of the manifest,
   Ed25519, targeting, SHA-256 of the file) and SHA-512 per KiB.
2. A whole firmware build's manifest (`umeter build --board sim`, ~100 files), as a node reads
   a streamed one (policy/manifest.py `Staged`: from flash, one member at a time; the transfer
   looks each file up in order as its chunks come, then the check walks every entry) against
   the obvious alternative (the text read whole and json.loads'd): ms on the unix port and the
   heap each holds while in use, side by side.
3. A policy campaign to N simulated nodes (default 10,000) through a real Mosquitto: the
   fleet simulator runs the firmware's agent per node (verify, apply atomically to its own
   directory, answer); canary 1 %, then batches. Wall time and messages per second.

    python benchmarks/policy.py [--nodes 10000]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "host"))
sys.path.insert(0, str(ROOT / "firmware"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey  # noqa: E402

from meternode.policy import ed25519  # noqa: E402
from umeter import unixport  # noqa: E402

PK = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
MSG = bytes.fromhex("72")
SIG = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)

_MP = r"""
import time, gc, json
from binascii import unhexlify
from meternode.policy import ed25519
from meternode.policy.sha512 import sha512
from meternode.policy.bundle import Verifier
pk = unhexlify(%(pk)r); msg = unhexlify(%(msg)r); sig = unhexlify(%(sig)r)
N = %(n)d
assert ed25519.verify(pk, msg, sig)
def best(fn, n, rounds=5):
    # best of `rounds` rounds of n calls, per call (other processes only ever add time)
    b = None
    for _ in range(rounds):
        gc.collect()
        t = time.ticks_us()
        for _ in range(n):
            fn()
        d = time.ticks_diff(time.ticks_us(), t) / n
        b = d if b is None or d < b else b
    return b

verify_us = best(lambda: ed25519.verify(pk, msg, sig), N)
data = bytes(1024)
sha_us = best(lambda: sha512(data).digest(), 10)
v = Verifier(unhexlify(%(fleet_pk)r), "n1", "bench", [])
env = %(bundle)r
bundle_us = best(lambda: v.verify(env, "policy", 0, %(now)d), N)
gc.collect()
f0 = gc.mem_free()
ed25519.verify(pk, msg, sig)
print(json.dumps({"verify_us": verify_us, "sha512_kib_us": sha_us, "bundle_us": bundle_us,
                  "bundle_bytes": len(env)}))
"""


_MP_MANIFEST = r"""
import time, gc, json
from meternode.policy.manifest import Staged
path = %(path)r
def best(fn, rounds=5):
    b = None
    for _ in range(rounds):
        gc.collect()
        t = time.ticks_us()
        fn()
        d = time.ticks_diff(time.ticks_us(), t)
        b = d if b is None or d < b else b
    return b
def staged():
    m = Staged(path)
    names = [k for k, v in m.items()]  # the check's walk
    for k in names:  # the transfer: every file's entry, in the manifest's order
        m.get(k)
def whole():
    with open(path, "rb") as f:
        d = json.loads(f.read())
    for k in d["files"]:
        d["files"][k]
def held(make):
    gc.collect()
    a = gc.mem_alloc()
    keep = make()
    gc.collect()
    return gc.mem_alloc() - a
def whole_obj():
    with open(path, "rb") as f:
        return json.loads(f.read())
def staged_obj():
    m = Staged(path)
    g = m.items()
    k = next(g)[0]
    g.close()
    m.get(k)  # holding one entry, as during a transfer
    return m
print(json.dumps({"staged_us": best(staged), "whole_us": best(whole), "staged_held": held(staged_obj),
                  "whole_held": held(whole_obj)}))
"""


def bench_manifest() -> dict:
    from umeter.build import build
    from umeter.signing import make_manifest, make_target, sign_bundle

    key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory(prefix="umeter-bench-") as tmp:
        res = build("sim", Path(tmp) / "build")
        files = {n: (res.out / n).read_bytes() for n in res.files}
        man = make_manifest("firmware", "bench", 2, files, make_target(all_nodes=True), key=key, build={})
        text = json.loads(sign_bundle(key, man))["m"]
        mpath = Path(tmp) / "manifest~"
        mpath.write_text(text)
        script = Path(tmp) / "man.py"
        script.write_text(_MP_MANIFEST % {"path": str(mpath)})
        env_ = dict(os.environ, MICROPYPATH=unixport.micropypath())
        out = subprocess.run(unixport.command(script, heap="256k"), capture_output=True, text=True, env=env_,
                             timeout=600)  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"micropython failed:\n{out.stdout}\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
    return {**r, "files": len(files), "manifest_bytes": len(text.encode()), "build_files": len(res.files)}


def _bundle() -> tuple[bytes, bytes, int]:
    from umeter.policy import compile_source, policy_bundle
    from umeter.signing import make_target, public_raw

    key = Ed25519PrivateKey.generate()
    src = {
        "name": "bench",
        "tariffs": ["offpeak", "day", "peak"],
        "seasons": [{"start": "01-01", "weekday": [["00:00", "offpeak"], ["07:00", "day"], ["17:00", "peak"]]}],
        "limits": [{"kind": "max_power", "level": 7000, "hold_s": 10, "action": "shed"}],
        "dr": [{"trigger": "freq_below", "level": 49.8, "for_s": 2, "restore_random_s": 120}],
    }
    now = int(time.time())
    env = policy_bundle(key, "bench", 1, compile_source(src), make_target(nodes=["n1"]), now=now)
    return env, public_raw(key), now


def bench_micropython(n: int, env: bytes, pub: bytes, now: int) -> dict:
    src = _MP % {"pk": PK.hex(), "msg": MSG.hex(), "sig": SIG.hex(), "n": n, "fleet_pk": pub.hex(), "bundle": env,
                 "now": now}  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    try:
        env_ = dict(os.environ, MICROPYPATH=unixport.micropypath())
        out = subprocess.run(
            unixport.command(f.name, heap="256k"), capture_output=True, text=True, env=env_, timeout=600
        )
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        raise SystemExit(f"micropython failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _best_ms(fn, n: int, rounds: int = 5) -> float:
    """Best of `rounds` rounds of n calls, ms per call (other processes only ever add time)."""
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) * 1000 / n)
    return best


def bench_cpython(n: int) -> tuple[float, float]:
    assert ed25519.verify(PK, MSG, SIG)
    pure_ms = _best_ms(lambda: ed25519.verify(PK, MSG, SIG), n)
    pub = Ed25519PublicKey.from_public_bytes(PK)
    c_ms = _best_ms(lambda: pub.verify(SIG, MSG), n * 50)
    return pure_ms, c_ms


def bench_campaign(nodes: int) -> dict:
    from umeter.broker import Mosquitto
    from umeter.campaign import CampaignDB, CampaignSpec, MqttTransport, run
    from umeter.fleetsim import FleetSim
    from umeter.policy import compile_source, policy_bundle
    from umeter.signing import fleet_identity, make_target

    key = Ed25519PrivateKey.generate()
    pol = compile_source(
        {"name": "flat", "tariffs": ["std"], "seasons": [{"start": "01-01", "weekday": [["00:00", "std"]]}]}
    )
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="umeter-bench-", dir=base) as tmp, Mosquitto() as broker:
        t_up = time.perf_counter()
        with FleetSim(nodes, broker.url, fleet_identity(key, "bench"), Path(tmp) / "fleet", shards=8) as sim:
            up_s = time.perf_counter() - t_up
            db = CampaignDB(Path(tmp) / "fleet.db")
            spec = CampaignSpec("policy", sim.node_ids, canary_pct=1, batch=max(1, nodes // 5), stage_timeout_s=300,
                                halt_pct=1, id="bench")  # fmt: skip
            db.create(spec, policy_bundle(key, "bench", 1, pol, make_target(all_nodes=True), campaign="bench"))
            with MqttTransport(broker.url) as t:
                t0 = time.perf_counter()
                rep = run(db, "bench", t, progress=lambda s: print("  " + s, file=sys.stderr))
                wall = time.perf_counter() - t0
            applied = sim.policy_versions()
    return {
        "nodes": nodes,
        "ok": rep.ok,
        "failed": rep.failed + rep.timeout,
        "wall_s": wall,
        "messages": rep.messages,
        "msg_per_s": rep.messages / wall,
        "sim_connect_s": up_s,
        "nodes_on_v1": applied.get(1, 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--verifies", type=int, default=20, help="verifications per round (best of 5 rounds)")
    a = ap.parse_args()
    env, pub, now = _bundle()
    mp = bench_micropython(a.verifies, env, pub, now)
    pure_ms, c_ms = bench_cpython(a.verifies)
    mp_ms = mp["verify_us"] / 1000
    print(f"Ed25519 verify, RFC 8032 test 2, best of 5 rounds of {a.verifies}:")
    print(f"  pure Python on the MicroPython unix port  {mp_ms:8.2f} ms")
    print(
        f"  pure Python on CPython                    {pure_ms:8.2f} ms   (unix port / CPython {mp_ms / pure_ms:.1f}x)"
    )
    print(f"  cryptography (OpenSSL) on CPython         {c_ms:8.3f} ms   (unix port / OpenSSL {mp_ms / c_ms:.0f}x)")
    print(f"  whole policy bundle check on the unix port {mp['bundle_us'] / 1000:7.2f} ms ({mp['bundle_bytes']} bytes)")
    print(f"  SHA-512 of 1 KiB on the unix port         {mp['sha512_kib_us'] / 1000:8.2f} ms")
    m = bench_manifest()
    print(f"A build's manifest ({m['files']} files, {m['manifest_bytes']} bytes) on the unix port, best of 5:")
    print(
        f"  streamed (Staged: walk + every file looked up in order) {m['staged_us'] / 1000:7.2f} ms, "
        f"holds {m['staged_held'] / 1024:5.1f} KB"
    )
    print(
        f"  read whole + json.loads                                  {m['whole_us'] / 1000:7.2f} ms, "
        f"holds {m['whole_held'] / 1024:5.1f} KB   (streamed / whole: "
        f"{m['staged_us'] / m['whole_us']:.1f}x the time, {m['staged_held'] / m['whole_held']:.2f}x the heap)"
    )
    c = bench_campaign(a.nodes)
    print(
        f"Policy campaign to {c['nodes']} simulated nodes through Mosquitto: {c['ok']} ok, {c['failed']} failed, "
        f"{c['wall_s']:.1f} s wall, {c['messages']} messages ({c['msg_per_s']:.0f}/s); "
        f"{c['nodes_on_v1']} nodes run v1 from their own store"
    )
    print(
        json.dumps(
            {
                "verify_ms_micropython": round(mp_ms, 3),
                "verify_ms_cpython": round(c_ms, 4),
                "verify_ms_cpython_pure": round(pure_ms, 3),
                "ratio_micropython_to_cpython": round(mp_ms / c_ms, 1),
                "bundle_check_ms_micropython": round(mp["bundle_us"] / 1000, 3),
                "sha512_kib_ms_micropython": round(mp["sha512_kib_us"] / 1000, 3),
                "manifest_files": m["files"],
                "manifest_staged_ms": round(m["staged_us"] / 1000, 2),
                "manifest_whole_ms": round(m["whole_us"] / 1000, 2),
                "manifest_staged_held": m["staged_held"],
                "manifest_whole_held": m["whole_held"],
                "campaign_nodes": c["nodes"],
                "campaign_ok": c["ok"],
                "campaign_s": round(c["wall_s"], 2),
                "campaign_msg_per_s": round(c["msg_per_s"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
