"""Metrology kernels, measured side by side in one run on the MicroPython unix port.

Prints ns per sample pair (one voltage and one current sample: sum x, sum x^2 of both,
the four products for phase interpolation and the four for quarter-cycle reactive power)
for the meter's viper kernel (kernels.block_sums with one pair), the plain one-set-per-
iteration viper loop (kernels.pair_sums), the same algorithm in bytecode and in
@micropython.native, and in C built with -O2 where a C compiler is present -- the same
generic loop as the viper kernel (layout, mids and delay are run-time arguments the
compiler cannot fold) and, for reference, one specialised to this benchmark's constants.
All of them are checked to give the same 12 sums before they are timed.  Then the
real-time factor of the whole meter (seconds of 4-channel 4 kS/s signal per CPU second:
kernels, zero crossings, per-cycle maths, registers) with the default batch of cycles and
with metrology.batch_cycles = 1 (every cycle converted on its own), and the heap in use
with metrology running.  The last line is JSON.

    python benchmarks/metrology.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "host"))

from umeter import unixport  # noqa: E402

SETS = 160
REPS = 2000

_MP = r"""
import array, gc, math, time, json, micropython
from meternode.metrology import kernels, refkernels
from meternode.metrology.meter import Meter

H = kernels.HIST
SETS = %(sets)d
REPS = %(reps)d

buf = array.array("H", bytes(4 * (H + SETS)))
for k in range(H + SETS):
    buf[2 * k] = 2048 + int(1500 * math.sin(2 * math.pi * k / 80))
    buf[2 * k + 1] = 2048 + int(900 * math.sin(2 * math.pi * k / 80 - 0.5))
acc = array.array("i", bytes(48))
acc2 = array.array("i", bytes(48))
lay = array.array("i", [1, 0, 0, 1])
mids = array.array("i", [2048, 2048])

def viper_once():
    kernels.block_sums(0, 0, 0, buf, H, H + SETS, 2, 20, lay, mids, acc)

def viper_plain():
    refkernels.pair_sums(buf, H, H + SETS, 2, 0, 1, 2048, 2048, 20, acc2, 0)

def plain(buf, start, end, mv, mi, d, out):
    sv = 0; qv = 0; si = 0; qi = 0
    p0 = 0; p1 = 0; p2 = 0; p3 = 0; q0 = 0; q1 = 0; q2 = 0; q3 = 0
    v1 = buf[2 * (start - 1)] - mv; v2 = buf[2 * (start - 2)] - mv; v3 = buf[2 * (start - 3)] - mv
    d1 = buf[2 * (start - d - 1)] - mv; d2 = buf[2 * (start - d - 2)] - mv; d3 = buf[2 * (start - d - 3)] - mv
    i1 = buf[2 * (start - 1) + 1] - mi; i2 = buf[2 * (start - 2) + 1] - mi
    for n in range(start, end):
        v = buf[2 * n] - mv
        i = buf[2 * n + 1] - mi
        vd = buf[2 * (n - d)] - mv
        sv += v; qv += v * v; si += i; qi += i * i
        p0 += v3 * i2; p1 += v2 * i2; p2 += v1 * i2; p3 += v * i2
        q0 += d3 * i2; q1 += d2 * i2; q2 += d1 * i2; q3 += vd * i2
        v3 = v2; v2 = v1; v1 = v; d3 = d2; d2 = d1; d1 = vd; i2 = i1; i1 = i
    out[0] += sv; out[1] += qv; out[2] += si; out[3] += qi
    out[4] += p0; out[5] += p1; out[6] += p2; out[7] += p3
    out[8] += q0; out[9] += q1; out[10] += q2; out[11] += q3

