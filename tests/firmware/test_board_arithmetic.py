# Arithmetic that is the same on a board as on the unix port (issue 9's fault list): tick
# wraps, absolute indices, values of 2**30 and more, float epochs.  Each test drives the
# code path that broke, at the point where it breaks: ticks a moment before they wrap,
# counters near 2**30 (a heap int on a 32-bit board) or near 2**52 (where a double loses a
# fraction as a single-precision float does near 2**24), registers beyond 1.07 MWh.  Run
# them on the 32-bit, single-precision port too (UMETER_MICROPYTHON).
import json
import math

from metrology_rig import board, energy_j, rig, settle

from mptest import approx, assert_no_alloc, eq, heap, needs, scratch_dir

_PERIOD = 1 << 30
_MASK = _PERIOD - 1


def _wrap(t):
    return t & _MASK


# -- 1. zero crossings: a fraction inside the block, never an absolute sample index ------------
def _measure(big):
    # 49.7 Hz: 80.48 sets a cycle at 4 kS/s, so each crossing has a fraction to lose; a 4 %
    # 5th harmonic for THD
    scen = {"seed": 4, "freq": 49.7, "enob": 10.0, "voltage": {"rms": 230.0, "harmonics": [[5, 0.04, 0.0]]}}
    scen["currents"] = [{"rms": 10.0}]
    s, m = rig(board(), scen, None, {"quality": True})
    if big:
        m.sets = big - 1000
        m.measured_sets = big - 1000
        m._base = big  # where the meter's old absolute set index stood (not used any more)
    fs = []
    for _ in range(16):
        s.run(m, 0.2)
        fs.append(m.freq)
    snap = m.snapshot()
    return fs, snap["f"], snap["pq"]["thd"]["V1"], snap["pq"]["harmonics"]["V1"][4], m.sets, m.measured_sets


@needs("viper")
@heap("192k")
def test_a_meter_whose_counters_start_near_2_52_measures_frequency_and_thd_as_one_started_at_zero():
    # With the crossing as an absolute float index, near 2**52 (a double) the fraction is
    # gone: the per-cycle frequency reads 50.0 / 49.4 and THD moves; on the 32-bit port
    # the index stops moving at all and the frequency divides by zero.  Relative
    # crossings give the very same numbers as a meter started at zero.
    ref = _measure(0)
    got = _measure(1 << 52)
    for k in range(16):
        approx(got[0][k], ref[0][k], abs_=1e-6, what="cycle frequency %d" % k)
    approx(ref[0][15], 49.7, abs_=0.015, what="last cycle's frequency")
    approx(got[1], ref[1], abs_=1e-6, what="window frequency")
    approx(got[1], 49.7, abs_=0.002, what="window frequency")
    approx(got[2], ref[2], abs_=1e-6, what="voltage THD %")
    approx(got[3], 4.0, abs_=0.5, what="5th %")
    eq(0 <= got[4] < _PERIOD and 0 <= got[5] < _PERIOD, True, "set counters wrapped below 2**30")


# -- 2. checkpoints across the ticks_ms wrap ------------------------------------------------
@needs("viper")
@heap("160k")
def test_a_checkpoint_falls_due_across_the_ticks_ms_wrap():
    from meternode.store.checkpoint import Checkpointer, CheckpointStore

    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]})
    ck = Checkpointer(CheckpointStore(scratch_dir() + "/ck"), m, delta_mwh=500, period_s=10, min_interval_s=1)
    t0 = _PERIOD - 1500  # 1.5 s before ticks_ms wraps
    eq(ck.save(t0), False, "first call only starts the clock")
    settle(s, m, 1.0)  # 2.3 kW for 1 s: 639 mWh
    eq(ck.save(_wrap(t0 + 2000)), True, "2 s later, just after the wrap: the energy delta is due")
    settle(s, m, 0.1)
    eq(ck.save(_wrap(t0 + 2500)), False, "within the 1 s floor after the wrap")
    eq(ck.save(_wrap(t0 + 13000)), True, "the 10 s period with a change, after the wrap")
    settle(s, m, 0.1)
    # 7 days without a call: the difference no longer fits the ticks' half period
    eq(ck.save(_wrap(t0 + 13000 + 7 * 86400000)), True, "overdue after a week, not 'in the future'")


