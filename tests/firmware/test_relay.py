# The board relay on MicroPython: the sim relay cuts the load (the measured power drops to
# zero), the GPIO relay drives its pin with the board's polarity, bad relay entries name the
# key, and RelayControl arbitrates between the operator's command and the policy engine.
from metrology_rig import board, rig, settle

from meternode.config import ConfigError
from meternode.hal.halinit import attach, check_relay
from meternode.hal.hw import PinRelay
from meternode.hal.relay import RelayControl
from meternode.hal.sim import SimHal
from mptest import approx, eq, heap, raises

SCEN = {"seed": 3, "enob": 8.7, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}, {"rms": 2.0}]}


def _avg_p(s, m, seconds):
    # The element powers averaged over `seconds` (what telemetry reports), and the I1 rms,
    # after a tenth of a second for the cycle in flight when the relay switched.
    settle(s, m, 0.1)
    m.snapshot()
    settle(s, m, seconds)
    snap = m.snapshot()
    return [e["p"] for e in snap["elements"]], snap["elements"][0]["i"]


@heap("256k")  # a Meter beside the sim front end
def test_sim_relay_open_cuts_the_load_and_the_measured_power_drops_to_zero():
    b = board()
    eq(b["relay"], {"pin": 2, "default": True}, "boards/sim.json has a relay")
    hal = SimHal(b, SCEN)
    s = hal.sampler
    from meternode.metrology.meter import Meter

    m = Meter(b)
    eq(hal.relay.on, True, "closed at boot (default)")
    p, i = _avg_p(s, m, 1.0)
    approx(p[0], 2300.0, rel=0.005, what="I1 power, relay closed")
    approx(p[1], 460.0, rel=0.01, what="I2 power, relay closed")
    hal.relay.set(False)
    p, i = _avg_p(s, m, 1.0)
    # what is left is the converter's noise (8.7 ENOB): about 0.1 % of the load
    eq((abs(p[0]) < 3.0, abs(p[1]) < 3.0, i < 0.2), (True, True, True), "relay open: %r W, %r A" % (p, i))
    approx(m.vrms[m.v_channel], 230.0, rel=0.01, what="the voltage stays")
    hal.relay.set(True)
    p, i = _avg_p(s, m, 1.0)
    approx(p[0], 2300.0, rel=0.005, what="load back")


@heap("256k")  # a Meter beside the sim front end
def test_sim_relay_closed_by_default_false_and_absent_without_the_board_key():
    b = board()
    b["relay"] = {"pin": 2, "default": False}
    s, m = rig(b, SCEN)
    eq(s.load_on, False, "open at boot: no load")
    p, i = _avg_p(s, m, 0.5)
    eq(abs(p[0]) < 3.0, True, "no power %r" % p[0])
    del b["relay"]
    eq(SimHal(b, SCEN).relay, None, "no relay key: hal.relay is None")


class _Pin:
    def __init__(self):
        self.levels = []

    def value(self, v):
        self.levels.append(v)


def test_pin_relay_drives_the_board_pin_with_its_polarity():
    p = _Pin()
    r = PinRelay({"pin": 5}, p)
    r.set(False)
    r.set(True)
    eq((p.levels, r.on), ([1, 0, 1], True), "active high: 1 = load connected (default on)")
    p = _Pin()
    r = PinRelay({"pin": 5, "active_low": True, "default": False}, p)
    r.set(True)
    eq((p.levels, r.on), ([1, 0], True), "active low: 0 = load connected (default off)")


def test_bad_relay_entries_name_the_key():
    for spec, what in (
        ({"pin": "2"}, "board.relay.pin must be int"),
        ({"default": True}, "board.relay.pin is missing"),
        ({"pin": 2, "active_low": "yes"}, "board.relay.active_low must be bool"),
        ({"pin": 300}, "board.relay.pin = 300 is above 255"),
        ([2], "board.relay must be an object"),
    ):
        e = raises(ConfigError, check_relay, spec)
        eq(str(e).startswith(what), True, str(e))
    b = board()
    b["relay"] = {"pin": 2, "default": "on"}
    e = raises(ConfigError, attach, SimHal(b, SCEN), b)
    eq(str(e).startswith("board.relay.default must be bool"), True, str(e))


class _BoardHal:
    pass


class _Machine:  # the unix port has no machine.Pin: a stand-in records every level driven
    class Pin:
        OUT = 1
        made = []
        levels = []

        def __init__(self, n, mode, value=None):
            self.made.append((n, mode, value))
            self.levels.append(value)
            self.v = value

        def value(self, v):
            self.levels.append(v)
            self.v = v


def _with_machine(fn):
    import sys

    old = sys.modules.get("machine")
    sys.modules["machine"] = _Machine
    _Machine.Pin.made = []
    _Machine.Pin.levels = []
    try:
        return fn()
    finally:
        if old is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = old


