# Pulse meters: exact counts through contact bounce, registers, flow, leak, tamper, ring.
import sys

from meternode.config import ConfigError
from meternode.hal.sim_pulses import SimPulseTrain
from meternode.pulses import PulseMeter, from_board
from mptest import eq, raises


def _run(pm, train, until_ms, step=7):
    t = 0
    while t <= until_ms:
        train.feed(pm, t)
        t += step
    pm.poll(until_ms + 1000)


def test_50_hz_train_with_bounce_on_both_edges_counts_exactly():
    for seed in (1, 2, 3):
        pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 5})
        tr = SimPulseTrain({"rate_hz": 50.0, "count": 1000, "bounce": 4, "bounce_ms": 2.0, "seed": seed})
        _run(pm, tr, 21000)
        eq(pm.count, 1000, "pulses counted (seed %d)" % seed)
        eq(pm.rejected > 1000, True, "bounce edges rejected: %d" % pm.rejected)


def test_without_debounce_the_same_bounce_makes_ghost_pulses():
    pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 0})
    tr = SimPulseTrain({"rate_hz": 50.0, "count": 200, "bounce": 4, "bounce_ms": 2.0, "seed": 1})
    _run(pm, tr, 5000)
    eq(pm.count > 200, True, "ghosts without debounce: %d" % pm.count)


def test_slow_pulses_and_rising_edge_and_no_bounce():
    pm = PulseMeter({"name": "g", "per_unit": 100, "edge": "rising", "debounce_ms": 50})
    tr = SimPulseTrain({"rate_hz": 0.5, "count": 7, "edge": "rising", "duty": 0.1})
    _run(pm, tr, 20000, step=100)
    eq(pm.count, 7, "pulses")
    eq(pm.value, 70, "litres at 100 pulses per m3")


def test_flow_from_the_pulse_interval_falls_to_zero_after_the_timeout():
    pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 5, "flow_timeout_s": 30.0})
    tr = SimPulseTrain({"rate_hz": 0.1, "count": 5})  # one litre every 10 s
    _run(pm, tr, 40100, step=50)
    eq(pm.count, 5, "pulses")
    eq(pm.flow(40100), 360, "l/h at 1 l per 10 s")
    eq(pm.flow(40000 + 15000), 240, "a late pulse bounds the rate from above")
    eq(pm.flow(40000 + 61000), 0, "flow after the timeout")


def test_leak_when_flow_never_stops_for_leak_s_and_a_pause_clears_it():
    pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 5, "leak_s": 60.0, "flow_timeout_s": 20.0})
    tr = SimPulseTrain({"rate_hz": 0.2, "count": 20})  # a drip every 5 s for 100 s
    _run(pm, tr, 59000, step=100)
    eq(pm.leak(59000), False, "not yet")
    _run(pm, tr, 70000, step=100)
    eq(pm.leak(70000), True, "leak after 60 s of flow")
    eq(pm.reading(70000)["leak"], True, "in the reading")
    eq(pm.leak(70000 + 120000), False, "cleared when flow stops")


def test_tamper_input_flags_and_counts_events():
    pm = PulseMeter({"name": "w", "per_unit": 1000})
    pm.tamper(1, 10)
    pm.tamper(1, 20)
    pm.tamper(0, 30)
    pm.tamper(1, 40)
    eq(pm.tamper_events, 2, "tamper events")
    eq(pm.reading(50)["tamper"], True, "flag")


def test_bad_specs_name_the_key():
    for spec, key in (
        ({"per_unit": 1}, "pulses.name"),
        ({"name": "w"}, "pulses.per_unit"),
        ({"name": "w", "per_unit": 1, "edge": "both"}, "pulses.edge"),
        ({"name": "w", "per_unit": 1, "debounce_ms": -1}, "pulses.debounce_ms"),
    ):
        e = raises(ConfigError, PulseMeter, spec)
        eq(key in str(e), True, "%r names %s" % (str(e), key))
    e = raises(ConfigError, from_board, {"pulses": [{"name": "a", "per_unit": 1}, {"name": "b"}]})
    eq("board.pulses[1].per_unit" in str(e), True, str(e))


class _FakePin:
    IN = 0
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, *a):
        self.v = 1
        self.handler = None

    def irq(self, handler, trig, hard=False):
        self.handler = handler

    def value(self):
        return self.v