# -- 3. LoRa duty cycle across the wrap -------------------------------------------------------
def test_the_lora_duty_cycle_rest_ends_across_the_ticks_ms_wrap():
    from meternode.link.airtime import Governor

    gov = Governor("EU868", 5, daily_budget_ms=30000)
    now_s = 1800000000
    t = _PERIOD - 100  # an uplink 0.1 s before ticks_ms wraps
    eq(gov.wait_ms(20, t, now_s), 0, "free before the first uplink")
    toa = gov.sent_now(20, t)
    rest = toa * 100  # 1 % duty cycle: T on air, T * 99 off
    eq(gov.wait_ms(20, _wrap(t + 50), now_s), rest - 50, "resting, just after the wrap")
    eq(gov.wait_ms(20, _wrap(t + rest), now_s), 0, "free again when the rest is over")
    gov.sent_now(20, _wrap(t + rest))
    # the link stays silent for 7 days (LoRa as a fallback): never a wait of days
    eq(gov.wait_ms(20, _wrap(t + rest + 7 * 86400000), now_s + 7 * 86400), 0, "free after a week")


# -- 4. pulses across the wrap -------------------------------------------------------------
def test_pulses_flow_and_a_leak_across_the_ticks_ms_wrap():
    from meternode.pulses import PulseMeter

    pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 20, "leak_s": 60.0, "flow_timeout_s": 30.0})
    t0 = _PERIOD - 35000  # a drip every 5 s from 35 s before the wrap to 70 s after it
    for k in range(22):
        t = t0 + 5000 * k
        pm.edge(_wrap(t), 0)
        pm.edge(_wrap(t + 3), 1)  # bounce on closing
        pm.edge(_wrap(t + 6), 0)
        pm.poll(_wrap(t + 40))
        pm.edge(_wrap(t + 200), 1)
        pm.poll(_wrap(t + 300))
    now = _wrap(t0 + 5000 * 21 + 1000)
    eq(pm.count, 22, "every pulse counted, those across the wrap too")
    eq(pm.flow(now), 720, "litres per hour at 1 l per 5 s, after the wrap")
    eq(pm.leak(now), True, "flow for over 60 s, spanning the wrap: a leak")
    eq(pm.leak(_wrap(t0 + 5000 * 21 + 31000)), False, "the leak clears when the flow stops")


# -- 5. the outbox token bucket after a long outage ---------------------------------------------
class _BoardTicks:
    # ticks_ms / ticks_us of a board (30 bits, wrapping), moved by hand
    def __init__(self, ms, us):
        self.ms = ms
        self.us = us

    def advance(self, ms):
        self.ms = _wrap(self.ms + ms)
        self.us = _wrap(self.us + 1000 * ms)

    def now_ms(self):
        return self.ms

    def now_us(self):
        return self.us


def _diff(a, b):
    d = (a - b) & _MASK
    return d - _PERIOD if d >= _PERIOD >> 1 else d


@heap("192k")
def test_a_600_s_outage_leaves_the_outbox_token_bucket_full_not_blocked():
    from meternode.link import outbox
    from meternode.store.log import Cursor, RecordLog

    d = scratch_dir()
    clk = _BoardTicks(_PERIOD - 3000, _PERIOD - 3000000)
    saved = (outbox._now, getattr(outbox, "_now_us", None), outbox._diff)
    outbox._now = clk.now_ms
    outbox._now_us = clk.now_us  # the bucket once ran on ticks_us
    outbox._diff = _diff
    try:
        ob = outbox.Outbox(RecordLog(d + "/log", 4096, 65536), Cursor(d + "/cur"), "n", rate=20.0, window=8)
        taken = 0
        while ob._take_token():
            taken += 1
        eq(taken, 8, "a full bucket at start")
        clk.advance(600000)  # a 600 s outage: longer than half the ticks_us period
        eq(ob._take_token(), True, "publishing resumes at once after the outage")
        clk.advance(50)
        eq(ob._take_token(), True, "and keeps its rate")
    finally:
        outbox._now, outbox._now_us, outbox._diff = saved


