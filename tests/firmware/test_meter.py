# The meter on the sim front end: per-cycle quantities against the analytic values.
import math

from metrology_rig import board, energy_j, rig, settle

from meternode.config import ConfigError
from mptest import approx, eq, heap, needs, raises


def _scen(rms=10.0, angle=0.0, **kw):
    s = {"seed": 3, "voltage": {"rms": 230.0}, "currents": [{"rms": rms, "angle": angle}, {"rms": 0.0}]}
    s.update(kw)
    return s


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_frequency_tracks_45_to_55_hz_within_2_mhz_over_a_window():
    for f in (45.0, 47.5, 50.0, 52.5, 55.0):
        s, m = rig(board(), _scen(freq=f, enob=10.0))
        s.run(m, 1.0)
        approx(m.freq, f, abs_=0.02, what="last cycle at %g Hz" % f)
        snap = m.snapshot()
        approx(snap["f"], f, abs_=0.002, what="window mean at %g Hz" % f)
        s = m = None  # free this rig before the next


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_frequency_follows_a_step_and_a_drift():
    s, m = rig(board(), _scen(events=[{"at": 1.0, "freq": 51.0}]))
    s.run(m, 0.9)
    approx(m.freq, 50.0, abs_=0.002, what="before the step")
    s.run(m, 0.5)
    approx(m.freq, 51.0, abs_=0.002, what="after the step")
    s = m = None
    s, m = rig(board(), _scen(drift={"hz": 1.0, "period_s": 4.0}))
    lo, hi = 99.0, 0.0
    for _ in range(40):
        s.run(m, 0.1)
        lo = min(lo, m.freq)
        hi = max(hi, m.freq)
    approx(lo, 49.0, abs_=0.05, what="lowest")
    approx(hi, 51.0, abs_=0.05, what="highest")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_p_q_s_pf_and_quadrant_in_all_four_quadrants_with_skew_and_ct_lead_corrected():
    # 20 us skew per slot and a CT leading 2 degrees, both corrected from the calibration.
    b = board(skew_us=20.0)
    for angle, quad in ((30.0, 1), (150.0, 2), (210.0, 3), (330.0, 4)):
        scen = _scen(rms=10.0, angle=angle)
        scen["currents"][0]["lead"] = 2.0
        s, m = rig(b, scen, {"I1": {"phase": 2.0}})
        s.run(m, 1.0)
        snap = m.snapshot()
        e = snap["elements"][0]
        a = math.radians(angle)
        approx(e["p"], 2300.0 * math.cos(a), abs_=1.0, what="P at %g deg" % angle)
        approx(e["q"], 2300.0 * math.sin(a), abs_=1.0, what="Q at %g deg" % angle)
        approx(e["s"], 2300.0, rel=5e-4, what="S")
        approx(e["pf"], math.cos(a), abs_=5e-4, what="PF")
        eq(e["quadrant"], quad, "quadrant at %g deg" % angle)
        approx(snap["v"], 230.0, rel=5e-4, what="Vrms")
        approx(e["i"], 10.0, rel=5e-4, what="Irms")
        s = m = None


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_uncorrected_ct_lead_shows_as_power_error():
    # The same 2-degree lead without calibration: P at 60 degrees reads cos(58)/cos(60).
    scen = _scen(rms=10.0, angle=60.0)
    scen["currents"][0]["lead"] = 2.0
    s, m = rig(board(), scen)
    s.run(m, 1.0)
    approx(m.snapshot()["elements"][0]["p"], 2300.0 * math.cos(math.radians(58.0)), abs_=1.0, what="P")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_phase_table_follows_the_current():
    # CT lead 1.6 deg at 1 A and 0.4 deg at 20 A; the table interpolates between.
    table = [[1.0, 1.6], [20.0, 0.4]]
    for amps, lead in ((1.0, 1.6), (20.0, 0.4)):
        scen = _scen(rms=amps, angle=60.0, enob=12.0)
        scen["currents"][0]["lead"] = lead
        s, m = rig(board(), scen, {"I1": {"phase_table": table}})
        s.run(m, 1.0)
        approx(m.snapshot()["elements"][0]["p"], 115.0 * amps, rel=2e-3, what="P at %g A" % amps)
        s = m = None


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_calibration_changes_at_run_time_and_bad_values_name_the_key():
    s, m = rig(board(), _scen(rms=10.0))
    s.run(m, 0.5)
    m.snapshot()
    m.set_calibration("I1", {"gain": 1.01})
    s.run(m, 0.5)
    approx(m.snapshot()["elements"][0]["p"], 2323.0, abs_=1.0, what="P with gain 1.01")
    eq(m.calibration()["I1"]["gain"], 1.01, "gain read back")
    e = raises(ConfigError, m.set_calibration, "I1", {"gian": 1.0})
    eq("calibration.I1.gian" in str(e), True, str(e))
    e = raises(ConfigError, m.set_calibration, "I1", {"phase_table": [[5.0, 1.0], [2.0, 1.0]]})
    eq("phase_table[1]" in str(e), True, str(e))
    e = raises(ConfigError, rig, board(), _scen(), {"I9": {"gain": 1.0}})
    eq("calibration.I9" in str(e), True, str(e))
    e = raises(ConfigError, rig, board(), _scen(), None, {"netting": "both"})
    eq("metrology.netting" in str(e), True, str(e))


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_no_creep_at_115_percent_voltage_and_start_at_class_02s_starting_current():
    b = board()
    for ch in b["channels"][1:]:
        ch["scale"] = 0.0047  # In = 5 A uses the ADC's range, like a real CT input
        ch["nominal"] = 5.0
    s, m = rig(b, {"seed": 5, "enob": 8.7, "voltage": {"rms": 264.5}, "currents": []})
    settle(s, m, 10.0)
    eq(sum(m.registers.r) + sum(m.registers.rem), 0, "registers after 10 s without current")
    s = m = None  # free the first rig before the second is made
    s, m = rig(b, {"seed": 5, "enob": 8.7, "voltage": {"rms": 230.0}, "currents": [{"rms": 0.005}]})
    settle(s, m, 10.0)
    e = energy_j(m.registers, 0, 0)
    approx(e, 1.15 * m.measured_sets / m.rate, rel=0.1, what="energy at 0.1 % In")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_import_never_runs_backwards_when_the_load_turns_to_export():
    s, m = rig(board(), _scen(rms=10.0, events=[{"at": 2.0, "current": 0, "angle": 180.0}]))
    last = 0
    for _ in range(10):
        settle(s, m, 0.4)
        imp = m.registers.get(0, 0)
        eq(imp >= last, True, "import register monotonic")
        last = imp
    approx(m.registers.get(0, 0), 2300.0 * 2.0 / 3.6, rel=0.02, what="import mWh over 2 s")
    approx(m.registers.get(0, 1), 2300.0 * 2.0 / 3.6, rel=0.02, what="export mWh over 2 s")


