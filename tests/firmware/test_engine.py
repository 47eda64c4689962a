# The policy engine on the MicroPython unix port, driven by a controllable clock: the time
# is only an argument to tick(), so a week runs in a loop.  Ticks take engine seconds
# (epoch - EPOCH0, small ints on a 32-bit board); push_event / push_price / restore epochs.
import micropython
from policy_fixture import MON_2026_11_23, Relay, Tariffs, compact

from meternode.policy import engine as E
from meternode.policy.engine import Engine, EventRing, civil
from mptest import eq, heap

T0 = E.seconds(MON_2026_11_23)  # engine seconds


def _engine(seed=1, **changes):
    ring = EventRing(64)
    relay = Relay()
    tar = Tariffs()
    eng = Engine(compact(**changes), set_tariff=tar.set, relay=relay, sink=ring.push, seed=seed)
    return eng, ring, relay, tar


def _codes(ring, mark=0, code=None):
    return [ev for ev in ring.since(mark) if code is None or ev[0] == code]


def test_civil_dates():
    eq(civil(0), 19700101, "epoch")
    eq(civil(20415), 20251123, "2025-11-23")
    eq(civil(11016), 20000229, "leap day 2000")
    eq(civil(-1), 19691231, "day before the epoch")


@heap("192k")
def test_tariff_calendar_over_a_simulated_week():
    # Mon 23 .. Sun 29 Nov 2026 at UTC+1, one tick a minute; Thu 26 is a listed holiday,
    # which runs the weekend table.  Weekday: offpeak 8 h, day 13 h, peak 3 h; weekend 12/12/0.
    eng, ring, relay, tar = _engine()
    minutes = [0, 0, 0]
    day_types = []
    for m in range(7 * 1440):
        t = T0 + 60 * m
        eng.tick(t, 230.0, 5.0, 50.0, 1000.0, m)
        minutes[eng.tariff] += 1
        if m % 1440 == 0:
            day_types.append(eng.day_type)
        eq(tar.now, eng.tariff, "meter told the tariff")
    eq(day_types, [0, 0, 0, 2, 0, 1, 1], "day types Mon..Sun")
    eq(minutes, [68 * 60, 88 * 60, 12 * 60], "minutes per tariff over the week")
    # changes: weekday 5 (+1 at Monday start), holiday/weekend 3 each, minus merges at midnight
    eq(tar.calls, len(_codes(ring, 0, E.EV_TARIFF)), "one event per tariff change")
    eq(relay.calls, 0, "relay untouched")


def test_tariff_switch_follows_the_local_clock_and_the_season():
    eng, ring, relay, tar = _engine()
    # 2026-03-31 is a Tuesday in winter: 07:30 local is "day"; 2026-04-01 07:30 is summer "offpeak".
    t_0331 = T0 - (237 * 86400)  # 2026-03-31 00:00 local
    eng.tick(t_0331 + 7 * 3600 + 1800, 230.0, 1.0, 50.0, 0.0, 0)
    eq(eng.tariff, 1, "winter weekday 07:30 (UTC 06:30)")
    eng.tick(t_0331 + 86400 + 7 * 3600 + 1800, 230.0, 1.0, 50.0, 0.0, 0)
    eq(eng.tariff, 0, "summer weekday 07:30")
    eng.tick(t_0331 + 86400 + 8 * 3600, 230.0, 1.0, 50.0, 0.0, 0)
    eq(eng.tariff, 1, "summer weekday 08:00")
    eq(eng.price, 0.2, "price follows the tariff")


def test_frequency_dip_sheds_and_restores_after_the_random_delay():
    eng, ring, relay, tar = _engine(seed=12345)
    t = T0 + 3 * 3600
    eng.tick(t, 230.0, 5.0, 50.0, 1000.0, 0)
    eng.tick(t + 1, 230.0, 5.0, 49.7, 1000.0, 0)  # 1 s below 49.8: not yet
    eng.tick(t + 2, 230.0, 5.0, 50.0, 1000.0, 0)
    eq(relay.on, True, "a 1 s dip does not shed (for_s = 2)")
    for k in range(3, 6):
        eng.tick(t + k, 230.0, 5.0, 49.7, 1000.0, 0)
    eq(relay.on, False, "shed after 2 s below 49.8 Hz")
    shed_at = _codes(ring, 0, E.EV_SHED)[0][3]
    eq(shed_at, t + 5, "shed on the tick that completes 2 s")
    k = 6
    while relay.on is False and k < 400:
        eng.tick(t + k, 230.0, 5.0, 50.0, 1000.0, 0)
        k += 1
    end = _codes(ring, 0, E.EV_DR_END)
    eq(len(end), 1, "one end-of-event")
    delay = end[0][2]
    eq(end[0][3], shed_at + 30, "minimum shed of 30 s")
    restore = _codes(ring, 0, E.EV_RESTORE)
    eq(restore[0][3], shed_at + 30 + delay, "restored after the random delay")
    if not 0 <= delay <= 120:
        raise AssertionError("delay %d outside 0..120" % delay)