class _FakeMachine:
    Pin = _FakePin


def test_irq_ring_hands_over_every_edge_and_counts_an_overflow():
    sys.modules["machine"] = _FakeMachine
    try:
        from meternode.hal.pulsein import IrqPulseInput

        inp = IrqPulseInput(5, ring=8)
    finally:
        del sys.modules["machine"]
    pm = PulseMeter({"name": "w", "per_unit": 1000, "debounce_ms": 0})
    pin = inp.pin
    for k in range(6):  # 3 clean pulses
        pin.v = 0 if k % 2 == 0 else 1
        inp._irq(pin)
    inp.drain(pm)
    pm.poll(10**6)
    eq(pm.count, 3, "pulses through the ring")
    for k in range(20):  # 20 edges into an 8-slot ring before a drain
        pin.v = k % 2
        inp._irq(pin)
    inp.drain(pm)
    eq(inp.lost, 12, "edges lost to the overflow, counted")


def test_pulse_service_feeds_board_meters_from_sim_trains_and_round_trips_state():
    from meternode.hal.sim import SimClock
    from meternode.pulses import PulseService

    b = {
        "hal": "sim",
        "pulses": [{"name": "water", "per_unit": 1000, "debounce_ms": 5}, {"name": "gas", "per_unit": 100}],
    }
    trains = [{"rate_hz": 2.0, "count": 10, "bounce": 3, "bounce_ms": 2.0}, {"rate_hz": 0.5, "count": 2}]
    cfg = {"sim": {"pulses": trains}}
    clock = SimClock(0)
    svc = PulseService(b, cfg, clock)
    for ms in range(0, 6000, 100):
        clock.ms = ms
        svc.poll()
    r = svc.readings()
    eq([x["name"] for x in r], ["water", "gas"], "names")
    eq([x["count"] for x in r], [10, 2], "counts")
    eq(r[1]["value"], 20, "gas litres at 100 pulses per m3")
    st = svc.state()
    svc2 = PulseService(b, cfg, clock)
    svc2.restore(st)
    eq(svc2.state(), {"water": 10, "gas": 2}, "restored")


def test_hardware_counted_pulses_give_the_counts_flow_and_leak_that_edges_give():
    # The ESP32's pulse counter (machine.Counter, hal/pulsein.CounterPulseInput) hands over
    # counts per poll instead of edges: PulseMeter.add_count.  The same water use seen both
    # ways: a drip every 5 s for 100 s, 200 s without, then a drip every 5 s again (and, in
    # the counter's case, two pulses in one poll now and then).
    spec = {"name": "w", "per_unit": 1000, "debounce_ms": 5, "leak_s": 60.0, "flow_timeout_s": 20.0}
    pulses = [5000 * k for k in range(1, 21)] + [300000 + 5000 * k for k in range(30)]
    pulses += [452000, 452050]  # two within one 100-ms poll
    edges, counted = PulseMeter(spec), PulseMeter(spec)
    seen = []
    i = 0
    for t in range(0, 460000, 100):  # the node polls every 100 ms
        n = 0
        while i < len(pulses) and pulses[i] <= t:
            edges.edge(pulses[i], 0)  # falling: the contact closes
            edges.edge(pulses[i] + 40, 1)
            n += 1
            i += 1
        edges.poll(t)
        counted.add_count(n, t)
        counted.poll(t)
        if t in (59000, 70000, 200000, 330000, 370000, 400000):
            seen.append((t, edges.count, counted.count, edges.leak(t), counted.leak(t), edges.flow(t), counted.flow(t)))
    for t, ce, cc, le, lc, fe, fc in seen:
        eq(cc, ce, "count at %d ms" % t)
        eq(lc, le, "leak at %d ms: %r" % (t, seen))
        eq(abs(fc - fe) <= fe // 50 + 1, True, "flow at %d ms: edges %d, counter %d l/h" % (t, fe, fc))
    eq([x[3] for x in seen], [False, True, False, False, True, True], "leak after 60 s of flow, not after the pause")
    eq(counted.count, len(pulses), "every pulse counted")
    eq(counted.value, len(pulses), "litres at 1000 pulses per m3")
