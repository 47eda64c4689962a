# The policy engine: once a second, from the latest readings, picks the tariff, checks the
# limits and the demand-response rules, and drives one relay.  It needs no link (works
# offline), logs every action through an event sink, and allocates nothing per tick: all
# state is ints in lists made in __init__, readings are only compared, never computed with.
#
#   eng = Engine(policy_compact, set_tariff=meter.set_tariff, relay=relay, sink=ring.push)
#   eng.tick(t, v, i, f, p, e_mwh)   # t: engine seconds (below); v V, i A, f Hz, p W;
#                                    # e_mwh: the import register's low 30 bits (mWh)
#
# The service ticks it once per *measured* second (metrology/timebase.py), so a condition
# that came and went while the policy task was starved is still seen; f = 0 and v = 0 mean
# "no mains measured in that second" and trigger neither a frequency nor a voltage rule.
#
# `relay` is any object with set(on) (True = load connected) or None; `sink(code, rule, value, t)`
# receives ints.  Time comes only from the caller, so tests drive a week in a loop.
#
# Engine seconds: epoch seconds minus EPOCH0 (2024-01-01T00:00Z), so a tick's time and
# everything computed from it stay small ints on a 32-bit board until 2058 (an epoch
# itself is above 2**30 and would be a heap int, made anew by every addition).  seconds()
# and epoch() convert; the commands (push_event, push_price, restore) take epoch seconds,
# the tick and the events it sinks engine seconds.  e_mwh is taken modulo 2**30 (the
# registers' low word, registers.low_import()): the day's energy is a wrapping difference.
#
# Shedding: each limit or DR rule that fires holds the relay open until its own release
# time; the relay closes again when no rule holds it.  A limit with action "shed" releases
# after shed_s (its retry window); after `retries` trips in one day it locks out until
# midnight.  A DR rule sheds for at least shed_s and until its trigger has cleared, then
# waits a random 0..restore_random_s seconds (per-node seed) so a fleet does not rebound
# at once.  max_energy_day sheds until midnight.
#
# A site with generation: with the policy's relay = "site" (the default: the relay is the
# whole connection, generation included) a DR rule does not shed while the site exports (p,
# the net active power at the grid connection, below 0): the grid asking for less load is
# short of generation, and disconnecting an exporter takes generation away.  It logs
# `dr_kept` (value = W exported) once per excursion and sheds if the site turns importer
# while the trigger still holds.  The exception is voltage_outside above its high level,
# which export causes and disconnecting relieves.  Limits are protection and shed regardless.
# With relay = "load" (the relay switches a load, generation stays connected) DR sheds
# whatever the power flow: an exporter that sheds a load exports more.
from array import array

from micropython import const

from meternode import _nop

# Event codes passed to the sink.
EV_TARIFF = const(1)  # rule -1, value = new tariff index
EV_LIMIT = const(2)  # rule = limit index, value = limit kind
EV_SHED = const(3)  # rule = index (DR rules offset by 100), value 0
EV_RESTORE = const(4)  # relay closed again, rule = the last rule released
EV_LOCKOUT = const(5)  # a limit tripped more than `retries` times today
EV_DR = const(6)  # rule = DR index, value = trigger code
EV_DR_END = const(7)  # DR condition over, value = random delay chosen (s)
EV_DAY = const(8)  # new day, value = day type (0 weekday, 1 weekend, 2 holiday)
EV_PRICE = const(9)  # real-time price pushed (value = validity s) or expired (value 0)
EV_DR_KEPT = const(10)  # DR trigger held, but the site exports: not shed (value = W exported)

DR_RULE_BASE = const(100)

_OVER_V = const(0)
_UNDER_V = const(1)
_OVER_I = const(2)
_MAX_P = const(3)
_MAX_E = const(4)
_TRIG_EVENT = const(0)
_TRIG_PRICE = const(1)
_TRIG_FREQ = const(2)
_TRIG_VOLT = const(3)
_DAY_S = const(86400)
EPOCH0 = const(1704067200)  # 2024-01-01T00:00:00Z, a UTC midnight
_DAY0 = const(19723)  # EPOCH0 // 86400
_MASK = const(0x3FFFFFFF)


def seconds(epoch):
    # epoch seconds -> engine seconds (allocates on 32-bit: not for ticks)
    return int(epoch) - EPOCH0


def epoch(t):
    # engine seconds -> epoch seconds
    return t + EPOCH0