def test_restore_delays_spread_across_a_fleet():
    delays = []
    for seed in range(1, 41):
        eng, ring, relay, tar = _engine(seed=seed * 7919)
        t = T0
        for k in range(4):
            eng.tick(t + k, 230.0, 5.0, 49.5, 1000.0, 0)
        for k in range(4, 40):
            eng.tick(t + k, 230.0, 5.0, 50.0, 1000.0, 0)
        delays.append(_codes(ring, 0, E.EV_DR_END)[0][2])
    distinct = len(set(delays))
    if distinct < 25 or max(delays) > 120 or min(delays) < 0:
        raise AssertionError("restore delays not spread over 0..120: %r" % delays)


def test_max_power_hold_retry_and_lockout():
    eng, ring, relay, tar = _engine()
    t = T0 + 10 * 3600
    for k in range(10):  # 7 kW exceeded for 0..9 s: hold_s = 10 not reached
        eng.tick(t + k, 230.0, 35.0, 50.0, 8000.0, 0)
    eq(relay.on, True, "9 s over the limit does not trip")
    eng.tick(t + 10, 230.0, 35.0, 50.0, 8000.0, 0)
    eq(relay.on, False, "tripped after 10 s")
    t1 = t + 10
    # load off while shed; the retry window (shed_s = 60) reconnects
    for k in range(1, 61):
        eng.tick(t1 + k, 230.0, 0.0, 50.0, 0.0, 0)
    eq(relay.on, True, "reconnected after the 60 s retry window")
    eq(_codes(ring, 0, E.EV_RESTORE)[0][3], t1 + 60, "restore time")
    # overload again: second trip, then a third trip exceeds retries = 2 -> lockout
    now = t1 + 61
    for trip in (2, 3):
        while relay.on:
            eng.tick(now, 230.0, 35.0, 50.0, 8000.0, 0)
            now += 1
        eq(len(_codes(ring, 0, E.EV_LIMIT)) - 0, trip, "limit events after trip %d" % trip)
        if trip == 2:
            for k in range(60):
                eng.tick(now + k, 230.0, 0.0, 50.0, 0.0, 0)
            now += 60
            eq(relay.on, True, "second retry reconnects")
    eq(len(_codes(ring, 0, E.EV_LOCKOUT)), 1, "locked out after the third trip")
    for k in range(0, 3 * 3600, 60):
        eng.tick(now + k, 230.0, 0.0, 50.0, 0.0, 0)
    eq(relay.on, False, "still locked out hours later")
    midnight = T0 + 86400
    eng.tick(midnight, 230.0, 0.0, 50.0, 0.0, 0)
    eq(relay.on, True, "lockout ends at local midnight")


def test_event_only_limit_logs_once_per_excursion():
    eng, ring, relay, tar = _engine()
    t = T0
    for k in range(5):
        eng.tick(t + k, 255.0, 1.0, 50.0, 100.0, 0)
    eng.tick(t + 5, 230.0, 1.0, 50.0, 100.0, 0)
    eng.tick(t + 6, 255.0, 1.0, 50.0, 100.0, 0)
    lim = _codes(ring, 0, E.EV_LIMIT)
    eq([(e[1], e[3]) for e in lim], [(1, t), (1, t + 6)], "over-voltage events")
    eq(relay.on, True, "event-only limit never sheds")


def test_pushed_event_and_price_and_voltage_band():
    eng, ring, relay, tar = _engine()
    t = T0 + 12 * 3600
    eq(eng.push_event(E.epoch(t + 10), 30), 1, "one event rule")
    states = []
    for k in range(0, 50):
        eng.tick(t + k, 230.0, 1.0, 50.0, 100.0, 0)
        states.append(relay.on)
    eq(states.index(False), 10, "shed at the event start")
    eq(states[10:].index(True) + 10, 40, "restored at the event end (no random delay)")
    # a pushed real-time price above 0.5 sheds (rule d[2]); it expires after realtime_max_s
    mark = ring.head
    eq(eng.push_price(0.9, 100000, E.epoch(t + 100)), 600, "in force for realtime_max_s")
    eng.tick(t + 100, 230.0, 1.0, 50.0, 100.0, 0)
    eq((eng.price, relay.on), (0.9, False), "price above level sheds")
    for k in range(101, 701):
        eng.tick(t + k, 230.0, 1.0, 50.0, 100.0, 0)
    eq(eng.price, 0.2, "real-time price expired after 600 s (realtime_max_s)")
    eq(relay.on, True, "price below level again restores")
    eq([e[2] for e in _codes(ring, mark, E.EV_PRICE)], [600, 0], "price validity clipped, then expiry")
    # voltage outside 200..260 for 5 s sheds
    for k in range(1000, 1006):
        eng.tick(t + k, 190.0, 1.0, 50.0, 100.0, 0)
    eq(relay.on, False, "under the voltage band for 5 s")


