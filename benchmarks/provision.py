"""Provisioning speed, side by side in one run, on virtual boards:

1. 8 fresh boards provisioned in parallel by `umeter provision` (safe writes, verify)
   versus the same files copied to 8 fresh boards one after another with plain
   `mpremote fs cp -r` (in-place writes, no verification);
2. re-provisioning an unchanged board (hash skip) versus a full copy of the same image
   (a fresh board through `umeter provision`, and `mpremote fs cp -f -r`).

A virtual board's pty has no baud limit, so absolute times say little about USB serial; the
ratios do (both sides pay the same per-exec round trips). Last line: one JSON object.

    /work/venv/bin/python benchmarks/provision.py [--boards 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from umeter.build import build
from umeter.inventory import Device, Fleet
from umeter.keystore import Keystore
from umeter.provision import provision
from umeter_hil.vboard import start_many

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def stage(image: Path, tmp: Path, cfg: bytes) -> Path:
    """The same files provisioning writes (the build + a config.json), for mpremote to copy."""
    d = tmp / "stage"
    shutil.copytree(image, d)
    (d / "config.json").write_bytes(cfg)
    return d


def mpremote_copy(port: str, src: Path, force: bool = False) -> None:
    entries = sorted(p.name for p in src.iterdir())
    argv = [MPREMOTE, "connect", port, "fs", "cp", *(["-f"] if force else []), "-r", *entries, ":"]
    r = subprocess.run(argv, cwd=src, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"mpremote failed: {r.stderr}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boards", type=int, default=8)
    a = ap.parse_args()
    n = a.boards
    with tempfile.TemporaryDirectory(prefix="umeter-bench-") as t:
        tmp = Path(t)
        os.environ["UMETER_HOME"] = str(tmp / "home")
        image = build("sim", tmp / "build" / "sim").out
        files = sum(1 for p in image.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in image.rglob("*") if p.is_file())
        ks, fleet = Keystore(), Fleet()
        kw = dict(build_dirs={"sim": image}, keystore=ks, fleet=fleet, reset=False)

        # 1a. parallel umeter provision on n fresh boards
        vbs = start_many(tmp / "par", "sim", n)
        try:
            devs = [Device(name=f"n{k}", board="sim", site="bench", port=vb.port) for k, vb in enumerate(vbs)]
            t0 = time.perf_counter()
            reps = provision(devs, jobs=n, **kw)
            parallel_s = time.perf_counter() - t0
            assert all(r.status == "ok" for r in reps), [r.error for r in reps]
            cfg = (vbs[0].flash / "config.json").read_bytes()
            # 2a. re-provision one unchanged board: everything skipped by hash
            t0 = time.perf_counter()
            again = provision(devs[:1], **kw)[0]
            reprovision_s = time.perf_counter() - t0
            assert again.status == "ok" and again.written == 0
        finally:
            for vb in vbs:
                vb.stop()
        src = stage(image, tmp, cfg)

        # 1b. plain mpremote cp -r, one board after another
        vbs = start_many(tmp / "seq", "sim", n)
        try:
            t0 = time.perf_counter()
            for vb in vbs:
                mpremote_copy(vb.port, src)
            sequential_mpremote_s = time.perf_counter() - t0
            # 2c. full copy with mpremote (-f: no hash skip) onto a board that already has it
            t0 = time.perf_counter()
            mpremote_copy(vbs[0].port, src, force=True)
            full_copy_mpremote_s = time.perf_counter() - t0
        finally:
            for vb in vbs:
                vb.stop()

        # 2b. full copy through umeter provision: one fresh board
        vbs = start_many(tmp / "full", "sim", 1)
        try:
            t0 = time.perf_counter()
            rep = provision([Device(name="n0", board="sim", site="bench", port=vbs[0].port)],
                            **dict(kw, fleet=Fleet(tmp / "f2.sqlite")))[0]  # fmt: skip
            full_copy_s = time.perf_counter() - t0
            assert rep.status == "ok" and rep.written == files, rep
        finally:
            vbs[0].stop()

    print(f"image: {files} files, {size / 1024:.1f} KiB (+ config.json); {n} virtual boards")
    print(f"umeter provision, {n} boards in parallel : {parallel_s:7.2f} s (safe writes + verify)")
    print(f"mpremote cp -r, {n} boards one by one    : {sequential_mpremote_s:7.2f} s  "
          f"-> parallel is {sequential_mpremote_s / parallel_s:.1f}x faster")  # fmt: skip
    print(f"re-provision unchanged board (hash skip) : {reprovision_s:7.2f} s")
    print(
        f"full copy, umeter provision (fresh board): {full_copy_s:7.2f} s  "
        f"-> skip is {full_copy_s / reprovision_s:.1f}x faster"
    )
    print(f"full copy, mpremote cp -f -r            : {full_copy_mpremote_s:7.2f} s")
    print(json.dumps({
        "boards": n, "files": files, "bytes": size,
        "parallel_s": round(parallel_s, 3), "sequential_mpremote_s": round(sequential_mpremote_s, 3),
        "reprovision_s": round(reprovision_s, 3), "full_copy_s": round(full_copy_s, 3),
        "full_copy_mpremote_s": round(full_copy_mpremote_s, 3),
        "parallel_speedup": round(sequential_mpremote_s / parallel_s, 2),
        "skip_speedup": round(full_copy_s / reprovision_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
