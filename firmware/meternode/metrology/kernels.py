# Integer sampling kernels (viper).  They run once per block segment, allocate nothing and
# keep every accumulator inside a stated bound so that 32-bit boards and the 64-bit unix
# port give the same results: sums live in locals and are stored through ptr32 into
# array('i'), so a sum that overflowed would truncate identically on both and show in the
# full-scale tests.
#
# Sample blocks are array('H') of interleaved sample sets: [ch0, ch1, ...] per set, raw ADC
# counts.  The meter copies each block behind HIST sets of history (copy16) so that the
# kernels can look back a quarter mains cycle and one set without branches:
#
#   work = [ HIST sets of the previous blocks | the new block ]
#
# Each channel has its own mid (the DC level tracked by the meter); x = raw - mid.
#
# chan_sums  adds  sum x, sum x*x                  for one channel (a voltage without CTs)
#            (refkernels.py: the reference block_sums is tested against; no node loads it)
# pair_sums  (refkernels.py) adds, for one voltage/current pair in one pass, 12 words:
#                  sum v, sum v*v, sum i, sum i*i,
#                  P[m] = sum v[n-2+m] * i[n-2]      m = -1, 0, 1, 2
#                  Q[m] = sum v[n-2-d+m] * i[n-2]    m = -1, 0, 1, 2
#            The current is taken two sets late so that four voltage samples around it
#            (one before, the same set, two after) and four around the instant a quarter
#            cycle (d sets) earlier are available.  The meter mixes them with four-tap
#            fractional-delay weights that are exact for the fundamental and the 5th
#            harmonic (meter.py): this corrects sampling skew and CT/VT phase error (P) and
#            makes the exact 90-degree shift for signed reactive power (Q), with small error
#            for the other harmonics (the two-tap x/y method of EmonLibCM is exact only for
#            the fundamental and loses ~8 % of 7th-harmonic power at 2 kS/s).
# find_rise  finds the positive-going zero crossing of a voltage channel with hysteresis.
import micropython
from micropython import const

# Bound: the meter clamps each tracked mid to nominal +-256 counts, so for 12-bit samples
# |x| <= 2048 + 256 = 2304 and |x*y| <= 2304**2 = 5308416.  An int32 word holds 2**31 =
# 2147483648, and 400 * 5308416 = 2123366400 < 2**31: one accumulation run (one mains
# cycle) may hold at most MAX_SETS = 400 sets.  The meter closes a run at every cycle and
# at MAX_SETS, whichever comes first (45 Hz at 4 kS/s is 89 sets; 400 sets cover 45 Hz up
# to 18 kS/s).  Converters wider than 12 bits are not accepted by the meter.
MAX_SETS = const(400)
MAX_BITS = const(12)
MID_SWING = const(256)

# History kept before each block: the quarter-cycle delay d plus the three sets before it
# must fit, d + 3 < HIST.  At 45 Hz a quarter cycle is rate / 180 sets, so HIST = 64 covers
# rates up to 10.9 kS/s (the meter checks it).
HIST = const(64)


