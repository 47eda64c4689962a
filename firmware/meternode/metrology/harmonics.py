# Harmonic content of one captured mains cycle: Goertzel per harmonic, THD.
#
# The meter captures the samples of one whole cycle (crossing to crossing) every
# power-quality window; over exactly one period, harmonic h falls on DFT bin h, so no
# window function is needed and the fundamental does not leak into the harmonics (up to
# the fraction of a sample by which the cycle is not an integer number of sets).
# Goertzel costs one multiply and two adds per sample per harmonic (7 harmonics x ~80
# samples per channel per 200 ms window at 4 kS/s: well under 1 % of a core).
import math

ORDERS = 7


def spectrum(buf, start, n, step, mid, out):
    # Amplitudes (in counts, peak) of harmonics 1..ORDERS of samples buf[start + k*step],
    # k < n, into out[0..ORDERS-1]; returns THD (%) of orders 2..ORDERS.
    if n < 4 * ORDERS:
        for h in range(ORDERS):
            out[h] = 0.0
        return 0.0
    for h in range(1, ORDERS + 1):
        c = 2.0 * math.cos(2.0 * math.pi * h / n)
        s1 = 0.0
        s2 = 0.0
        j = start
        for _ in range(n):
            s0 = (buf[j] - mid) + c * s1 - s2
            s2 = s1
            s1 = s0
            j += step
        p = s1 * s1 + s2 * s2 - c * s1 * s2  # |X_h|^2
        out[h - 1] = 2.0 * math.sqrt(p if p > 0.0 else 0.0) / n
    f = out[0]
    if f <= 0.0:
        return 0.0
    hs = 0.0
    for h in range(1, ORDERS):
        hs += out[h] * out[h]
    return 100.0 * math.sqrt(hs) / f
