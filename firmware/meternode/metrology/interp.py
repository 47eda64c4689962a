# Four-tap fractional-delay weights for the meter's P and Q sums (kernels.block_sums; refkernels.pair_sums).
#
# The kernels give, per voltage/current pair, sum v[n-2+m] * i[n-2] for m = -1..2 (P) and
# the same a quarter cycle (d sets) earlier (Q).  The voltage "at" the current sample's
# true instant -- dt seconds after the voltage sample of its set: conversion skew plus
# CT-minus-VT phase lead -- is sum w[m] * v[n+m].  The weights are the solution of
#     sum_m w[m] * exp(i h theta (m - 1 + shift)) = exp(i h omega t*)     for h = 1 and 5
# (real and imaginary parts: four equations, four unknowns), theta = 2 pi f / rate, with
# t* = dt (P, shift 0) or dt - T/4 (Q, shift -d).  They are exact for the fundamental and
# the 5th harmonic; at 2 kS/s the 7th is within 0.8 % (two taps: 8 %), at 4 kS/s 0.1 %
# (two taps: 3.3 %), and the noise gain stays below 1.
import array
import math


def floats(n):
    # n zeros in an array of the port's float precision (single on a board), for the meter's
    # per-channel and per-element values: a list's floats are a heap object each once
    # written (docs/memory.md)
    tc = "d" if 1.0 + 1e-9 > 1.0 else "f"
    return array.array(tc, bytes((8 if tc == "d" else 4) * n))


def solve(A, ths, shift, target, out, j):
    # out[j..j+3] = the four weights (see the header); A is a 4x5 scratch matrix.
    r = 0
    for h in (1, 5):
        for part in (0, 1):
            row = A[r]
            for m in range(4):
                x = h * ths * (m - 1 + shift)
                row[m] = math.cos(x) if part == 0 else math.sin(x)
            row[4] = math.cos(h * target) if part == 0 else math.sin(h * target)
            r += 1
    for c in range(4):  # Gaussian elimination with partial pivoting
        piv = c
        for r in range(c + 1, 4):
            if abs(A[r][c]) > abs(A[piv][c]):
                piv = r
        A[c], A[piv] = A[piv], A[c]
        for r in range(c + 1, 4):
            fct = A[r][c] / A[c][c]
            for m in range(c, 5):
                A[r][m] -= fct * A[c][m]
    for c in range(3, -1, -1):
        x = A[c][4]
        for m in range(c + 1, 4):
            x -= A[c][m] * out[j + m]
        out[j + c] = x / A[c][c]


def weights(m, e, f, ph, a, b):
    # Meter m's interpolation weights for element e (voltage channel a, current b) at
    # frequency f and net phase ph (degrees), into its cache m._wt[j..j+12], j = 13 e:
    # j..j+3 P taps, j+4..j+7 Q taps, then f, the sum of the Q taps, the sum of the P taps,
    # ph and the quarter-cycle delay d they were solved for (convert.py re-solves them
    # when f, ph or d moves).
    w = 2.0 * math.pi * f
    dt = m._t_slot[b] - m._t_slot[a] + math.radians(ph) / w  # conversion skew + phase lead
    ths = w / m.rate
    wt = m._wt
    j = 13 * e
    d = m._d
    solve(m._m, ths, 0, w * dt, wt, j)
    solve(m._m, ths, -d, w * dt - math.pi / 2.0, wt, j + 4)  # a quarter cycle earlier
    wt[j + 8] = f
    wt[j + 9] = wt[j + 4] + wt[j + 5] + wt[j + 6] + wt[j + 7]
    wt[j + 10] = wt[j] + wt[j + 1] + wt[j + 2] + wt[j + 3]
    wt[j + 11] = ph
    wt[j + 12] = d