class EventRing:
    # Preallocated ring of the last `n` events (code, rule, value, t); push allocates nothing.
    # Three 32-bit ints an event: code and rule share one (code 1..15 in the low 4 bits,
    # rule + 1 above: rules are -1..DR_RULE_BASE + 7), then value and t, all engine small ints
    # (a quarter less than a word each, half a list's slots on a 64-bit port).
    def __init__(self, n=64):
        self.n = n
        self.buf = array("i", bytes(12 * n))
        self.head = 0  # total events pushed (index = head % n)

    def push(self, code, rule, value, t):
        k = 3 * (self.head % self.n)
        b = self.buf
        b[k] = code | (rule + 1) << 4
        b[k + 1] = value
        b[k + 2] = t
        self.head += 1

    def since(self, mark):
        # Events pushed after `mark` (a previous head) as tuples; allocates, not for ticks.
        out = []
        start = max(mark, self.head - self.n)
        b = self.buf
        for h in range(start, self.head):
            k = 3 * (h % self.n)
            out.append((b[k] & 15, (b[k] >> 4) - 1, b[k + 1], b[k + 2]))
        return out


def civil(day):
    # Days since 1970-01-01 -> year * 10000 + month * 100 + day, by integer arithmetic only
    # (proleptic Gregorian; returns an int so the engine's day change allocates nothing).
    z = day + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (yoe + era * 400 + (1 if m <= 2 else 0)) * 10000 + m * 100 + d


def event_name(code):
    # The name of event code `code` (EV_*: policy/event messages), "?" for another.  One
    # string split per call: events are few, and a dict of the ten names was held for ever
    # (~0.2 KB on the 32-bit port, twice that on 64-bit)
    names = "tariff limit shed restore lockout dr dr_end day price dr_kept".split()
    return names[code - 1] if 0 < code <= len(names) else "?"


# Each limit and each DR rule is one list: its compact row's settings (the level as a float)
# followed by its state, all read and written in place by the tick.  Indexes into a limit:
_L_KIND = const(0)
_L_LEV = const(1)  # float; max_energy_day: in mWh
_L_HOLD = const(2)
_L_ACT = const(3)
_L_SHED = const(4)
_L_RETRY = const(5)
_L_SINCE = const(6)  # time the condition became true ...
_L_ON = const(7)  # ... when this is 1
_L_FIRED = const(8)  # 1 while an event-only limit stays true (fire once)
_L_TRIPS = const(9)  # trips today
_L_UNTIL = const(10)  # relay held open until (0 = not holding)
# ... and into a DR rule:
_D_TRIG = const(0)
_D_A = const(1)  # float
_D_B = const(2)  # float
_D_FOR = const(3)
_D_SHED = const(4)
_D_RND = const(5)
_D_SINCE = const(6)
_D_ON = const(7)  # 1: since holds when the trigger became true
_D_STATE = const(8)  # 0 idle, 1 shedding, 2 waiting the random restore delay, 3 kept
_D_UNTIL = const(9)  # end of the minimum shed / of the random delay
_D_EV_START = const(10)  # pushed DR event window (trigger "event")
_D_EV_END = const(11)
# The engine's own scalars are one list too (a name each would be interned for ever):
_S_TZ = const(0)  # the policy's time zone, seconds east of UTC
_S_RT_PRICE = const(1)  # a pushed real-time price (float) ...
_S_RT_UNTIL = const(2)  # ... valid until (engine seconds; 0 = none)
_S_MIDNIGHT = const(3)  # engine seconds of the next local midnight
_S_RNG = const(4)  # xorshift state (_rand)
_S_RELEASE = const(5)  # the rule that released the relay last (the restore event's rule)
_S_RT_MAX = const(6)  # the policy's longest real-time price validity (s)