@needs("viper")
def _two_mains():
    b = board()
    for ch in b["channels"][1:]:
        ch["role"] = "main"  # e.g. two phases of one grid connection
    return b


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_vector_and_phase_netting_of_the_total():
    scen = {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 5.0}, {"rms": 5.0, "angle": 180.0}]}
    s, m = rig(_two_mains(), scen, None, {"netting": "vector"})
    settle(s, m, 2.0)
    eq(m.registers.total_import() < 5, True, "vector: import cancels export")
    eq(m.registers.total_export() < 5, True, "vector: export cancels import")
    s = m = None  # free the first rig before the second is made
    s, m = rig(_two_mains(), scen, None, {"netting": "phase"})
    settle(s, m, 2.0)
    eq(m.registers.total_import(), m.registers.get(0, 0), "phase: total import = element import")
    eq(m.registers.total_export(), m.registers.get(1, 1), "phase: total export = element export")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_a_sub_circuit_ct_is_registered_but_not_counted_in_the_total():
    # sim board: I1 is the grid connection ("main"), I2 a sub-circuit ("circuit") behind it
    scen = {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 5.0}, {"rms": 3.0}]}
    for netting in ("vector", "phase"):
        s, m = rig(board(), scen, None, {"netting": netting})
        settle(s, m, 2.0)
        approx(m.registers.get(1, 0), 230.0 * 3.0 * 2.0 / 3.6, rel=0.02, what=netting + ": circuit import mWh")
        approx(m.registers.total_import(), m.registers.get(0, 0), abs_=1, what=netting + ": total = grid CT only")
        s = m = None


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_tariff_hook_and_reactive_quadrant_registers():
    s, m = rig(board(), _scen(rms=10.0, angle=60.0))
    settle(s, m, 1.0)
    m.set_tariff(2)
    settle(s, m, 1.0)
    t0 = m.registers.tariff_registers(0)[0]
    t2 = m.registers.tariff_registers(2)[0]
    approx(t0 + t2, m.registers.total_import(), abs_=1, what="tariffs add up")
    approx(t2, 1150.0 / 3.6, rel=0.02, what="tariff 2 import mWh")
    q = m.registers.quadrants(0)
    eq(q[1] + q[2] + q[3], 0, "only quadrant 1")
    approx(q[0], m.registers.get(0, 0) * math.sqrt(3.0), rel=0.01, what="Q1 varh = tan(60) * Wh")
    raises(ValueError, m.set_tariff, 4)


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_maximum_demand_over_the_configured_period():
    scen = _scen(rms=5.0, events=[{"at": 4.0, "current": 0, "rms": 10.0}, {"at": 6.0, "current": 0, "rms": 2.0}])
    s, m = rig(board(), scen, None, {"demand_s": 2.0})
    settle(s, m, 10.0)
    md = m.registers.md
    approx(md[0] / 1000.0, 2300.0, rel=0.02, what="maximum demand W")
    eq(md[1], 6, "its period's end, sample-clock seconds (no wall clock)")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_demand_periods_end_on_the_wall_clock_and_a_part_period_is_no_maximum():
    # The node starts 1 s past a 4-s boundary (2026-01-01 00:00:01 UTC) with 20 A for 2.5 s: a
    # part period, higher than any whole one, which a utility's block demand does not bill.
    # The whole periods are [7, 11) at 10 A and [11, 15) at 5 A of the run; periods of the
    # sample clock from the start would have made the first, 14.4 A, the maximum.
    t0 = 1767225601
    ev = [{"at": at, "current": 0, "rms": a} for at, a in ((2.5, 5.0), (7.0, 10.0), (11.0, 5.0))]
    s, m = rig(board(), _scen(rms=20.0, epoch=t0, events=ev), None, {"demand_s": 4})
    m.energy.clock = s._clock
    seen = []
    r = m.registers
    demand = r.demand
    r.demand = lambda w, at, whole: (seen.append((round(w), at - t0, whole)), demand(w, at, whole))
    settle(s, m, 16.0)
    # the first period runs 4 s from the start, then a part period to the grid, then whole ones
    eq([(at, whole) for _, at, whole in seen], [(4, False), (7, False), (11, True), (15, True)], "period ends, whole")
    for w, at, _ in seen[2:]:
        approx(w, 2300.0 if at == 11 else 1150.0, rel=0.02, what="demand of the period ending at +%d s" % at)
    approx(r.md[0] / 1000.0, 2300.0, rel=0.02, what="maximum demand W")
    eq((r.md[1] - t0, r.md[1] % 4), (11, 0), "its end, on the clock's 4-s grid")
    raises(ConfigError, rig, board(), _scen(), None, {"demand_s": 7})
    raises(ConfigError, rig, board(), _scen(), None, {"demand_s": 2.5})


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_interruption_measures_nothing_and_the_meter_recovers():
    s, m = rig(board(), _scen(rms=10.0, events=[{"at": 1.0, "voltage": 0.0, "for": 0.5}]))
    settle(s, m, 0.9)
    s.run(m, 0.4)
    eq(m.freq, 0.0, "no frequency without voltage")
    eq(m.unmeasured > 0, True, "runs closed without mains")
    s.run(m, 1.0)
    approx(m.freq, 50.0, abs_=0.01, what="frequency after the interruption")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_sampling_is_gap_free_every_set_is_inside_a_measured_cycle():
    s, m = rig(board(), _scen(rms=10.0, drift={"hz": 1.0, "period_s": 3.0}, enob=8.7))
    s.run(m, 6.0)
    # everything except the set before the first crossing and the open cycle at the end
    eq(m.sets - m.measured_sets <= 2 * 82, True, "sets outside cycles: %d" % (m.sets - m.measured_sets))
    approx(m.cycles, 300, abs_=2, what="cycles in 6 s")


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_three_phase_board_measures_each_phase_on_its_own_voltage():
    b = board("pico_w_mcp3208", skew_us=0.0)
    scen = {
        "seed": 2,
        "voltages": [{"rms": 230.0, "angle": 0.0}, {"rms": 231.0, "angle": 120.0}, {"rms": 229.0, "angle": 240.0}],
        "currents": [{"rms": 10.0, "angle": 0.0}, {"rms": 20.0, "angle": 30.0}, {"rms": 5.0, "angle": 180.0}],
    }
    for ch in b["channels"]:
        ch.pop("cal", None)
    s, m = rig(b, scen, None, {"quality": False})  # metering only: keep the 128k heap for it
    s.run(m, 1.0)
    snap = m.snapshot()
    ps = [e["p"] for e in snap["elements"]]
    approx(ps[0], 2300.0, rel=2e-3, what="P1")
    approx(ps[1], 231.0 * 20.0 * math.cos(math.radians(30.0)), rel=2e-3, what="P2")
    approx(ps[2], -229.0 * 5.0, rel=2e-3, what="P3")
    approx(snap["voltages"]["V2"], 231.0, rel=1e-3, what="V2")
    eq([e["name"] for e in snap["elements"]], ["I1", "I2", "I3"], "element names")


