# The policy engine: once a second, from the latest readings, picks the tariff, checks the
# limits and the demand-response rules, and drives one relay.  It needs no link (works
# offline), logs every action through an event sink, and allocates nothing per tick: all
# state is ints in lists made in __init__, readings are only compared, never computed with.
#
#   eng = Engine(policy_compact, set_tariff=meter.set_tariff, relay=relay, sink=ring.push)
#   eng.tick(t, v, i, f, p, e_mwh)   # t: engine seconds (below); v V, i A, f Hz, p W;
#                                    # e_mwh: the import register's low 30 bits (mWh)
#
# The service ticks it once per *measured* second (metrology/seconds.py), so a condition
# that came and went while the policy task was starved is still seen; f = 0 and v = 0 mean
# "no mains measured in that second" and trigger neither a frequency nor a voltage rule.
#
# `relay` is any object with set(on) (True = load connected); `sink(code, rule, value, t)`
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
from micropython import const

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
EVENT_NAMES = {
    1: "tariff",
    2: "limit",
    3: "shed",
    4: "restore",
    5: "lockout",
    6: "dr",
    7: "dr_end",
    8: "day",
    9: "price",
    10: "dr_kept",
}

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
    def __init__(self, n=64):
        self.n = n
        self.buf = [0] * (4 * n)
        self.head = 0  # total events pushed (index = head % n)

    def push(self, code, rule, value, t):
        k = 4 * (self.head % self.n)
        b = self.buf
        b[k] = code
        b[k + 1] = rule
        b[k + 2] = value
        b[k + 3] = t
        self.head += 1

    def since(self, mark):
        # Events pushed after `mark` (a previous head) as tuples; allocates, not for ticks.
        out = []
        start = max(mark, self.head - self.n)
        for h in range(start, self.head):
            k = 4 * (h % self.n)
            out.append((self.buf[k], self.buf[k + 1], self.buf[k + 2], self.buf[k + 3]))
        return out


def civil(days):
    # Days since 1970-01-01 -> year * 10000 + month * 100 + day, by integer arithmetic only
    # (proleptic Gregorian; returns an int so the engine's day change allocates nothing).
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (yoe + era * 400 + (1 if m <= 2 else 0)) * 10000 + m * 100 + d


class _Null:
    def set(self, on):
        pass


def _no_tariff(i):
    pass


def _no_sink(code, rule, value, t):
    pass