@micropython.native
def native(buf, start, end, mv, mi, d, out):
    sv = 0; qv = 0; si = 0; qi = 0
    p0 = 0; p1 = 0; p2 = 0; p3 = 0; q0 = 0; q1 = 0; q2 = 0; q3 = 0
    v1 = buf[2 * (start - 1)] - mv; v2 = buf[2 * (start - 2)] - mv; v3 = buf[2 * (start - 3)] - mv
    d1 = buf[2 * (start - d - 1)] - mv; d2 = buf[2 * (start - d - 2)] - mv; d3 = buf[2 * (start - d - 3)] - mv
    i1 = buf[2 * (start - 1) + 1] - mi; i2 = buf[2 * (start - 2) + 1] - mi
    for n in range(start, end):
        v = buf[2 * n] - mv
        i = buf[2 * n + 1] - mi
        vd = buf[2 * (n - d)] - mv
        sv += v; qv += v * v; si += i; qi += i * i
        p0 += v3 * i2; p1 += v2 * i2; p2 += v1 * i2; p3 += v * i2
        q0 += d3 * i2; q1 += d2 * i2; q2 += d1 * i2; q3 += vd * i2
        v3 = v2; v2 = v1; v1 = v; d3 = d2; d2 = d1; d1 = vd; i2 = i1; i1 = i
    out[0] += sv; out[1] += qv; out[2] += si; out[3] += qi
    out[4] += p0; out[5] += p1; out[6] += p2; out[7] += p3
    out[8] += q0; out[9] += q1; out[10] += q2; out[11] += q3

def timed(fn, reps, rounds=5):
    # best of `rounds`: the machine is shared, the minimum is the kernel's own cost
    best = None
    for _ in range(rounds):
        gc.collect()
        t0 = time.ticks_us()
        for _ in range(reps):
            fn()
        ns = time.ticks_diff(time.ticks_us(), t0) * 1000.0 / (reps * SETS)
        best = ns if best is None or ns < best else best
    return best

# check the four agree before timing them (and hand the sums to the C check)
kernels.move_add(acc, acc, 12); viper_once()
a = list(acc)
kernels.move_add(acc2, acc2, 12); viper_plain()
a2 = list(acc2)
b = [0] * 12; plain(buf, H, H + SETS, 2048, 2048, 20, b)
c = [0] * 12; native(buf, H, H + SETS, 2048, 2048, 20, c)
assert a == a2 == b == c, (a, a2, b, c)

