# Integer sampling kernels (viper).  They run once per block, allocate nothing and keep
# every accumulator inside a stated bound so that 32-bit boards and the 64-bit unix port
# give the same results: sums are stored through ptr32 into array('i'), so a sum that
# overflowed would truncate identically on both and show in the full-scale tests.
#
# Sample blocks are array('H') of interleaved sample sets: [v, i1, i2, ...] per set,
# raw ADC counts of `bits` bits; `mid` (2**(bits-1)) is subtracted first.
#
# Accumulator layout (array('i') of acc_len(nch) words) for nch channels:
#   [2c]      sum x      of channel c
#   [2c + 1]  sum x*x    of channel c
#   [2nch + k - 1]  sum v*i_k for current channel k = 1 .. nch-1
#   [3nch - 1]      number of sets accumulated
import micropython
from micropython import const

# Bound: |x| <= 2048 for 12-bit samples, x*x <= 2**22; an int32 word holds 2**31, so one
# accumulation run (a mains cycle) may hold at most 2**31 / 2**22 = 512 sets.  The meter
# closes a run at every cycle and at MAX_SETS, whichever comes first (320 sets at 45 Hz
# would need 14.4 kS/s per channel).  At 16 bits (external ADCs) the caller scales down
# to 12 bits first.
MAX_SETS = const(500)


def acc_len(nch):
    return 3 * nch


@micropython.viper
def accumulate(buf, start: int, end: int, nch: int, mid: int, acc):
    p = ptr16(buf)
    o = ptr32(acc)
    nsum = 2 * nch
    j = start * nch
    for _ in range(start, end):
        v = int(p[j]) - mid
        o[0] = o[0] + v
        o[1] = o[1] + v * v
        c = 1
        while c < nch:
            x = int(p[j + c]) - mid
            o[2 * c] = o[2 * c] + x
            o[2 * c + 1] = o[2 * c + 1] + x * x
            o[nsum + c - 1] = o[nsum + c - 1] + v * x
            c += 1
        j += nch
    o[3 * nch - 1] = o[3 * nch - 1] + (end - start)


@micropython.viper
def find_rise(buf, start: int, end: int, nch: int, mid: int, hyst: int, state) -> int:
    # Index of the first set in [start, end) where channel 0 (voltage) crosses upward
    # through mid after having been below mid - hyst; -1 if none.  state[0] is the armed
    # flag and carries over between blocks.
    p = ptr16(buf)
    s = ptr32(state)
    armed = s[0]
    low = mid - hyst
    j = start * nch
    for k in range(start, end):
        v = int(p[j])
        if armed:
            if v >= mid:
                s[0] = 0
                return k
        elif v < low:
            armed = 1
        j += nch
    s[0] = armed
    return -1


@micropython.viper
def clear(acc, n: int):
    o = ptr32(acc)
    for k in range(n):
        o[k] = 0