def _registers(m):
    r = m.registers
    return [energy_j(r, 0, k) for k in range(8)]


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_batches_of_cycles_register_what_cycle_by_cycle_conversion_registers():
    # The default batch (metrology.batch_cycles = 5) against every cycle on its own, on
    # a load that turns to export mid-batch while the frequency drifts: the sign change
    # starts a new batch, so import, export and the four quadrants agree closely.  Field
    # order: import, export, Q1..Q4, apparent import, apparent export.
    scen = _scen(rms=10.0, angle=30.0, enob=8.7, drift={"hz": 0.5, "period_s": 2.0})
    scen["events"] = [{"at": 1.03, "current": 0, "angle": 200.0}, {"at": 2.51, "current": 0, "angle": 300.0}]
    res = []
    for opts in ({"batch_cycles": 1}, None):
        s, m = rig(board(), scen, None, opts)
        settle(s, m, 4.0)
        res.append((_registers(m), m.measured_sets, m.cycles))
        s = m = None
    (one, n1, c1), (bat, n5, c5) = res
    eq((n5, c5), (n1, c1), "measured sets and cycles")
    # measured: active within 2e-6; reactive and apparent within 0.1 % (the weights follow
    # a smoothed frequency, per cycle or per batch, which lags this fast drift differently)
    for k in range(8):
        tol = 1e-4 if k < 2 else 2e-3
        approx(bat[k], one[k], abs_=tol * one[k] + 0.5, what="register field %d (J)" % k)
    eq(one[1] > 1000.0 and one[5] > 100.0 and one[4] > 100.0, True, "export and Q3/Q4 registered: %r" % one)


@heap("160k")  # meter + sim HAL compiled from source
@needs("viper")
def test_a_batch_never_holds_more_than_max_sets_and_bad_batch_options_name_the_key():
    from meternode.metrology import kernels

    b = board("esp32_devkitc")  # 2 kS/s: 40 sets a cycle
    scen = {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 5.0}]}
    s, m = rig(b, scen, None, {"batch_cycles": 64, "quality": False})
    seen = []
    cycle = m.energy.cycle  # each converted batch goes to the energy gate with its sets

    def spy(ps, qs, ss, n):
        seen.append(n)
        cycle(ps, qs, ss, n)

    m.energy.cycle = spy
    s.run(m, 1.0)
    eq(max(seen) <= kernels.MAX_SETS, True, "largest batch %d sets" % max(seen))
    eq(max(seen) > 300, True, "batches fill up to the bound: %d" % max(seen))
    s = m = None
    e = raises(ConfigError, rig, board(), _scen(), None, {"batch_cycles": 0})
    eq("metrology.batch_cycles" in str(e), True, str(e))
