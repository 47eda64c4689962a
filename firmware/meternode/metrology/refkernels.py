# The per-channel and per-pair reference kernels (viper): what kernels.block_sums computes in
# one pass over a block, written one sum set at a time.  No node runs them: the tests check
# block_sums against them and benchmarks/metrology.py measures both side by side.  A module
# of their own so that a node does not hold their native code (~4 KB on a 32-bit board)
# loaded with kernels.py.  The sums and their bounds are those of kernels.py's header.
import micropython


@micropython.viper
def chan_sums(buf, start: int, end: int, nch: int, c: int, mid: int, out, k: int):
    # out[k] += sum x, out[k+1] += sum x*x over sets [start, end) of channel c.
    p = ptr16(buf)
    o = ptr32(out)
    s = 0
    q = 0
    j = start * nch + c
    stop = end * nch + c
    while j < stop:
        x = int(p[j]) - mid
        s += x
        q += x * x
        j += nch
    o[k] = o[k] + s
    o[k + 1] = o[k + 1] + q


@micropython.viper
def pair_sums(buf, start: int, end: int, nch: int, a: int, b: int, mv: int, mi: int, d: int, out, k: int):
    # out[k..k+11] += the 12 sums of the header over sets [start, end) with voltage channel
    # a and current channel b.  Needs start - d - 3 >= 0 (the history before the block).
    p = ptr16(buf)
    o = ptr32(out)
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
    j = start * nch + a
    ob = b - a
    od = 0 - d * nch
    stop = end * nch + a
    v1 = int(p[j - nch]) - mv
    v2 = int(p[j - 2 * nch]) - mv
    v3 = int(p[j - 3 * nch]) - mv
    d1 = int(p[j + od - nch]) - mv
    d2 = int(p[j + od - 2 * nch]) - mv
    d3 = int(p[j + od - 3 * nch]) - mv
    i1 = int(p[j + ob - nch]) - mi
    i2 = int(p[j + ob - 2 * nch]) - mi
    while j < stop:
        v = int(p[j]) - mv
        i = int(p[j + ob]) - mi
        vd = int(p[j + od]) - mv
        sv += v
        qv += v * v
        si += i
        qi += i * i
        p0 += v3 * i2
        p1 += v2 * i2
        p2 += v1 * i2
        p3 += v * i2
        q0 += d3 * i2
        q1 += d2 * i2
        q2 += d1 * i2
        q3 += vd * i2
        v3 = v2
        v2 = v1
        v1 = v
        d3 = d2
        d2 = d1
        d1 = vd
        i2 = i1
        i1 = i
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