@micropython.viper
def block_sums(c2: int, c1: int, j: int, buf, start: int, end: int, nch: int, d: int, lay, mids, out):
    # All of a block segment in one call: for each pair listed in lay the same sums as
    # refkernels.pair_sums (12 words at 12 * pair), then refkernels.chan_sums for the
    # channels no pair covers.
    # lay (array 'i'): [npairs, nlone, a0, b0, a1, b1, ..., c0, k0, c1, k1, ...];
    # mids (array 'i'): the mid of each channel.  Call with c2 = c1 = j = 0.
    #
    # Speed (the meter's hot loop; docs/metrology.md, benchmarks/metrology.py): the viper
    # emitter keeps only a function's first three locals in machine registers (x86-64, ARM
    # Thumb and Xtensa alike), and parameters come first.  So the three most used values
    # of the loop -- the two current samples in flight (c2, c1) and the index j -- are
    # the first three parameters; everything else lives in the stack frame.  The loop is
    # unrolled by four sets and the voltage history rotates through four names (a0..a3,
    # b0..b3 for the quarter-cycle-delayed voltage) instead of being shifted, so no
    # set costs a move.  Three ptr16 views (voltage, current, delayed voltage) share the
    # index j.  The remainder (fewer than four sets) runs in the plain, shifting loop.
    L = ptr32(lay)
    M = ptr32(mids)
    o = ptr32(out)
    base = int(ptr16(buf))
    npairs = L[0]
    e = 0
    while e < npairs:
        a = L[2 + 2 * e]
        b = L[3 + 2 * e]
        mv = M[a]
        mi = M[b]
        k = 12 * e
        pv = ptr16(base + 2 * a)
        pi = ptr16(base + 2 * b)
        pd = ptr16(base + 2 * (a - d * nch))
        sv = 0
        qv = 0
        si = 0
        qi = 0
        p0 = 0
        p1 = 0
        p2 = 0
        p3 = 0
        q0 = 0
        q1 = 0
        q2 = 0
        q3 = 0
        j = start * nch
        a1 = int(pv[j - nch]) - mv
        a2 = int(pv[j - 2 * nch]) - mv
        a3 = int(pv[j - 3 * nch]) - mv
        b1 = int(pd[j - nch]) - mv
        b2 = int(pd[j - 2 * nch]) - mv
        b3 = int(pd[j - 3 * nch]) - mv
        c1 = int(pi[j - nch]) - mi
        c2 = int(pi[j - 2 * nch]) - mi
        a0 = 0
        b0 = 0
        stop4 = (start + ((end - start) >> 2) * 4) * nch
        stop = end * nch
        while j < stop4:
            # set n: voltages a3 a2 a1 a0 = v[n-3..n], current c2 = i[n-2]
            a0 = int(pv[j]) - mv
            b0 = int(pd[j]) - mv
            sv += a0
            qv += a0 * a0
            p0 += a3 * c2
            p1 += a2 * c2
            p2 += a1 * c2
            p3 += a0 * c2
            q0 += b3 * c2
            q1 += b2 * c2
            q2 += b1 * c2
            q3 += b0 * c2
            c2 = int(pi[j]) - mi
            si += c2
            qi += c2 * c2
            j += nch
            # set n+1: a2 a1 a0 a3, c1 = i[n-1]
            a3 = int(pv[j]) - mv
            b3 = int(pd[j]) - mv
            sv += a3
            qv += a3 * a3
            p0 += a2 * c1
            p1 += a1 * c1
            p2 += a0 * c1
            p3 += a3 * c1
            q0 += b2 * c1
            q1 += b1 * c1
            q2 += b0 * c1
            q3 += b3 * c1
            c1 = int(pi[j]) - mi
            si += c1
            qi += c1 * c1
            j += nch
            # set n+2: a1 a0 a3 a2, c2 = i[n]
            a2 = int(pv[j]) - mv
            b2 = int(pd[j]) - mv
            sv += a2
            qv += a2 * a2
            p0 += a1 * c2
            p1 += a0 * c2
            p2 += a3 * c2
            p3 += a2 * c2
            q0 += b1 * c2
            q1 += b0 * c2
            q2 += b3 * c2
            q3 += b2 * c2
            c2 = int(pi[j]) - mi
            si += c2
            qi += c2 * c2
            j += nch
            # set n+3: a0 a3 a2 a1, c1 = i[n+1]; after it the names are as at set n
            a1 = int(pv[j]) - mv
            b1 = int(pd[j]) - mv
            sv += a1
            qv += a1 * a1
            p0 += a0 * c1
            p1 += a3 * c1
            p2 += a2 * c1
            p3 += a1 * c1
            q0 += b0 * c1
            q1 += b3 * c1
            q2 += b2 * c1
            q3 += b1 * c1
            c1 = int(pi[j]) - mi
            si += c1
            qi += c1 * c1
            j += nch
        while j < stop:
            a0 = int(pv[j]) - mv
            b0 = int(pd[j]) - mv
            sv += a0
            qv += a0 * a0
            p0 += a3 * c2
            p1 += a2 * c2
            p2 += a1 * c2
            p3 += a0 * c2
            q0 += b3 * c2
            q1 += b2 * c2
            q2 += b1 * c2
            q3 += b0 * c2
            c2 = c1
            c1 = int(pi[j]) - mi
            si += c1
            qi += c1 * c1
            a3 = a2
            a2 = a1
            a1 = a0
            b3 = b2
            b2 = b1
            b1 = b0
            j += nch
        o[k] = o[k] + sv
        o[k + 1] = o[k + 1] + qv
        o[k + 2] = o[k + 2] + si
        o[k + 3] = o[k + 3] + qi
        o[k + 4] = o[k + 4] + p0
        o[k + 5] = o[k + 5] + p1
        o[k + 6] = o[k + 6] + p2
        o[k + 7] = o[k + 7] + p3
        o[k + 8] = o[k + 8] + q0
        o[k + 9] = o[k + 9] + q1
        o[k + 10] = o[k + 10] + q2
        o[k + 11] = o[k + 11] + q3
        e += 1
    lone = 2 + 2 * npairs
    e = 0
    while e < L[1]:
        c = L[lone + 2 * e]
        k = L[lone + 2 * e + 1]
        mid = M[c]
        pv = ptr16(base + 2 * c)
        c2 = 0  # sum x (in a register)
        qv = 0
        j = start * nch
        stop = end * nch
        while j < stop:
            c1 = int(pv[j]) - mid
            c2 += c1
            qv += c1 * c1
            j += nch
        o[k] = o[k] + c2
        o[k + 1] = o[k + 1] + qv
        e += 1


