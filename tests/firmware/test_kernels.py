# Kernel tests, run on the MicroPython unix port: every kernel against a plain-Python
# reference, at full scale for the accumulator bound, and under heap_lock().
import array
import math

from meternode.metrology import kernels, refkernels
from mptest import assert_no_alloc, eq, needs

H = kernels.HIST


def _block(nsets, nch, fn):
    buf = array.array("H", bytes(2 * nsets * nch))
    for k in range(nsets):
        for c in range(nch):
            buf[k * nch + c] = fn(k, c)
    return buf


def _wave(k, c):
    return 2048 + int(1500 * math.sin(2 * math.pi * k / 80 + c)) + (k * 7 + c) % 13


def _ref_chan(buf, start, end, nch, c, mid):
    s = 0
    q = 0
    for k in range(start, end):
        x = buf[k * nch + c] - mid
        s += x
        q += x * x
    return [s, q]


def _ref_pair(buf, start, end, nch, a, b, mv, mi, d):
    out = _ref_chan(buf, start, end, nch, a, mv) + _ref_chan(buf, start, end, nch, b, mi) + [0] * 8
    for n in range(start, end):
        i = buf[(n - 2) * nch + b] - mi
        for m in range(4):
            out[4 + m] += (buf[(n - 3 + m) * nch + a] - mv) * i
            out[8 + m] += (buf[(n - 3 - d + m) * nch + a] - mv) * i
    return out


def _i32(x):
    # what an int32 word holds after storing x
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


@needs("viper")
def test_chan_sums_match_python_reference_and_add_to_previous_sums():
    nch = 3
    buf = _block(H + 160, nch, _wave)
    out = array.array("i", [5, 7, 0, 0])
    refkernels.chan_sums(buf, H, H + 100, nch, 1, 2050, out, 0)
    refkernels.chan_sums(buf, H + 3, H + 50, nch, 2, 2040, out, 2)
    ref = _ref_chan(buf, H, H + 100, nch, 1, 2050)
    eq(list(out), [ref[0] + 5, ref[1] + 7] + _ref_chan(buf, H + 3, H + 50, nch, 2, 2040), "channel sums")


@needs("viper")
def test_pair_sums_match_python_reference_with_quarter_cycle_delay():
    nch = 3
    buf = _block(H + 160, nch, _wave)
    for d in (1, 20, H - 4):
        out = array.array("i", bytes(48))
        refkernels.pair_sums(buf, H, H + 160, nch, 0, 2, 2047, 2049, d, out, 0)
        eq(list(out), _ref_pair(buf, H, H + 160, nch, 0, 2, 2047, 2049, d), "pair sums with d=%d" % d)


@needs("viper")
def test_split_runs_give_the_same_sums_as_one_run():
    nch = 2
    buf = _block(H + 160, nch, _wave)
    one = array.array("i", bytes(48))
    two = array.array("i", bytes(48))
    refkernels.pair_sums(buf, H, H + 160, nch, 0, 1, 2048, 2048, 20, one, 0)
    refkernels.pair_sums(buf, H, H + 77, nch, 0, 1, 2048, 2048, 20, two, 0)
    refkernels.pair_sums(buf, H + 77, H + 160, nch, 0, 1, 2048, 2048, 20, two, 0)
    eq(list(two), list(one), "split vs whole")


@needs("viper")
def test_full_scale_rails_at_max_sets_stay_inside_int32():
    # Worst case for the bound: every sample at a rail with the tracked mid at its
    # largest swing (|x| = 2048 + MID_SWING), MAX_SETS sets in one run, all products of
    # the same sign so nothing cancels.
    nch = 2
    n = kernels.MAX_SETS
    mid = 2048 + kernels.MID_SWING
    buf = _block(H + n, nch, lambda k, c: 0)
    out = array.array("i", bytes(56))
    refkernels.pair_sums(buf, H, H + n, nch, 0, 1, mid, mid, 20, out, 0)
    refkernels.chan_sums(buf, H, H + n, nch, 0, mid, out, 12)
    ref = _ref_pair(buf, H, H + n, nch, 0, 1, mid, mid, 20) + _ref_chan(buf, H, H + n, nch, 0, mid)
    eq(list(out), ref, "full-scale sums")
    eq(max(ref) < (1 << 31), True, "reference inside int32")


