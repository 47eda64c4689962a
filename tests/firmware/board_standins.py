# Shared by the board-backend firmware tests: the hardware stand-ins of the virtual board
# (hil/umeter_hil/board_shim: rp2hw for the RP2040's ADC/DMA/PIO, softirq for timer IRQs
# and MicroPython's scheduler queue) and the board definitions as shipped (hal kept).
import json
import sys

_ROOT = __file__.rsplit("/", 3)[0]
_SHIM = _ROOT + "/hil/umeter_hil/board_shim"
if _SHIM not in sys.path:
    sys.path.append(_SHIM)


def board(name):
    with open(_ROOT + "/boards/" + name + ".json") as f:
        return json.load(f)


def build(hw, fn):
    # fn() with machine/rp2/uctypes/time from the stand-in `hw` (the samplers bind them at
    # construction, so they keep using the stand-ins afterwards).
    undo = hw.install()
    try:
        return fn()
    finally:
        undo()


def ticks_diff(a, b):
    # The boards' (and the stand-ins') ticks wrap at 2**30; the unix port's own at 2**62.
    d = (a - b) & 0x3FFFFFFF
    return d - 0x3FFFFFFF - 1 if d > 0x1FFFFFFF else d


def check_blocks(blocks, nch, rate, base, span, tol_ppm):
    # blocks: [(buf copy, stamp_us, lost)].  Each column c holds base[c] + set index mod
    # span; sets inside a block are consecutive; between two blocks the set index jumps by
    # exactly the growth of `lost`; (sets + lost) per ticks_us matches `rate` within tol_ppm.
    # Returns (sets delivered, sets lost between the first and last block).
    prev = None
    sets = 0
    for k, (buf, stamp, lost) in enumerate(blocks):
        n = len(buf) // nch
        idx = []
        for s in range(n):
            row = [buf[s * nch + c] - base[c] for c in range(nch)]
            for c in range(nch):
                if not 0 <= row[c] < span or row[c] != row[0]:
                    raise AssertionError(
                        "block %d set %d: %r is not one set index in its own columns (levels %r)"
                        % (k, s, [buf[s * nch + c] for c in range(nch)], base)
                    )
            idx.append(row[0])
        for s in range(1, n):
            if (idx[s] - idx[s - 1]) % span != 1:
                raise AssertionError(
                    "block %d: sets %d and %d are not consecutive (%d, %d)" % (k, s - 1, s, idx[s - 1], idx[s])
                )
        if prev is not None:
            jump = (idx[0] - prev[0] - 1) % span
            if jump != (lost - prev[1]) % span:
                raise AssertionError("before block %d: %d sets missing, lost grew by %d" % (k, jump, lost - prev[1]))
        prev = (idx[-1], lost)
        if k:
            sets += n
    first, last = blocks[0], blocks[-1]
    dt = ticks_diff(last[1], first[1])
    total = sets + (last[2] - first[2])
    measured = total * 1e6 / dt
    err = abs(measured / rate - 1) * 1e6
    if err > tol_ppm:
        raise AssertionError("%d sets in %d us: %.4f sets/s, %.1f ppm from %.4f" % (total, dt, measured, err, rate))
    return sets, last[2] - first[2]
