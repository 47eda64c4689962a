# Energy registers: integer sub-units with exact remainders, netting, tariffs, state.
from metrology_rig import energy_j

from meternode.metrology.registers import EXP, IMP, S_IMP, Registers, split
from mptest import approx, eq, raises


def _fine(n, rows, total=None):
    # rows: per element (p, q, s) joules for one cycle -> fields as the meter builds them
    f = [0.0] * (8 * (n + 1))
    for e, (p, q, s) in enumerate(rows):
        split(f, 8 * e, p, q, s)
    if total:
        split(f, 8 * n, total[0], total[1], total[2])
    return f


def test_split_sorts_energy_by_sign_and_quadrant():
    f = [0.0] * 8
    split(f, 0, 10.0, 5.0, 11.0)  # Q1
    split(f, 0, -4.0, 3.0, 5.0)  # Q2
    split(f, 0, -4.0, -3.0, 5.0)  # Q3
    split(f, 0, 6.0, -8.0, 10.0)  # Q4
    eq(f, [16.0, 8.0, 5.0, 3.0, 3.0, 8.0, 21.0, 10.0], "fields")


def test_remainders_carry_so_many_small_cycles_add_up_exactly():
    r = Registers(1)
    for _ in range(100000):  # 100000 cycles of 46.3 mJ = 4630 J = 1286.11 mWh
        f = _fine(1, [(0.0463, 0.0, 0.0463)], (0.0463, 0.0, 0.0463))
        r.commit(f, 0.0463, 0.0)
    eq(r.get(0, IMP), 1286, "mWh")
    approx(energy_j(r, 0, IMP), 4630.0, rel=1e-9, what="joules with the remainder")
    eq(r.tariff_registers(0), (1286, 0), "tariff 0")


def test_phase_netting_sums_elements_and_vector_netting_takes_the_total():
    rows = [(3600.0, 0.0, 3600.0), (-3600.0, 0.0, 3600.0)]
    v = Registers(2, netting="vector")
    v.commit(_fine(2, rows, (0.0, 0.0, 0.0)), 0.0, 0.0)
    eq((v.total_import(), v.total_export()), (0, 0), "vector: nets to nothing")
    eq((v.get(0, IMP), v.get(1, EXP)), (1000, 1000), "elements keep their own")
    p = Registers(2, netting="phase")
    p.commit(_fine(2, rows), 0.0, 0.0)
    eq((p.total_import(), p.total_export()), (1000, 1000), "phase: both directions")
    eq(p.get(2, S_IMP) + p.get(2, 7), 2000, "apparent of both")
    eq(p.tariff_registers(0), (1000, 1000), "tariff follows the netting")


def test_tariff_index_and_bad_inputs():
    r = Registers(1, tariffs=2)
    r.set_tariff(1)
    r.commit(_fine(1, [(7200.0, 0.0, 7200.0)], (7200.0, 0.0, 7200.0)), 7200.0, 0.0)
    eq((r.tariff_registers(0), r.tariff_registers(1)), ((0, 0), (2000, 0)), "tariff 1 took it")
    raises(ValueError, r.set_tariff, 2)
    raises(ValueError, r.set_tariff, "1")
    raises(ValueError, Registers, 1, 0)
    raises(ValueError, Registers, 1, 4, "balanced")


def test_state_restores_exactly_and_rejects_other_layouts_and_bad_values():
    r = Registers(2)
    r.commit(_fine(2, [(5000.0, 1.0, 5000.0), (-20.0, -1.0, 20.0)], (4980.0, 0.0, 4980.0)), 4980.0, 0.0)
    r.demand(1234.5, 900, True)
    st = r.state()
    r2 = Registers(2)
    r2.restore(st)
    eq(r2.state(), st, "same state")
    eq(r2.md[:2], [1234500, 900], "maximum demand")
    e = raises(ValueError, Registers(3).restore, st)
    eq("2 elements" in str(e), True, str(e))
    bad = dict(st, r=st["r"][:-1])
    raises(ValueError, Registers(2).restore, bad)
    bad = dict(st, rem=[-1] + st["rem"][1:])
    e = raises(ValueError, Registers(2).restore, bad)
    eq("rem" in str(e), True, str(e))
    eq(Registers(2).get(0, EXP), 0, "fresh registers")


def test_maximum_demand_is_per_billing_month_and_the_last_months_waits_for_its_freeze():
    # Whole periods' demands at their ends (UTC epoch s); a period ending at 00:00 on the 1st
    # is the month before's. Part periods are never a maximum.
    feb = 1706745600  # 2024-02-01 00:00 UTC
    jan, mar = 2024 * 12, 2024 * 12 + 2
    r = Registers(1)
    r.demand(9000.0, feb - 3600, False)  # a part period, higher than any whole one
    r.demand(2000.0, feb - 7200, True)
    r.demand(3000.0, feb, True)  # ends at midnight: January's
    r.demand(1000.0, feb - 900, True)
    eq(r.md, [3000000, feb, jan, 0, 0, 0], "January's maximum, part periods left out")
    r.demand(500.0, feb + 900, True)  # February's first, before the MONTHLY freeze asks
    eq(r.md[:3], [500000, feb + 900, jan + 1], "February starts afresh")
    eq(r.bill(jan + 1), (3000000, feb), "the freeze at Feb 1 takes January's")
    eq(r.bill(jan + 1), (3000000, feb), "asked again: the same")
    # the freeze came first (a snapshot between midnight and the block that ends the period
    # at midnight): January's period still goes to January, February is not set back
    r4 = Registers(1)
    r4.demand(1000.0, feb - 900, True)
    eq(r4.bill(jan + 1), (1000000, feb - 900), "the freeze's")
    r4.demand(2000.0, feb, True)
    eq(r4.md, [0, 0, jan + 1, 2000000, feb, jan], "January's maximum grows; February stays")
    r4.demand(700.0, feb - 1800, True)
    eq(r4.md[3], 2000000, "a smaller one changes nothing")
    r2 = Registers(1)
    r2.demand(1500.0, feb - 60, True)
    eq(r2.bill(jan + 1), (1500000, feb - 60), "no period of February yet: the month ends at the freeze")
    eq(r2.md[:3], [0, 0, jan + 1], "February from nothing")
    eq(r2.bill(mar), (0, 0), "no whole period in February (a node off all month): none")
    # a checkpoint of each and of a firmware before billing months ([mW, end]) restores
    st = r.state()
    r3 = Registers(1)
    r3.restore(st)
    eq(r3.md, r.md, "restored")
    r3.restore(dict(st, md=[4200, feb - 900]))
    eq(r3.md, [4200, feb - 900, jan, 0, 0, 0], "an older checkpoint: its maximum is January's")
    for bad in ([1, 2, 3], [1, -2], "x", [1, 2, 3, 4, 5, 6.0]):
        e = raises(ValueError, r3.restore, dict(st, md=bad))
        eq("md" in str(e), True, str(e))