# -- 6. freeze records and telemetry energy from the integer registers ------------------------
@needs("viper")
@heap("192k")
def test_freeze_records_and_telemetry_energy_are_the_registers_exact_integers():
    from meternode.link import telemetry
    from meternode.store import records
    from meternode.store.log import RecordLog
    from meternode.store.profile import ProfileRecorder

    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}, {"rms": 0.0}]})
    settle(s, m, 0.5)
    st = m.registers.state()
    big = (1 << 53) + 3  # mWh: beyond a double's integers, as 16.8 kWh is beyond a float32's
    st["r"][0] = big  # element 0 import
    st["r"][1] = 10**10 + 1  # element 0 export: 10 MWh and 1 mWh
    m.registers.restore(st)
    settle(s, m, 0.3)  # registers move on from there
    imp = m.registers.get(0, 0)
    eq(imp - big > 0, True, "import registered on top of 2**53 mWh")
    snap = m.snapshot()
    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900, ["I1"])
    day = 20000 * 86400
    rec.add(day - 60, snap)
    rec.add(day + 60, snap)  # a new UTC day: the DAILY freeze
    r = log.reader()
    got = None
    while r.next():
        if r.kind == records.DAILY:
            got = records.fields(r.kind, r.payload[: r.n])
    eq((got["e_imp_mwh"], got["e_exp_mwh"]), (imp, 10**10 + 1), "daily freeze, exact mWh")
    buf = bytearray(2048)
    text = str(buf[: telemetry.encode_into(buf, "n", 1, day, snap, 0, ["I1"])], "utf-8")
    want = '"e_imp_wh": %d.%03d' % (imp // 1000, imp % 1000)
    eq(want in text, True, "element energy as an exact decimal: %s in %s" % (want, text[:200]))
    eq('"e_exp_wh": 10000000.001' in text, True, "10 MWh and 1 mWh to the mWh")
    d = json.loads(text)
    eq((d["sample_rate"] > 3999.0, d["gaps"], d["lost_sets"]), (True, 0, 0), "the measured timebase")


# -- 7. nothing of 2**30 or more made per tick or block -----------------------------------------
@needs("viper")
@heap("160k")
def test_set_counters_wrap_below_2_30_and_the_registers_stay_small_ints_beyond_1_07_mwh():
    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]})
    m.sets = _PERIOD - 100
    m.measured_sets = _PERIOD - 100
    m.cycles = _PERIOD - 5
    s.run(m, 1.0)
    for name in ("sets", "measured_sets", "cycles"):
        x = getattr(m, name)
        eq(0 <= x < 4100, True, "%s wrapped: %d" % (name, x))
    r = m.registers
    st = r.state()
    st["r"][0] = 3 * _PERIOD + 5  # 3.2 MWh
    r.restore(st)
    assert_no_alloc(r.add_int, 0, 1000000, 1800000)  # a window's registration
    eq(r.get(0, 0), 3 * _PERIOD + 5 + 1000000, "whole value")
    eq(r.low(0, 0) < _PERIOD and r.hi[0] < _PERIOD, True, "stored as small words")
    settle(s, m, 0.5)
    eq(r.get(0, 0) > 3 * _PERIOD + 1000000 + 300, True, "registers keep counting")


@needs("viper")
@heap("160k")
def test_the_per_block_checkpoint_check_allocates_nothing_with_registers_beyond_1_07_mwh():
    from meternode.store.checkpoint import Checkpointer, CheckpointStore

    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]})
    st = m.registers.state()
    n = m.registers.n
    st["r"][8 * n] = 5 * _PERIOD + 7  # total import: 5.4 MWh
    st["r"][8 * n + 1] = 2 * _PERIOD  # total export
    m.registers.restore(st)
    ck = Checkpointer(CheckpointStore(scratch_dir() + "/ck"), m, delta_mwh=500, period_s=10, min_interval_s=1)
    ck.save(_PERIOD - 1000)
    settle(s, m, 1.0)
    eq(assert_no_alloc(ck.due, _PERIOD - 500), False, "within the floor")
    eq(assert_no_alloc(ck.due, 500), True, "due after the wrap, 639 mWh moved")


# -- 8. the sim clock: integer epoch seconds, edges in order ------------------------------------
@needs("viper")
@heap("160k")
def test_the_sim_clock_keeps_integer_epoch_seconds_and_wrapping_ticks():
    s, m = rig(board(), {"seed": 1, "epoch": 1800000000, "currents": [{"rms": 1.0}]})
    clock = s._clock
    eq(_PERIOD - 10000 < clock.ticks_ms() < _PERIOD, True, "ticks_ms start a few seconds before the wrap")
    eq(_PERIOD - 10000000 < clock.ticks_us() < _PERIOD, True, "so do ticks_us")
    ms0 = clock.ticks_ms()
    s.run(m, 5.0)
    t = clock.time()
    eq((type(t), t), (int, 1800000005), "5 s later, to the second")
    eq(clock.ticks_diff(clock.ticks_ms(), ms0), 5000, "ticks_ms ran 5000 ms")
    eq(clock.ticks_ms() < 10000, True, "across the wrap")
    clock.set_time(1900000000)
    eq(clock.time(), 1900000000, "set")