def test_a_cancel_ends_an_event_that_is_shedding_and_a_new_one_moves_its_end():
    eng, ring, relay, tar = _engine()
    t = T0 + 12 * 3600
    eng.push_event(E.epoch(t), 600)
    for k in range(0, 20):
        eng.tick(t + k, 230.0, 1.0, 50.0, 100.0, 0)
    eq(relay.on, False, "shedding in the event's window")
    mark = ring.head
    eq(eng.push_event(0, 0), 1, "cancel: the event rule")
    eng.tick(t + 20, 230.0, 1.0, 50.0, 100.0, 0)
    eq([e[1] for e in _codes(ring, mark, E.EV_DR_END)], [E.DR_RULE_BASE + 1], "the event ends at the next tick")
    eq(relay.on, True, "restored (no random delay), not 580 s later")
    # an event while one sheds: its end is the newer window's, earlier or later

    def restored_at(start, first, then, until):
        # shed by an event of `first` s from `start`, replaced by one of `then` s a tick later
        eng.push_event(E.epoch(t + start), first)
        eng.tick(t + start, 230.0, 1.0, 50.0, 100.0, 0)
        eng.push_event(E.epoch(t + start), then)
        for k in range(start + 1, until):
            eng.tick(t + k, 230.0, 1.0, 50.0, 100.0, 0)
            if relay.on:
                return k - start
        return None

    eq(restored_at(100, 600, 20, 200), 20, "the shortened event ends at its new end")
    eq(restored_at(200, 10, 50, 300), 50, "the extended event sheds to its new end")


@heap("160k")
def test_tick_allocates_nothing_across_midnight_trips_and_dr():
    eng, ring, relay, tar = _engine(seed=99)
    eng.push_event(E.epoch(T0 + 86400 - 20), 10)
    t = T0 + 86400 - 100
    eng.tick(t, 230.0, 1.0, 50.0, 100.0, 0)  # first tick (day set-up)
    micropython.heap_lock()
    try:
        for k in range(1, 300):
            p = 8000.0 if 10 < k < 40 else 100.0
            f = 49.5 if 120 < k < 130 else 50.0
            eng.tick(t + k, 230.0, 1.0, f, p, k)
    finally:
        micropython.heap_unlock()
    kinds = set(e[0] for e in ring.since(0))
    for code in (E.EV_DAY, E.EV_SHED, E.EV_RESTORE, E.EV_DR, E.EV_DR_END, E.EV_LIMIT):
        if code not in kinds:
            raise AssertionError("event %s never happened under heap_lock" % E.event_name(code))


def test_daily_energy_limit_sheds_until_midnight_and_other_limits_fire():
    lims = [
        {"kind": "max_energy_day", "level": 5000, "action": "shed"},  # 5 kWh
        {"kind": "over_current", "level": 40, "hold_s": 3, "action": "event"},
        {"kind": "under_voltage", "level": 207, "hold_s": 2, "action": "event"},
    ]
    eng, ring, relay, tar = _engine(limits=lims, dr=[])
    t = T0 + 6 * 3600
    eng.tick(t, 230.0, 1.0, 50.0, 100.0, 1000000)  # the day's first reading: 1000 kWh on the register
    eng.tick(t + 60, 230.0, 1.0, 50.0, 100.0, 1000000 + 4999999)
    eq(relay.on, True, "4.999 kWh today")
    eng.tick(t + 120, 230.0, 1.0, 50.0, 100.0, 1000000 + 5000000)
    eq(relay.on, False, "5 kWh today: shed")
    eng.tick(T0 + 86400 - 1, 230.0, 1.0, 50.0, 0.0, 1000000 + 5000000)
    eq(relay.on, False, "until midnight")
    eng.tick(T0 + 86400, 230.0, 1.0, 50.0, 0.0, 1000000 + 5000000)
    eq(relay.on, True, "a new day, a new budget")
    mark = ring.head
    t2 = T0 + 86400 + 3600
    for k in range(4):
        eng.tick(t2 + k, 200.0, 45.0, 50.0, 9000.0, 6000000)
    got = [(e[1], e[3] - t2) for e in _codes(ring, mark, E.EV_LIMIT)]
    eq(got, [(2, 2), (1, 3)], "under-voltage after 2 s, over-current after 3 s (rule, seconds)")