@micropython.viper
def track_mids(acc, sx, mids, nch: int, n: int, lo: int, hi: int):
    # Each channel's mid moves to its DC level: mid += round(sum x / n), clamped to
    # [lo, hi] (nominal +- MID_SWING, which the accumulator bound assumes).
    a = ptr32(acc)
    S = ptr32(sx)
    M = ptr32(mids)
    # ptr32 loads are unsigned on 64-bit builds: (x ^ h) - h sign-extends (the identity on
    # 32-bit boards).  h = 2**31 is built at run time: a literal 1 << 31 would be folded
    # into a boxed constant, which viper rejects with 31-bit small ints (the MCU builds).
    h = 1
    h <<= 31
    n2 = 2 * n
    for c in range(nch):
        t = 2 * ((a[S[c]] ^ h) - h) + n
        q = t // n2
        if q * n2 > t:  # floor, whatever the native division rounds to
            q -= 1
        m = M[c] + q
        if m < lo:
            m = lo
        if m > hi:
            m = hi
        M[c] = m


@micropython.viper
def find_rise(buf, start: int, end: int, nch: int, a: int, mid: int, hyst: int, state) -> int:
    # Index of the first set in [start, end) where channel a crosses upward through mid
    # after having been below mid - hyst; -1 if none.  state[0] is the armed flag and
    # carries over between calls.
    p = ptr16(buf)
    s = ptr32(state)
    armed = s[0]
    low = mid - hyst
    j = start * nch + a
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
def copy16(src, so: int, dst, do: int, n: int):
    # dst[do:do+n] = src[so:so+n], ascending (safe for overlapping moves towards 0).
    s = ptr16(src)
    t = ptr16(dst)
    for k in range(n):
        t[do + k] = s[so + k]


@micropython.viper
def signs(acc, lim, nel: int, n: int) -> int:
    # Signs of P and Q of each element in one cycle's sums (12 words per element), from
    # the same-set product sum v[n]*i[n] (word 5) and the quarter-cycle one (word 9):
    # bit e set when P is above +lim[e] * n, bit e + 8 when below -lim[e] * n; bits 16 +
    # e and 24 + e the same for Q.  Inside the band: neither bit (no sign to keep apart).
    # The first 8 elements only (8 bits per kind): elements 9.. batch freely.
    a = ptr32(acc)
    L = ptr32(lim)
    h = 1
    h <<= 31  # sign-extend ptr32 loads on 64-bit builds (see track_mids)
    if nel > 8:
        nel = 8
    m = 0
    e = 0
    while e < nel:
        t = L[e] * n
        x = (a[12 * e + 5] ^ h) - h
        if x > t:
            m |= 1 << e
        elif x < 0 - t:
            m |= 256 << e
        x = (a[12 * e + 9] ^ h) - h
        if x > t:
            m |= 65536 << e
        elif x < 0 - t:
            m |= 16777216 << e
        e += 1
    return m


@micropython.viper
def move_add(src, dst, n: int):
    # dst[k] += src[k]; src[k] = 0 for k < n (a closed cycle's sums join the batch).
    # move_add(a, a, n) clears a (the sum is stored, then the zero over it): the meter's
    # clear, without a kernel of its own (machine code is heap on a board: docs/memory.md).
    s = ptr32(src)
    t = ptr32(dst)
    for k in range(n):
        t[k] = t[k] + s[k]
        s[k] = 0