def test_pulse_edges_late_in_a_long_run_come_out_in_order_with_their_levels():
    from meternode.hal.sim_pulses import SimPulseTrain

    # 20 h after the train's start: ms since start no longer hold a fraction in single
    # precision, bounce edges 0.1..2 ms apart would tie and swap in an unstable sort
    tr = SimPulseTrain({"rate_hz": 50.0, "count": 3, "bounce": 4, "bounce_ms": 2.0, "start_ms": 72000000.0})
    edges = tr.edges_until(72000000 + 1000)
    eq(len(edges), 3 * 2 * 9, "3 pulses x 2 transitions x (1 + 8 toggles)")
    for k in range(1, len(edges)):
        if _diff(edges[k][0], edges[k - 1][0]) < 0:
            raise AssertionError("edge %d at %d before %d" % (k, edges[k][0], edges[k - 1][0]))
    levels = [lv for _, lv in edges]
    eq(levels[:9], [0, 1, 0, 1, 0, 1, 0, 1, 0], "press: clean edge then bounce ending closed")
    eq(levels[9:18], [1, 0, 1, 0, 1, 0, 1, 0, 1], "release: ending open")


# -- days of simulated time, fast: counters past 2**30, many wraps -----------------------------
@needs("viper")
@heap("160k")
def test_three_and_a_half_simulated_days_coast_past_2_30_sets_with_exact_energy_and_clock():
    # SimSampler.coast fast-forwards a steady load without making samples (the endurance
    # soak's tool): the clock, the sim's phase and the meter's counters run on, and the meter
    # registers the interval at its measured power.  3.5 days at 4 kS/s is 1.21e9 sets (past
    # 2**30); ticks_ms wrap once (4 s in), ticks_us 282 times.
    from meternode.store.checkpoint import Checkpointer, CheckpointStore

    s, m = rig(board(), {"seed": 1, "epoch": 1800000000, "enob": 10.0, "currents": [{"rms": 10.0}]})
    clock = s._clock
    ms0, us0 = clock.ticks_ms(), clock.ticks_us()  # the default start, a few seconds before the wraps
    eq((ms0 > _MASK - 5000, us0 > _MASK - 5000000), (True, True), "ticks start just before the wraps")
    m.use_rate(s.rate_actual)
    ck = Checkpointer(CheckpointStore(scratch_dir() + "/ck"), m, delta_mwh=50000, period_s=3600, min_interval_s=60)
    settle(s, m, 2.0)
    ck.save(clock.ticks_ms())
    p = m.p[0]
    e0 = energy_j(m.registers, 0, 0)
    saves = 0
    hours = 84
    for _ in range(hours):
        s.coast(m, 3600.0)
        if ck.save(clock.ticks_ms()):
            saves += 1
    s.run(m, 1.0)
    m.flush()
    e = energy_j(m.registers, 0, 0) - e0
    approx(e / (p * (hours * 3600 + 1.0)), 1.0, abs_=2e-4, what="energy over 3.5 days at the measured power")
    eq(m.registers.get(0, 0) > 190000000, True, "190 kWh: %d mWh" % m.registers.get(0, 0))
    eq((type(clock.time()), clock.time()), (int, 1800000000 + hours * 3600 + 3), "epoch to the second")
    approx(m.freq, 50.0, abs_=0.02, what="frequency after the coast")
    sets = 8000 + hours * 14400000 + 4000  # 2 s, the coasts (whole blocks), 1 s
    eq(m.sets, sets & _MASK, "set counter, wrapped past 2**30")
    eq(clock.ticks_ms(), (ms0 + sets // 4) & _MASK, "ticks_ms")
    eq(clock.ticks_us(), (us0 + sets * 250) & _MASK, "ticks_us")
    eq(saves, hours, "a checkpoint every hour (energy moved 193 Wh each)")


def _batch(m):
    return (m.p[0], m.q[0], m.s[0], m.irms[0], m.vrms[0])


def _same(got, ref, what):
    # the same to 1e-7 (float32 keeps 6e-8): what a batch of identical samples gives
    for k, name in enumerate(("P", "Q", "S", "Irms", "Vrms")):
        approx(got[k], ref[k], rel=1e-7, what="%s %s" % (name, what))


@needs("viper")
@heap("160k")
def test_a_steady_signal_measures_the_same_power_in_every_batch_for_a_minute_and_across_coasts():
    # 60 Hz at 1 kS/s: 3 cycles are 50 sets, one batch (batch_cycles 3) and a block of 100
    # sets is 2 of them, so a steady, noise-free signal repeats exactly and every batch's
    # P, Q, S, Irms and Vrms must be the same, whatever the uptime: what Meter.coast
    # registers a fast-forwarded stretch at, and what telemetry and policy thresholds read.
    # The sim's waveform phase used to be a float accumulated set by set: in single
    # precision it drifted (7e-5 rad/s at 50 Hz, 1 kS/s), the pattern of the quantised
    # samples precessed and per-batch P wandered by hundreds of ppm (2261.72 -> 2259.90 W
    # in 10 s at 12 A, 35 degrees), and a coast of an hour (1e6 rad in a float) lost the
    # phase.  A coast of 3e13 sets (1.1e13 rad: a double's step there is 0.002 rad) does
    # that to a double.
    b = board(rate=1000, block=100)
    scen = {"seed": 1, "freq": 60.0, "voltage": {"rms": 230.0}, "currents": [{"rms": 12.0, "angle": 35.0}]}
    s, m = rig(b, scen, None, {"batch_cycles": 3, "mains_hz": 60.0})
    s.run(m, 0.5)
    ref = _batch(m)
    approx(ref[0], 2760.0 * 0.8191520, rel=1e-3, what="P at 12 A, 35 degrees")
    # what the batch's samples carry, in integers (any 50 sets are one whole period; no skew
    # and no phase: the interpolation passes the same-set product through)
    buf = s._bufs[0]  # the last block run() fed
    sv = si = svv = sii = svi = 0
    for k in range(50):
        v = buf[3 * k]
        i = buf[3 * k + 1]
        sv += v
        si += i
        svv += v * v
        sii += i * i
        svi += v * i
    approx(ref[0], (50 * svi - sv * si) * 0.01 / 2500, rel=1e-6, what="P against the samples' exact sums")
    approx(ref[4], 0.2 * math.sqrt(50 * svv - sv * sv) / 50, rel=1e-6, what="Vrms against the samples")
    approx(ref[3], 0.05 * math.sqrt(50 * sii - si * si) / 50, rel=1e-6, what="Irms against the samples")
    lo = hi = ref[0]
    for k in range(600):  # a minute, block by block (2 batches each)
        s.run(m, 0.1)
        got = _batch(m)
        lo = min(lo, got[0])
        hi = max(hi, got[0])
        if k % 50 == 49:
            _same(got, ref, "at %.1f s" % (0.5 + 0.1 * (k + 1)))
    approx(hi - lo, 0.0, abs_=1e-7 * ref[0], what="spread of per-batch P over a minute (W)")
    for secs, what in ((3600.0, "an hour"), (3e10, "3e13 sets")):
        s.coast(m, secs)
        s.run(m, 0.5)
        _same(_batch(m), ref, "after a coast of " + what)


def test_the_link_layers_ticks_start_a_few_seconds_before_they_wrap():
    # every firmware test (mprun) and virtual node (the sim HAL) starts the wall ticks the
    # link layer reads (meternode.ticks.ms) near a wrap, as on a board they could be
    from meternode import ticks

    since_ms = ticks.diff(ticks.ms(), _PERIOD - 4000)
    eq(0 <= since_ms < 60000, True, "ticks_ms %d ms after the start point" % since_ms)
    eq(ticks.ms() < _PERIOD, True, "30-bit")
    t = ticks.ms()
    eq(ticks.diff(ticks.add(t, 5000), t), 5000, "ticks_add / ticks_diff across the wrap")
    eq(ticks.add(_PERIOD - 1, 2), 1, "wraps at 2**30")


def test_an_hour_coasted_at_once_closes_the_measured_seconds_as_block_by_block_would():
    # Seconds (the policy engine's measured seconds) jumps over what its 16-slot ring would
    # overwrite unread: a coasted hour costs 17 closes, not 3600, with the same result
    from meternode.metrology.timebase import Seconds

    a = Seconds(4000)
    b = Seconds(4000)
    for n in (160, 14400000, 160, 80000, 3999, 1):
        a.sets(n, lambda: 7)
        while n > 0:
            k = min(n, 160)
            b.sets(k, lambda: 7)
            n -= k
        eq((a.closed, a._left), (b.closed, b._left), "seconds closed and the open one")
    o1 = [0] * 6
    o2 = [0] * 6
    for i in range(16):
        eq(a.get(a.closed - 1 - i, o1), b.get(b.closed - 1 - i, o2), "second %d back" % i)
    eq(a.closed, 3621, "3621 s")