def test_day_counters_survive_a_reboot_on_the_same_day_only():
    lims = [{"kind": "max_energy_day", "level": 5000, "action": "shed"}]
    eng, ring, relay, tar = _engine(limits=lims, dr=[])
    t = T0 + 6 * 3600
    eng.tick(t, 230.0, 1.0, 50.0, 100.0, 1000000)
    eng.tick(t + 60, 230.0, 1.0, 50.0, 100.0, 1000000 + 5000000)
    eq(relay.on, False, "budget used: shed")
    saved = eng.save()
    # reboot an hour later: a new engine, same day
    eng2, ring2, relay2, tar2 = _engine(limits=lims, dr=[])
    eq(eng2.restore(saved, E.epoch(t + 3600)), True, "same day: restored")
    eng2.tick(t + 3600, 230.0, 1.0, 50.0, 100.0, 1000000 + 5000000)
    eq(relay2.on, False, "still shed after the reboot (budget not reset)")
    eng2.tick(T0 + 86400, 230.0, 1.0, 50.0, 100.0, 1000000 + 5000000)
    eq(relay2.on, True, "new day")
    eng3, ring3, relay3, tar3 = _engine(limits=lims, dr=[])
    eq(eng3.restore(saved, E.epoch(T0 + 86400 + 60)), False, "a save from yesterday is ignored")
    eq(eng3.restore([1, 2], E.epoch(t)), False, "garbage is ignored")


def test_under_frequency_keeps_a_net_exporter_connected_on_a_site_relay():
    # A house exporting 2.1 kW during an under-frequency event: disconnecting it would take
    # generation off a grid that is short of it.  The rule logs dr_kept once and holds off;
    # when the site turns importer while the dip lasts, it sheds.
    eng, ring, relay, tar = _engine(seed=3)
    t = T0 + 3 * 3600
    for k in range(0, 10):
        eng.tick(t + k, 236.0, 9.0, 49.6, -2100.0, 0)
    eq(relay.on, True, "a net exporter is not shed on under-frequency")
    kept = _codes(ring, 0, E.EV_DR_KEPT)
    eq([(e[1], e[2], e[3]) for e in kept], [(E.DR_RULE_BASE, 2100, t + 2)], "dr_kept once, W exported")
    eq(_codes(ring, 0, E.EV_DR), [], "no dr event")
    for k in range(10, 13):
        eng.tick(t + k, 236.0, 9.0, 49.6, 800.0, 0)  # the sun goes behind a cloud: importing
    eq(relay.on, False, "importing during the dip: shed")
    eq(len(_codes(ring, 0, E.EV_DR_KEPT)), 1, "still one dr_kept")


def test_a_load_relay_sheds_an_exporter_and_over_voltage_sheds_it_on_a_site_relay():
    src_dr = [
        {"trigger": "freq_below", "level": 49.8, "for_s": 2, "shed_s": 30, "restore_random_s": 0},
        {"trigger": "voltage_outside", "low": 200, "high": 250, "for_s": 2, "shed_s": 20, "restore_random_s": 0},
    ]
    eng, ring, relay, tar = _engine(dr=src_dr, relay="load")
    eq(compact(dr=src_dr, relay="load")["rl"], 1, "compact form says: the relay switches a load")
    t = T0 + 3 * 3600
    for k in range(0, 4):
        eng.tick(t + k, 236.0, 9.0, 49.6, -2100.0, 0)
    eq(relay.on, False, "shedding a load makes an exporter export more: allowed")
    eng, ring, relay, tar = _engine(dr=src_dr)
    eq("rl" in compact(dr=src_dr), False, "site is the default and stays out of the compact form")
    for k in range(0, 4):
        eng.tick(t + k, 256.0, 9.0, 50.0, -4000.0, 0)
    eq(relay.on, False, "over-voltage from export: disconnecting relieves it")
    eng, ring, relay, tar = _engine(dr=src_dr)
    for k in range(0, 4):
        eng.tick(t + k, 190.0, 9.0, 50.0, -4000.0, 0)
    eq(relay.on, True, "under-voltage: an exporter supports the voltage, kept")


@heap("160k")
def test_keeping_an_exporter_allocates_nothing():
    eng, ring, relay, tar = _engine(seed=5)
    t = T0 + 3 * 3600
    eng.tick(t, 236.0, 9.0, 50.0, -2100.0, 0)
    ps = [-2100.0] * 20 + [500.0] * 20  # readings made before the lock: only tick() is measured
    v, i, f = 236.0, 9.0, 49.6
    micropython.heap_lock()
    try:
        for k in range(1, 40):
            eng.tick(t + k, v, i, f, ps[k], 0)
    finally:
        micropython.heap_unlock()
    eq(len(_codes(ring, 0, E.EV_DR_KEPT)), 1, "kept under heap_lock")
    eq(relay.on, False, "then shed under heap_lock")