@needs("viper")
def test_bound_is_tight_one_run_of_twice_max_sets_would_wrap():
    # The same rails over 2 * MAX_SETS sets exceed int32: the stored word shows the wrap,
    # which is what the meter's MAX_SETS cut prevents (and what this test would catch).
    nch = 2
    n = 2 * kernels.MAX_SETS
    mid = 2048 + kernels.MID_SWING
    buf = _block(H + n, nch, lambda k, c: 0)
    out = array.array("i", bytes(48))
    refkernels.pair_sums(buf, H, H + n, nch, 0, 1, mid, mid, 20, out, 0)
    ref = _ref_pair(buf, H, H + n, nch, 0, 1, mid, mid, 20)
    eq(list(out), [_i32(x) for x in ref], "wrapped sums")
    eq(out[4] != ref[4], True, "wrap visible")


@needs("viper")
def test_every_kernel_allocates_nothing():
    nch = 2
    buf = _block(H + 160, nch, _wave)
    acc = array.array("i", bytes(4 * 14))
    st = array.array("i", [0])
    work = array.array("H", bytes(2 * nch * (H + 160)))
    assert_no_alloc(refkernels.chan_sums, buf, H, H + 160, nch, 0, 2048, acc, 0)
    # 11 arguments: wrap in a closure made before the heap is locked
    pair = _bind_pair(buf, nch, acc)
    assert_no_alloc(pair)
    k = assert_no_alloc(kernels.find_rise, buf, 0, 160, nch, 0, 2048, 16, st)
    assert_no_alloc(kernels.copy16, buf, 0, work, 0, nch * 160)
    assert_no_alloc(kernels.move_add, acc, acc, len(acc))  # the meter's clear
    eq(k, 80, "first rising crossing after the negative half-cycle")
    eq(list(acc), [0] * 14, "cleared")
    eq(work[: nch * 160], buf[: nch * 160], "copied")


def _bind_pair(buf, nch, acc):
    def call():
        refkernels.pair_sums(buf, H, H + 160, nch, 0, 1, 2048, 2048, 20, acc, 2)

    return call


@needs("viper")
def test_find_rise_needs_hysteresis_before_it_rearms():
    # Noise around mid must not produce crossings: the signal never goes below mid - hyst.
    buf = _block(100, 1, lambda k, c: 2048 + (5 if k % 2 else -5))
    st = array.array("i", [0])
    eq(kernels.find_rise(buf, 0, 100, 1, 0, 2048, 16, st), -1, "crossing in noise")
    eq(st[0], 0, "armed flag")


@needs("viper")
def test_find_rise_reads_its_channel_and_carries_the_armed_state():
    nch = 3
    buf = _block(80, nch, lambda k, c: 2048 + (-500 if (k < 30 and c == 1) else 500))
    st = array.array("i", [0])
    eq(kernels.find_rise(buf, 0, 20, nch, 1, 2048, 16, st), -1, "no rise yet on channel 1")
    eq(st[0], 1, "armed after the low part")
    eq(kernels.find_rise(buf, 20, 80, nch, 1, 2048, 16, st), 30, "rise on channel 1")
    eq(kernels.find_rise(buf, 0, 80, nch, 0, 2048, 16, st), -1, "channel 0 never low")


@needs("viper")
def test_block_sums_equal_pair_sums_per_pair_and_chan_sums_for_lone_channels():
    # 2 voltages, 2 currents on V1 and one on V2... here: V1, I1, I2 (on V1), V2 alone.
    nch = 4
    buf = _block(H + 160, nch, _wave)
    mids = array.array("i", [2047, 2050, 2046, 2049])
    lay = array.array("i", [2, 1, 0, 1, 0, 2, 3, 24])
    out = array.array("i", bytes(4 * 26))
    kernels.block_sums(0, 0, 0, buf, H + 5, H + 150, nch, 19, lay, mids, out)
    ref = _ref_pair(buf, H + 5, H + 150, nch, 0, 1, 2047, 2050, 19)
    ref += _ref_pair(buf, H + 5, H + 150, nch, 0, 2, 2047, 2046, 19)
    ref += _ref_chan(buf, H + 5, H + 150, nch, 3, 2049)
    eq(list(out), ref, "block sums")
    out2 = array.array("i", bytes(4 * 26))
    assert_no_alloc(_bind_block(buf, nch, lay, mids, out2))
    eq(list(out2), list(out), "same under heap_lock")


