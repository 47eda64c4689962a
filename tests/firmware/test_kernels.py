# Kernel tests, run on the MicroPython unix port.
import array
import math

from meternode.metrology import kernels
from mptest import assert_no_alloc, eq, needs


def _block(nsets, nch, fn):
    buf = array.array("H", bytes(2 * nsets * nch))
    for k in range(nsets):
        for c in range(nch):
            buf[k * nch + c] = fn(k, c)
    return buf


def _reference(buf, start, end, nch, mid):
    acc = [0] * kernels.acc_len(nch)
    for k in range(start, end):
        v = buf[k * nch] - mid
        for c in range(nch):
            x = buf[k * nch + c] - mid
            acc[2 * c] += x
            acc[2 * c + 1] += x * x
            if c:
                acc[2 * nch + c - 1] += v * x
    acc[3 * nch - 1] = end - start
    return acc


@needs("viper")
def test_accumulate_matches_python_reference():
    nch = 3
    buf = _block(160, nch, lambda k, c: 2048 + int(1500 * math.sin(2 * math.pi * k / 80 + c)) + (k * 7 + c) % 13)
    acc = array.array("i", bytes(4 * kernels.acc_len(nch)))
    kernels.accumulate(buf, 10, 90, nch, 2048, acc)
    eq(list(acc), _reference(buf, 10, 90, nch, 2048), "sums over sets 10..90")


@needs("viper")
def test_accumulate_full_scale_square_wave_at_max_sets_does_not_overflow():
    # Worst case for the bound: every sample at a rail, MAX_SETS sets in one run.
    nch = 3
    n = kernels.MAX_SETS
    buf = _block(n, nch, lambda k, c: 0 if (k // 7 + c) % 2 else 4095)
    acc = array.array("i", bytes(4 * kernels.acc_len(nch)))
    kernels.accumulate(buf, 0, n, nch, 2048, acc)
    eq(list(acc), _reference(buf, 0, n, nch, 2048), "full-scale sums")


@needs("viper")
def test_kernels_allocate_nothing():
    nch = 2
    buf = _block(160, nch, lambda k, c: 2048 + int(1000 * math.sin(2 * math.pi * k / 80)))
    acc = array.array("i", bytes(4 * kernels.acc_len(nch)))
    st = array.array("i", [0])
    assert_no_alloc(kernels.accumulate, buf, 0, 160, nch, 2048, acc)
    k = assert_no_alloc(kernels.find_rise, buf, 0, 160, nch, 2048, 16, st)
    assert_no_alloc(kernels.clear, acc, len(acc))
    eq(k, 80, "first rising crossing after the negative half-cycle")


@needs("viper")
def test_find_rise_needs_hysteresis_before_it_rearms():
    # Noise around mid must not produce crossings: the signal never goes below mid - hyst.
    buf = _block(100, 1, lambda k, c: 2048 + (5 if k % 2 else -5))
    st = array.array("i", [0])
    eq(kernels.find_rise(buf, 0, 100, 1, 2048, 16, st), -1, "crossing in noise")
    eq(st[0], 0, "armed flag")