def test_attach_gives_a_board_backend_its_pin_relay_and_none_without_an_entry():
    h = _BoardHal()
    _with_machine(lambda: attach(h, {"relay": {"pin": 7, "active_low": True}}))
    eq((_Machine.Pin.made, h.relay.on), ([], None), "attach checks and defers: the pin is not driven yet")
    _with_machine(lambda: RelayControl(h.relay, _Clock(), 600, None))
    eq((_Machine.Pin.made, h.relay.on, h.relay._pin.v), ([(7, 1, 0)], True, 0), "driven low (on) once, made so")
    h = _BoardHal()
    attach(h, {})
    eq(h.relay, None, "no entry: no relay")


def test_a_remote_disconnect_is_the_first_level_the_relay_pin_sees_after_a_reboot():
    # Before: attach() drove the board's default (closed) and RelayControl opened it again
    # a moment later -- the load closed at every reboot.  Now the pin's first level is open.
    from mptest import scratch_dir

    path = scratch_dir() + "/boot.relay"
    with open(path, "w") as f:
        f.write("1 0")  # an operator's remote disconnect, persisted before the reboot
    for low in (False, True):
        h = _BoardHal()
        spec = {"relay": {"pin": 9, "active_low": low, "default": True}}

        def boot():
            attach(h, spec)
            return RelayControl(h.relay, _Clock(), 600, path)

        c = _with_machine(boot)
        off = 1 if low else 0
        eq((_Machine.Pin.levels, c.latched, h.relay.on), ([off], True, False), "only ever open (active_low=%r)" % low)


class _Clock:
    def __init__(self):
        self.t = 1800000000

    def time(self):
        return self.t


class _Relay:
    def __init__(self):
        self.on = True
        self.sets = 0

    def set(self, on):
        self.on = on
        self.sets += 1


def _ctl(override_s=600):
    clock = _Clock()
    c = RelayControl(_Relay(), clock, override_s)
    ev = []
    c.on_change = lambda on, why: ev.append((on, why))
    return c, clock, ev


def test_policy_sheds_and_restores_when_the_operator_holds_nothing():
    c, clock, ev = _ctl()
    c.engine(False, "policy p shed")
    eq((c.on, ev), (False, [(False, "policy p shed")]), "shed, recorded with the reason")
    c.engine(False, "policy p shed")
    eq((c.relay.sets, len(ev)), (1, 1), "no switch, no event when nothing changes")
    c.engine(True, "policy p restore")
    eq((c.on, ev[-1]), (True, (True, "policy p restore")), "restored")


def test_operator_off_latches_against_policy_restores():
    c, clock, ev = _ctl()
    eq(c.command(False), False, "open")
    eq((c.on, ev), (False, []), "operator switches are recorded by the command handler")
    c.engine(False, "policy p shed")
    c.engine(True, "policy p restore")
    clock.t += 86400
    c.tick()
    eq((c.on, c.held_off, ev), (False, 1, []), "a remote disconnect holds: the policy's restore is kept off")
    c.command(True)
    eq(c.on, True, "only the operator reconnects")


def test_operator_on_overrides_policy_sheds_for_override_s_then_the_shed_applies():
    c, clock, ev = _ctl(600)
    c.engine(False, "policy p shed")
    eq(c.command(True), True, "operator on during a shed")
    eq(c.on, True, "closed")
    clock.t += 10
    c.engine(False, "policy p shed")
    c.tick()
    eq((c.on, c.held_off), (True, 1), "the shed is held off during the override")
    clock.t += 589
    eq((c.tick(), c.on), (False, True), "599 s: still the operator's")
    clock.t += 1
    eq((c.tick(), c.on), (True, False), "600 s: the policy's shed applies")
    eq(ev[-1], (False, "override ended, policy shed"), "recorded with the reason")
    c.engine(True, "policy p restore")
    eq(c.on, True, "and its restore")


def test_the_operators_latch_and_override_survive_a_restart():
    from mptest import scratch_dir

    path = scratch_dir() + "/st.relay"
    clock = _Clock()
    c = RelayControl(_Relay(), clock, 600, path)
    c.command(False)
    r = _Relay()  # the board's default at boot: closed
    c2 = RelayControl(r, clock, 600, path)
    eq((c2.latched, r.on), (True, False), "a remote disconnect holds across the reboot")
    c2.engine(True, "policy p restore")
    eq(r.on, False, "and against the policy")
    c2.command(True)
    clock.t += 100
    r = _Relay()
    r.on = False  # a board whose default is open
    c3 = RelayControl(r, clock, 600, path)
    eq((c3.latched, c3.until, r.on), (False, 1800000000 + 600, True), "the override holds too, until its end")
    with open(path, "w") as f:
        f.write("junk")
    eq(RelayControl(_Relay(), clock, 600, path).latched, False, "an unreadable file: nothing held")


def test_override_zero_lets_the_policy_shed_win():
    c, clock, ev = _ctl(0)
    c.engine(False, "policy p shed")
    eq((c.command(True), c.on), (False, False), "an operator on does not beat a shed")
    c.engine(True, "policy p restore")
    eq(c.on, True, "restored by the policy")
    c.command(False)
    c.engine(True, "policy p restore")
    eq(c.on, False, "an operator off still latches")