res = {"sums": a}
res["viper_ns_per_pair"] = timed(viper_once, REPS, 15)  # 5 ms a round: more rounds
res["viper_plain_ns_per_pair"] = timed(viper_plain, REPS, 15)
res["bytecode_ns_per_pair"] = timed(lambda: plain(buf, H, H + SETS, 2048, 2048, 20, b), REPS // 20)
res["native_ns_per_pair"] = timed(lambda: native(buf, H, H + SETS, 2048, 2048, 20, c), REPS // 10)

# the whole meter on a 4-channel board at 4 kS/s (1 V + 3 CT), signal made beforehand
board = {"name": "bench", "hal": "sim", "adc": {"bits": 12, "rate": 4000, "block": 160, "skew_us": 2.0},
         "channels": [{"name": "V1", "kind": "voltage", "scale": 0.2, "nominal": 230.0}]
         + [{"name": "I%%d" %% k, "kind": "current", "scale": 0.0732, "nominal": 80.0, "cal": {"phase": 0.5}}
            for k in (1, 2, 3)]}
from meternode.hal.sim import SimHal
hal = SimHal(board, {"seed": 1, "enob": 8.7, "voltage": {"rms": 230.0},
                     "currents": [{"rms": 20.0, "angle": 30.0}, {"rms": 5.0, "angle": 180.0}, {"rms": 40.0}]})
nb = 10  # 0.4 s of signal (20 whole cycles), fed in a loop
blocks = []
for _ in range(nb):
    bb = array.array("H", bytes(2 * 4 * 160))
    hal.sampler.fill(bb)
    blocks.append(bb)

def realtime(m):
    for bb in blocks:
        m.feed(bb, 160)
    best = 0.0
    for _ in range(3):
        gc.collect()
        seconds = 0.0
        t0 = time.ticks_us()
        for r in range(20):
            for bb in blocks:
                m.feed(bb, 160)
            seconds += nb * 160 / 4000
        cpu = time.ticks_diff(time.ticks_us(), t0) / 1e6
        best = max(best, seconds / cpu)
    return best

m = Meter(board, None, {"batch_cycles": 1})
res["realtime_factor_per_cycle"] = realtime(m)
m = None
gc.collect()
m = Meter(board, None)
res["realtime_factor"] = realtime(m)
res["meter_cycles"] = m.cycles
res["batch_cycles"] = m._batch
del blocks
gc.collect()
res["heap_bytes"] = gc.mem_alloc()
res["heap_total"] = gc.mem_alloc() + gc.mem_free()
print(json.dumps(res))
"""

_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <math.h>
#define H 64
#define SETS %(sets)d
static uint16_t buf[2 * (H + SETS)];
/* run-time arguments, read through volatile so that -O2 cannot fold them into the loop */
static volatile int v_nch = 2, v_a = 0, v_b = 1, v_mv = 2048, v_mi = 2048, v_d = 20;

/* the viper kernel's loop as C: interleaved sets of nch channels, voltage a, current b */
__attribute__((noinline)) static void generic(const uint16_t *p, int start, int end, int nch, int a, int b,
                                              int mv, int mi, int d, int32_t *o) {
    int32_t sv = 0, qv = 0, si = 0, qi = 0, p0 = 0, p1 = 0, p2 = 0, p3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
    int j = start * nch + a, ob = b - a, od = -d * nch, stop = end * nch + a;
    int32_t v1 = p[j - nch] - mv, v2 = p[j - 2 * nch] - mv, v3 = p[j - 3 * nch] - mv;
    int32_t d1 = p[j + od - nch] - mv, d2 = p[j + od - 2 * nch] - mv, d3 = p[j + od - 3 * nch] - mv;
    int32_t i1 = p[j + ob - nch] - mi, i2 = p[j + ob - 2 * nch] - mi;
    for (; j < stop; j += nch) {
        int32_t v = p[j] - mv, i = p[j + ob] - mi, vd = p[j + od] - mv;
        sv += v; qv += v * v; si += i; qi += i * i;
        p0 += v3 * i2; p1 += v2 * i2; p2 += v1 * i2; p3 += v * i2;
        q0 += d3 * i2; q1 += d2 * i2; q2 += d1 * i2; q3 += vd * i2;
        v3 = v2; v2 = v1; v1 = v; d3 = d2; d2 = d1; d1 = vd; i2 = i1; i1 = i;
    }
    o[0] += sv; o[1] += qv; o[2] += si; o[3] += qi; o[4] += p0; o[5] += p1; o[6] += p2; o[7] += p3;
    o[8] += q0; o[9] += q1; o[10] += q2; o[11] += q3;
}

/* the same with this benchmark's layout as compile-time constants (2 channels, d = 20) */
__attribute__((noinline)) static void fixed(const uint16_t *p, int start, int end, int32_t *o) {
    const int mv = 2048, mi = 2048, d = 20;
    int32_t sv = 0, qv = 0, si = 0, qi = 0, p0 = 0, p1 = 0, p2 = 0, p3 = 0, q0 = 0, q1 = 0, q2 = 0, q3 = 0;
    int32_t v1 = p[2 * (start - 1)] - mv, v2 = p[2 * (start - 2)] - mv, v3 = p[2 * (start - 3)] - mv;
    int32_t d1 = p[2 * (start - d - 1)] - mv, d2 = p[2 * (start - d - 2)] - mv, d3 = p[2 * (start - d - 3)] - mv;
    int32_t i1 = p[2 * (start - 1) + 1] - mi, i2 = p[2 * (start - 2) + 1] - mi;
    for (int n = start; n < end; n++) {
        int32_t v = p[2 * n] - mv, i = p[2 * n + 1] - mi, vd = p[2 * (n - d)] - mv;
        sv += v; qv += v * v; si += i; qi += i * i;
        p0 += v3 * i2; p1 += v2 * i2; p2 += v1 * i2; p3 += v * i2;
        q0 += d3 * i2; q1 += d2 * i2; q2 += d1 * i2; q3 += vd * i2;
        v3 = v2; v2 = v1; v1 = v; d3 = d2; d2 = d1; d1 = vd; i2 = i1; i1 = i;
    }
    o[0] += sv; o[1] += qv; o[2] += si; o[3] += qi; o[4] += p0; o[5] += p1; o[6] += p2; o[7] += p3;
    o[8] += q0; o[9] += q1; o[10] += q2; o[11] += q3;
}

static double best_ns(int which) {
    int32_t o[12] = {0};
    long reps = 100000;
    double ns = 1e9;
    for (int t = 0; t < 5; t++) {  /* best of 5, as on the MicroPython side */
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long r = 0; r < reps; r++) {
            if (which)
                fixed(buf, H, H + SETS, o);
            else
                generic(buf, H, H + SETS, v_nch, v_a, v_b, v_mv, v_mi, v_d, o);
            __asm__ volatile("" ::: "memory");
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double x = ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)(reps * SETS);
        if (x < ns) ns = x;
    }
    printf("%%d", (int)o[0]);  /* keeps the sums alive */
    return ns;
}

int main(void) {
    for (int k = 0; k < H + SETS; k++) {
        buf[2 * k] = 2048 + (int)(1500 * sin(2 * M_PI * k / 80));
        buf[2 * k + 1] = 2048 + (int)(900 * sin(2 * M_PI * k / 80 - 0.5));
    }
    int32_t g[12] = {0}, f[12] = {0};  /* one pass each: the sums to compare with MicroPython's */
    generic(buf, H, H + SETS, v_nch, v_a, v_b, v_mv, v_mi, v_d, g);
    fixed(buf, H, H + SETS, f);
    double ng = best_ns(0), nf = best_ns(1);
    printf("\n%%.4f %%.4f", ng, nf);
    for (int k = 0; k < 12; k++) printf(" %%d", (int)g[k]);
    for (int k = 0; k < 12; k++) printf(" %%d", (int)f[k]);
    printf("\n");
    return 0;
}
"""


def c_kernels(tmp: Path) -> tuple[float, float, list[int], list[int]] | None:
    """(generic ns, specialised ns, generic sums, specialised sums) per pair, or None."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = tmp / "k.c"
    src.write_text(_C % {"sets": SETS})
    exe = tmp / "k"
    subprocess.run([cc, "-O2", "-o", str(exe), str(src), "-lm"], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split("\n")[1].split()
    return float(out[0]), float(out[1]), [int(x) for x in out[2:14]], [int(x) for x in out[14:26]]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="umeter-bench-") as t:
        tmp = Path(t)
        script = tmp / "bench_mp.py"
        script.write_text(_MP % {"sets": SETS, "reps": REPS})
        env = dict(os.environ, MICROPYPATH=unixport.micropypath())
        out = subprocess.run(unixport.command(script, heap="192k"), capture_output=True, text=True, env=env, cwd=t)
        if out.returncode != 0:
            print(out.stdout + out.stderr, file=sys.stderr)
            return 1
        res = json.loads(out.stdout.strip().splitlines()[-1])
        ck = c_kernels(tmp)
    sums = res.pop("sums")
    c = None
    if ck:
        c, cf, gs, fs = ck
        if gs != sums or fs != sums:
            print(f"C sums differ from the MicroPython ones: {gs} {fs} {sums}", file=sys.stderr)
            return 1
        res["c_fixed_ns_per_pair"] = cf
        res["viper_vs_c_fixed"] = res["viper_ns_per_pair"] / cf
    res["c_ns_per_pair"] = c
    res["speedup_vs_bytecode"] = res["bytecode_ns_per_pair"] / res["viper_ns_per_pair"]
    res["speedup_vs_native"] = res["native_ns_per_pair"] / res["viper_ns_per_pair"]
    res["speedup_vs_plain_viper"] = res["viper_plain_ns_per_pair"] / res["viper_ns_per_pair"]
    res["viper_vs_c"] = res["viper_ns_per_pair"] / c if c else None
    r = res
    print(f"viper block_sums   {r['viper_ns_per_pair']:8.2f} ns per sample pair (the meter's kernel)")
    x = r["speedup_vs_plain_viper"]
    print(f"viper plain loop   {r['viper_plain_ns_per_pair']:8.2f} ns   (block_sums {x:.1f}x faster)")
    print(f"native             {r['native_ns_per_pair']:8.2f} ns   (block_sums {r['speedup_vs_native']:.1f}x faster)")
    print(
        f"bytecode           {r['bytecode_ns_per_pair']:8.2f} ns   (block_sums {r['speedup_vs_bytecode']:.1f}x faster)"
    )
    if c:
        x = r["viper_vs_c"]
        print(f"C -O2, same loop   {c:8.2f} ns   (block_sums at {x:.1f}x of C; run-time layout, as viper)")
        x = r["viper_vs_c_fixed"]
        print(f"C -O2, constants   {cf:8.2f} ns   (block_sums at {x:.1f}x; layout folded at compile time)")
    else:
        print("C -O2              no C compiler on this machine")
    x = r["batch_cycles"]
    print(f"whole meter        {r['realtime_factor']:8.0f}x real time (4 channels at 4 kS/s, batches of {x} cycles)")
    print(f"  per cycle        {r['realtime_factor_per_cycle']:8.0f}x real time (metrology.batch_cycles = 1)")
    print(f"heap in use        {res['heap_bytes']:8d} bytes of {res['heap_total']} with metrology running")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