class Engine:
    def __init__(self, policy, set_tariff=None, relay=None, sink=None, seed=1):
        from meternode.policy.schema import check_compact  # needed only here (docs/memory.md)

        c = check_compact(policy)
        self.policy = c
        self._set_tariff = set_tariff or _no_tariff
        self._relay = relay or _Null()
        self._sink = sink or _no_sink
        self._tz = c["tz"] * 60
        self._hol = list(c["h"])
        self._seasons = c["s"]
        self._prices = [float(x) for x in c["p"]]
        self._rt_max = c["rt"]
        lim = c["l"]
        dr = c["d"]
        nl = len(lim)
        nd = len(dr)
        self.nl = nl
        self.nd = nd
        self._lk = [x[0] for x in lim]
        self._llev = [float(x[1]) for x in lim]
        self._lemwh = [float(x[1]) * 1000.0 for x in lim]  # max_energy_day level in mWh
        self._lhold = [x[2] for x in lim]
        self._lact = [x[3] for x in lim]
        self._lshed = [x[4] for x in lim]
        self._lretry = [x[5] for x in lim]
        self._lsince = [0] * nl  # time the condition became true ...
        self._lon = [0] * nl  # ... when this is 1
        self._lfired = [0] * nl  # 1 while an event-only limit stays true (fire once)
        self._ltrips = [0] * nl  # trips today
        self._luntil = [0] * nl  # relay held open until (0 = not holding)
        self._dk = [x[0] for x in dr]
        self._da = [float(x[1]) for x in dr]
        self._db = [float(x[2]) for x in dr]
        self._dfor = [x[3] for x in dr]
        self._dshed = [x[4] for x in dr]
        self._drnd = [x[5] for x in dr]
        self._dsince = [0] * nd
        self._don = [0] * nd  # 1: _dsince holds when the trigger became true
        self._dstate = [0] * nd  # 0 idle, 1 shedding, 2 waiting the random restore delay, 3 kept
        self._site = c.get("rl", 0) == 0  # the relay disconnects the site, generation included
        self._duntil = [0] * nd  # end of the minimum shed / of the random delay
        self._ev_start = [0] * nd  # pushed DR event window (trigger "event")
        self._ev_end = [0] * nd
        self.reporting = c.get("r")  # [telemetry_s, profile_min, quantities] or None
        self.tariff = -1
        self.day_type = -1
        self.relay_on = True
        self.price = self._prices[0]
        self._rt_price = 0.0
        self._rt_until = 0
        self._day = -1  # local day number (days since 1970) of the running day
        self._midnight = 0  # engine seconds of the next local midnight
        self._period = self._seasons[0][1]
        self._e_day0 = -1
        self._rng = (seed & _MASK) or 1
        self._last_release = 0

    # -- commands (from the link; may allocate) ---------------------------------------------
    def push_event(self, start, duration, rule=-1):
        # A pushed DR event (epoch start): every "event" rule (or just `rule`) sheds in
        # [start, start+duration).  start = 0 clears.
        n = 0
        t0 = seconds(start) if start else 0
        for k in range(self.nd):
            if self._dk[k] == _TRIG_EVENT and (rule < 0 or rule == k):
                self._ev_start[k] = t0
                self._ev_end[k] = t0 + int(duration) if start else 0
                n += 1
        return n

    def push_price(self, price, valid_s, now):
        # now: epoch seconds
        valid = min(int(valid_s), self._rt_max)
        t = seconds(now)
        self._rt_price = float(price)
        self._rt_until = t + valid
        self._sink(EV_PRICE, -1, valid, t)

    @property
    def day_started(self):
        # True once the engine has ticked: its day counters mean something (checkpoints).
        return self._day >= 0

    def save(self):
        # The day's counters for a checkpoint (allocates; the service writes it now and then):
        # a reboot must not reset the daily energy budget, trips or lockouts.
        return [self._day, self._e_day0, list(self._ltrips), list(self._luntil)]

    def restore(self, st, now):
        # Takes a save() of the same local day back (now: epoch seconds); anything else is
        # ignored (False).  A hold saved as an epoch (before engine seconds) is converted.
        t = seconds(now)
        if not isinstance(st, list) or len(st) != 4 or st[0] != (t + self._tz) // _DAY_S + _DAY0:
            return False
        if len(st[2]) != self.nl or len(st[3]) != self.nl:
            return False
        self._new_day(t, t + self._tz)
        self._e_day0 = st[1] & _MASK if st[1] >= 0 else -1
        for k in range(self.nl):
            u = st[3][k]
            self._ltrips[k] = st[2][k]
            self._luntil[k] = u - EPOCH0 if u >= EPOCH0 else u
        return True

    def reset_lockouts(self):
        for k in range(self.nl):
            self._ltrips[k] = 0

    # -- the tick (allocates nothing) -------------------------------------------------------
    def _rand(self, n):
        # xorshift on 30 bits (shifts 7, 3, 2: full period 2**30 - 1, checked by exhaustion),
        # masked before each left shift so that nothing reaches 2**30 (a 32-bit xorshift's
        # words and its 0xFFFFFFFF mask are heap ints on a board); uniform-ish in 0..n
        x = self._rng
        x ^= (x & 0x7FFFFF) << 7
        x ^= x >> 3
        x ^= (x & 0xFFFFFFF) << 2
        self._rng = x
        return x % (n + 1) if n > 0 else 0

    def _new_day(self, t, local):
        d = local // _DAY_S  # days since EPOCH0
        day = d + _DAY0
        self._day = day
        self._midnight = (d + 1) * _DAY_S - self._tz
        ymd = civil(day)
        md = ymd % 10000
        dt = 1 if (day + 3) % 7 >= 5 else 0  # 1970-01-01 was a Thursday; Monday = 0
        for h in self._hol:
            if h == md or h == ymd:
                dt = 2
        ss = self._seasons
        season = ss[len(ss) - 1]  # before the first start: the last season (wraps the year)
        for s in ss:
            if s[0] <= md:
                season = s
        self._period = season[1 + dt]
        self.day_type = dt
        for k in range(self.nl):
            self._ltrips[k] = 0
        self._sink(EV_DAY, -1, dt, t)

    def tick(self, t, v, i, f, p, e_mwh):
        # t: engine seconds; allocates nothing
        local = t + self._tz
        if self._day < 0 or t >= self._midnight or local // _DAY_S + _DAY0 != self._day:
            self._new_day(t, local)
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
        if self._rt_until:
            if t < self._rt_until:
                self.price = self._rt_price
            else:
                self._rt_until = 0
                self._sink(EV_PRICE, -1, 0, t)
        if not self._rt_until:
            self.price = self._prices[tar]
        hold = False
        for k in range(self.nl):
            if self._limit(k, t, v, i, p, e_mwh):
                hold = True
        for k in range(self.nd):
            if self._dr(k, t, v, f, p):
                hold = True
        if hold == self.relay_on:
            self.relay_on = not hold
            self._relay.set(self.relay_on)
            self._sink(EV_RESTORE if self.relay_on else EV_SHED, self._last_release, 0, t)

    def _limit(self, k, t, v, i, p, e_mwh):
        # Returns True while limit k holds the relay open.
        kind = self._lk[k]
        if self._luntil[k]:
            if t < self._luntil[k]:
                return True
            self._luntil[k] = 0  # retry window over: reconnect and watch again
            self._lon[k] = 0
            self._last_release = k
        lev = self._llev[k]
        if kind == _OVER_V:
            cond = v > lev
        elif kind == _UNDER_V:
            cond = 0.0 < v < lev  # v = 0: a second without mains measured, not a sag
        elif kind == _OVER_I:
            cond = i > lev
        elif kind == _MAX_P:
            cond = p > lev
        else:
            cond = (e_mwh - self._e_day0) & _MASK >= self._lemwh[k]
        if not cond:
            self._lon[k] = 0
            self._lfired[k] = 0
            return False
        if not self._lon[k]:
            self._lon[k] = 1
            self._lsince[k] = t
        if t - self._lsince[k] < self._lhold[k] or self._lfired[k]:
            return False
        self._sink(EV_LIMIT, k, kind, t)
        if self._lact[k] == 0:  # event only: once per excursion
            self._lfired[k] = 1
            return False
        self._ltrips[k] += 1
        self._last_release = k
        if kind == _MAX_E or (self._lretry[k] and self._ltrips[k] > self._lretry[k]):
            if kind != _MAX_E:
                self._sink(EV_LOCKOUT, k, self._ltrips[k], t)
            self._luntil[k] = self._midnight
        else:
            self._luntil[k] = t + self._lshed[k]
        return True

    def _dr(self, k, t, v, f, p):
        # Returns True while DR rule k holds the relay open.
        trig = self._dk[k]
        if trig == _TRIG_EVENT:
            cond = self._ev_start[k] <= t < self._ev_end[k]
        elif trig == _TRIG_PRICE:
            cond = self.price > self._da[k]
        elif trig == _TRIG_FREQ:
            cond = 0.0 < f < self._da[k]  # f = 0: no mains measured, not a dip
        else:
            cond = 0.0 < v < self._da[k] or v > self._db[k]
        st = self._dstate[k]
        if st == 0 or st == 3:
            if not cond:
                self._don[k] = 0
                self._dstate[k] = 0
                return False
            if not self._don[k]:
                self._don[k] = 1
                self._dsince[k] = t
            if t - self._dsince[k] < self._dfor[k]:
                return False
            if self._site and p < 0.0 and not (trig == _TRIG_VOLT and v > self._db[k]):
                # a net exporter on a site relay: shedding would take generation off the grid
                if st == 0:
                    self._dstate[k] = 3
                    self._sink(EV_DR_KEPT, DR_RULE_BASE + k, -int(p), t)
                return False
            self._dstate[k] = 1
            self._duntil[k] = self._ev_end[k] if trig == _TRIG_EVENT else t + self._dshed[k]
            self._sink(EV_DR, DR_RULE_BASE + k, trig, t)
            self._last_release = DR_RULE_BASE + k
            return True
        if st == 1:
            if cond or t < self._duntil[k]:
                return True
            delay = self._rand(self._drnd[k])
            self._dstate[k] = 2
            self._duntil[k] = t + delay
            self._sink(EV_DR_END, DR_RULE_BASE + k, delay, t)
        if t < self._duntil[k]:
            return True
        self._dstate[k] = 0
        self._don[k] = 0
        self._last_release = DR_RULE_BASE + k
        return False

    def status(self):
        # A summary for telemetry (allocates).
        return {
            "tariff": self.tariff,
            "tariff_name": self.policy["t"][self.tariff] if self.tariff >= 0 else None,
            "price": self.price,
            "relay": self.relay_on,
            "day_type": self.day_type,
            "policy": self.policy["n"],
        }