class Engine:
    def __init__(self, policy, set_tariff=None, relay=None, sink=None, seed=1):
        # The policy checked and what the running engine reads of it: policy/schema.py build(),
        # loaded only while a policy loads (docs/memory.md)
        from meternode.policy.schema import build

        build(self, policy, set_tariff or _nop, relay, sink or _nop, seed)

    # -- commands (from the link; may allocate) ---------------------------------------------
    def push_event(self, start, duration, rule=-1):
        # A pushed DR event (epoch start): every "event" rule (or just `rule`) sheds in
        # [start, start+duration).  start = 0 clears.  A rule shedding now sheds until the
        # new window's end: a cancel ends it at the next tick, a later event moves its end.
        n = 0
        t0 = seconds(start) if start else 0
        for k, r in enumerate(self._drs):
            if r[_D_TRIG] == _TRIG_EVENT and (rule < 0 or rule == k):
                r[_D_EV_START] = t0
                r[_D_EV_END] = t0 + int(duration) if start else 0
                if r[_D_STATE] == 1:
                    r[_D_UNTIL] = r[_D_EV_END]
                n += 1
        return n

    def push_price(self, price, valid_s, now):
        # now: epoch seconds; -> the validity in force (s): the policy's realtime_max_s caps it
        valid = min(int(valid_s), self._st[_S_RT_MAX])
        t = seconds(now)
        self._st[_S_RT_PRICE] = float(price)
        self._st[_S_RT_UNTIL] = t + valid
        self._sink(EV_PRICE, -1, valid, t)
        return valid

    def save(self):
        # The day's counters for a checkpoint (allocates; the service writes it now and then):
        # a reboot must not reset the daily energy budget, trips or lockouts.  Its day is -1
        # until the engine has ticked (nothing to keep yet).
        trips = []
        until = []
        for r in self._lims:
            trips.append(r[_L_TRIPS])
            until.append(r[_L_UNTIL])
        return [self._day, self._e_day0, trips, until]

    def restore(self, st, now):
        # Takes a save() of the same local day back (now: epoch seconds); anything else is
        # ignored (False).  A hold saved as an epoch (before engine seconds) is converted.
        t = seconds(now)
        if not isinstance(st, list) or len(st) != 4 or st[0] != (t + self._st[_S_TZ]) // _DAY_S + _DAY0:
            return False
        lims = self._lims
        if len(st[2]) != len(lims) or len(st[3]) != len(lims):
            return False
        self._new_day(t)
        self._e_day0 = st[1] & _MASK if st[1] >= 0 else -1
        for k, r in enumerate(lims):
            u = st[3][k]
            r[_L_TRIPS] = st[2][k]
            r[_L_UNTIL] = u - EPOCH0 if u >= EPOCH0 else u
        return True

    # -- the tick (allocates nothing) -------------------------------------------------------
    def _new_day(self, t):
        st = self._st
        d = (t + st[_S_TZ]) // _DAY_S  # local days since EPOCH0
        day = d + _DAY0
        self._day = day
        st[_S_MIDNIGHT] = (d + 1) * _DAY_S - st[_S_TZ]
        ymd = civil(day)
        md = ymd % 10000
        dt = 1 if (day + 3) % 7 >= 5 else 0  # 1970-01-01 was a Thursday; Monday = 0
        hol, ss = self._cal
        for h in hol:
            if h == md or h == ymd:
                dt = 2
        season = ss[len(ss) - 1]  # before the first start: the last season (wraps the year)
        for s in ss:
            if s[0] <= md:
                season = s
        self._period = season[1 + dt]
        self.day_type = dt
        for r in self._lims:
            r[_L_TRIPS] = 0
        self._sink(EV_DAY, -1, dt, t)

    def tick(self, t, v, i, f, p, e_mwh):
        # t: engine seconds; allocates nothing
        st = self._st
        local = t + st[_S_TZ]
        if self._day < 0 or t >= st[_S_MIDNIGHT] or local // _DAY_S + _DAY0 != self._day:
            self._new_day(t)
            self._e_day0 = e_mwh
        if self._e_day0 < 0:
            self._e_day0 = e_mwh
        # tariff from the day's periods
        minute = (local % _DAY_S) // 60
        per = self._period
        tar = per[1]
        k = 2
        while k < len(per) and per[k] <= minute:
            tar = per[k + 1]
            k += 2
        if tar != self.tariff:
            self.tariff = tar
            self._set_tariff(tar)
            self._sink(EV_TARIFF, -1, tar, t)
        # price: a pushed real-time price while valid, else the tariff's
        if st[_S_RT_UNTIL]:
            if t < st[_S_RT_UNTIL]:
                self.price = st[_S_RT_PRICE]
            else:
                st[_S_RT_UNTIL] = 0
                self._sink(EV_PRICE, -1, 0, t)
        if not st[_S_RT_UNTIL]:
            self.price = self._prices[tar]
        hold = False  # a rule holds the relay open
        # The limits (protection): each holds the relay open until its own release time.
        lims = self._lims
        for k in range(len(lims)):
            r = lims[k]
            kind = r[_L_KIND]
            if r[_L_UNTIL]:
                if t < r[_L_UNTIL]:
                    hold = True
                    continue
                r[_L_UNTIL] = 0  # retry window over: reconnect and watch again
                r[_L_ON] = 0
                st[_S_RELEASE] = k
            lev = r[_L_LEV]
            if kind == _OVER_V:
                cond = v > lev
            elif kind == _UNDER_V:
                cond = 0 < v < lev  # v = 0: a second without mains measured, not a sag
            elif kind == _OVER_I:
                cond = i > lev
            elif kind == _MAX_P:
                cond = p > lev
            else:
                cond = (e_mwh - self._e_day0) & _MASK >= lev
            if not cond:
                r[_L_ON] = 0
                r[_L_FIRED] = 0
                continue
            if not r[_L_ON]:
                r[_L_ON] = 1
                r[_L_SINCE] = t
            if t - r[_L_SINCE] < r[_L_HOLD] or r[_L_FIRED]:
                continue
            self._sink(EV_LIMIT, k, kind, t)
            if r[_L_ACT] == 0:  # event only: once per excursion
                r[_L_FIRED] = 1
                continue
            r[_L_TRIPS] += 1
            st[_S_RELEASE] = k
            if kind == _MAX_E or (r[_L_RETRY] and r[_L_TRIPS] > r[_L_RETRY]):
                if kind != _MAX_E:
                    self._sink(EV_LOCKOUT, k, r[_L_TRIPS], t)
                r[_L_UNTIL] = st[_S_MIDNIGHT]
            else:
                r[_L_UNTIL] = t + r[_L_SHED]
            hold = True
        # The demand-response rules: idle (0) or kept (3) -> shedding (1) -> the random
        # restore delay (2) -> idle.
        drs = self._drs
        for k in range(len(drs)):
            r = drs[k]
            trig = r[_D_TRIG]
            if trig == _TRIG_EVENT:
                cond = r[_D_EV_START] <= t < r[_D_EV_END]
            elif trig == _TRIG_PRICE:
                cond = self.price > r[_D_A]
            elif trig == _TRIG_FREQ:
                cond = 0 < f < r[_D_A]  # f = 0: no mains measured, not a dip
            else:
                cond = 0 < v < r[_D_A] or v > r[_D_B]
            s = r[_D_STATE]
            if s == 0 or s == 3:
                if not cond:
                    r[_D_ON] = 0
                    r[_D_STATE] = 0
                    continue
                if not r[_D_ON]:
                    r[_D_ON] = 1
                    r[_D_SINCE] = t
                if t - r[_D_SINCE] < r[_D_FOR]:
                    continue
                if self._site and p < 0 and not (trig == _TRIG_VOLT and v > r[_D_B]):
                    # a net exporter on a site relay: shedding would take generation off the grid
                    if s == 0:
                        r[_D_STATE] = 3
                        self._sink(EV_DR_KEPT, DR_RULE_BASE + k, -int(p), t)
                    continue
                r[_D_STATE] = 1
                r[_D_UNTIL] = r[_D_EV_END] if trig == _TRIG_EVENT else t + r[_D_SHED]
                self._sink(EV_DR, DR_RULE_BASE + k, trig, t)
                st[_S_RELEASE] = DR_RULE_BASE + k
                hold = True
                continue
            if s == 1:
                if cond or t < r[_D_UNTIL]:
                    hold = True
                    continue
                # the random restore delay, 0..restore_random_s: xorshift on 30 bits (shifts
                # 7, 3, 2: full period 2**30 - 1, checked by exhaustion), masked before each
                # left shift so that nothing reaches 2**30 (a 32-bit xorshift's words and its
                # 0xFFFFFFFF mask are heap ints on a board); uniform-ish
                x = st[_S_RNG]
                x ^= (x & 0x7FFFFF) << 7
                x ^= x >> 3
                x ^= (x & 0xFFFFFFF) << 2
                st[_S_RNG] = x
                n = r[_D_RND]
                delay = x % (n + 1) if n > 0 else 0
                r[_D_STATE] = 2
                r[_D_UNTIL] = t + delay
                self._sink(EV_DR_END, DR_RULE_BASE + k, delay, t)
            if t < r[_D_UNTIL]:
                hold = True
                continue
            r[_D_STATE] = 0
            r[_D_ON] = 0
            st[_S_RELEASE] = DR_RULE_BASE + k
        if hold == self.relay_on:
            self.relay_on = not hold
            if self._relay is not None:
                self._relay.set(self.relay_on)
            self._sink(EV_RESTORE if self.relay_on else EV_SHED, st[_S_RELEASE], 0, t)
