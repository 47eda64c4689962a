# Harmonic content of one captured mains cycle: Goertzel per harmonic, THD.
#
# Goertzel in Reinsch's form: the plain recurrence s = x + 2cos(w) s1 - s2 and its end
# |X|^2 = s1^2 + s2^2 - 2cos(w) s1 s2 cancel large terms for the low orders (2cos(w) near 2,
# s1 and s2 near each other): in single precision the harmonics of an 80-set cycle were
# 2e-6 of the fundamental off a direct DFT (1e-5 at 272 sets, 10.9 kS/s at 40 Hz), THD 2e-5
# of itself off the double-precision result.  Carrying the difference d = s - s1 instead
# (d += x + lam s, s += d, lam = -4 sin^2(w/2)) and ending with X = s - e^-jw (s - d) keeps
# them at the float's own resolution (a few ulp of the fundamental), and is no slower.
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
        w = 2.0 * math.pi * h / n
        sh = math.sin(0.5 * w)
        lam = -4.0 * sh * sh
        s = 0.0
        d = 0.0
        j = start
        for _ in range(n):
            d += (buf[j] - mid) + lam * s
            s += d
            j += step
        co = math.cos(w)
        re = s - (s - d) * co
        im = (s - d) * math.sin(w)
        out[h - 1] = 2.0 * math.sqrt(re * re + im * im) / n
    f = out[0]
    if f <= 0.0:
        return 0.0
    hs = 0.0
    for h in range(1, ORDERS):
        hs += out[h] * out[h]
    return 100.0 * math.sqrt(hs) / f