def _bind_block(buf, nch, lay, mids, out):
    def call():
        kernels.block_sums(0, 0, 0, buf, H + 5, H + 150, nch, 19, lay, mids, out)

    return call


@needs("viper")
def test_track_mids_rounds_negative_and_positive_means_and_clamps():
    acc = array.array("i", [-250, 0, 149, 0, 100000, 0])
    sx = array.array("i", [0, 2, 4])
    mids = array.array("i", [2048, 2048, 2048])
    # means over n=100: -2.5 -> -2 (round half up), 1.49 -> 1, 1000 -> clamped at +256
    assert_no_alloc(kernels.track_mids, acc, sx, mids, 3, 100, 2048 - 256, 2048 + 256)
    eq(list(mids), [2046, 2049, 2304], "tracked mids")


def _block_sums(buf, start, end, nch, d, pairs, lone, mids):
    # block_sums through its layout array, for one call; returns the sums as a list
    lay = [len(pairs), len(lone)]
    for a, b in pairs:
        lay += [a, b]
    k = 12 * len(pairs)
    for c in lone:
        lay += [c, k]
        k += 2
    out = array.array("i", bytes(4 * k))
    kernels.block_sums(0, 0, 0, buf, start, end, nch, d, array.array("i", lay), array.array("i", mids), out)
    return list(out)


@needs("viper")
def test_block_sums_unrolled_loop_and_its_remainder_match_the_reference_for_every_length():
    # The kernel runs four sets per iteration and the rest one by one: every length 0..13
    # from several starts and delays, on a 3-channel layout with the current before the
    # voltage in the set, must give the reference sums.
    nch = 3
    buf = _block(H + 40, nch, _wave)
    mids = [2046, 2049, 2051]
    for d in (1, 17, H - 4):
        for start in (H, H + 1, H + 3):
            for n in range(14):
                got = _block_sums(buf, start, start + n, nch, d, [(2, 0)], [1], mids)
                ref = _ref_pair(buf, start, start + n, nch, 2, 0, 2051, 2046, d)
                ref += _ref_chan(buf, start, start + n, nch, 1, 2049)
                eq(got, ref, "d=%d start=%d sets=%d" % (d, start, n))


@needs("viper")
def test_block_sums_full_scale_rails_at_max_sets_stay_inside_int32_and_twice_would_wrap():
    # The meter's kernel under the same worst case as pair_sums: rails, mid at its largest
    # swing, MAX_SETS sets in one call -- and 2 * MAX_SETS shows the wrap.
    nch = 3
    mid = 2048 + kernels.MID_SWING
    for n, wraps in ((kernels.MAX_SETS, False), (2 * kernels.MAX_SETS, True)):
        buf = _block(H + n, nch, lambda k, c: 0)
        got = _block_sums(buf, H, H + n, nch, 20, [(0, 1)], [2], [mid] * 3)
        ref = _ref_pair(buf, H, H + n, nch, 0, 1, mid, mid, 20) + _ref_chan(buf, H, H + n, nch, 2, mid)
        eq(got, [_i32(x) for x in ref], "full-scale sums over %d sets" % n)
        eq(got != ref, wraps, "wrap visible over %d sets" % n)


@needs("viper")
def test_move_add_moves_a_cycle_into_the_batch_and_signs_reads_p_and_q_outside_the_band():
    src = array.array("i", [3, -4, 2000000000, 0])
    dst = array.array("i", [1, 1, 100, 7])
    assert_no_alloc(kernels.move_add, src, dst, 3)
    eq(list(dst), [4, -3, 2000000100, 7], "sums added")
    eq(list(src), [0, 0, 0, 0], "cycle cleared")
    # two elements, 12 words each: P proxy in word 5, Q proxy in word 9; band 10 per set
    acc = array.array("i", bytes(4 * 25))
    lim = array.array("i", [10, 10])
    acc[5] = 101  # element 0: P above +10 * 10
    acc[9] = -101  # Q below -100
    acc[12 + 5] = -100  # element 1: P inside the band
    acc[12 + 9] = 5000  # Q positive
    m = assert_no_alloc(kernels.signs, acc, lim, 2, 10)
    eq(m, 1 | (1 << 24) | (65536 << 1), "sign bits %x" % m)
    acc[12 + 5] = -101
    eq(kernels.signs(acc, lim, 2, 10), m | (256 << 1), "element 1 P negative")
    eq(kernels.signs(acc, lim, 2, 20), (65536 << 1), "a wider band (more sets) hides the rest")
