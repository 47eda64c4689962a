# Policy documents: the compact form the node stores and runs, and the checks shared by the
# host and the node.  compile.py turns the operator's source form (TOML on the host) into
# the compact form and ends with check_compact(), the check the node runs on every policy
# it loads, so a policy that leaves the host has passed the node's own check.  The node
# never loads compile.py (it costs RAM).  Every error names the bad key.
#
# Source form (keys; see docs/policy.md for a full example):
#   name, utc_offset_min, tariffs = [names, <= 8], holidays = ["MM-DD" | "YYYY-MM-DD"],
#   [[seasons]] start = "MM-DD", weekday/weekend/holiday = [["HH:MM", tariff], ...]
#   [prices] per_kwh = {tariff = price}, realtime_max_s
#   [[limits]] kind, level, hold_s, action, shed_s, retries
#   [[dr]] trigger, level | low/high, for_s, shed_s, restore_random_s
#   [reporting] telemetry_s, profile_min, quantities
#   relay = "site" | "load"   what the node's relay switches (engine.py: a site with generation)
#
# Compact form (JSON, short keys):
#   {"f": 1, "n": name, "tz": minutes, "t": [tariff names], "h": [MMDD | YYYYMMDD],
#    "s": [[start MMDD, weekday, weekend, holiday], ...]  each day = [min0, tariff0, min1, ...]
#    "p": [price per tariff or -1], "rt": realtime_max_s,
#    "l": [[kind, level, hold_s, action, shed_s, retries], ...],
#    "d": [[trigger, a, b, for_s, shed_s, restore_random_s], ...],
#    "r": [telemetry_s, profile_min, [quantities]],   (optional)
#    "rl": 1}   (optional: the relay switches a load; absent or 0: the whole site)
from micropython import const

FORMAT = const(1)
MAX_TARIFFS = const(8)
MAX_PERIODS = const(24)  # per day type
MAX_SEASONS = const(8)
MAX_HOLIDAYS = const(64)
MAX_LIMITS = const(8)
MAX_DR = const(8)

# Limit kinds and actions, DR triggers: codes used by the compact form and the engine.
LIMIT_KINDS = ("over_voltage", "under_voltage", "over_current", "max_power", "max_energy_day")
ACTIONS = ("event", "shed")
DR_TRIGGERS = ("event", "price_above", "freq_below", "voltage_outside")
QUANTITIES = ("v", "i", "f", "p", "q", "pf", "e_imp", "e_exp", "tariff", "price", "relay")
DAY_TYPES = ("weekday", "weekend", "holiday")
RELAY_KINDS = ("site", "load")  # the relay disconnects the whole site / switches one load


class PolicyError(ValueError):
    pass


def _num(v, where, lo=None, hi=None, integer=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PolicyError("%s must be a number, not %r" % (where, v))
    if integer and not isinstance(v, int):
        raise PolicyError("%s must be a whole number, not %r" % (where, v))
    if lo is not None and v < lo:
        raise PolicyError("%s = %r is below %r" % (where, v, lo))
    if hi is not None and v > hi:
        raise PolicyError("%s = %r is above %r" % (where, v, hi))
    return v if integer else float(v)


def _int(v, where, lo=None, hi=None):
    return _num(v, where, lo, hi, True)


def _str(v, where):
    if not isinstance(v, str) or not v:
        raise PolicyError("%s must be a non-empty string, not %r" % (where, v))
    return v


def _list(v, where, most):
    if not isinstance(v, list):
        raise PolicyError("%s must be a list, not %r" % (where, v))
    if len(v) > most:
        raise PolicyError("%s has %d entries; at most %d" % (where, len(v), most))
    return v


def _table(d, where):
    if not isinstance(d, dict):
        raise PolicyError("%s must be a table, not %r" % (where, d))
    return d


def _no_extra(d, allowed, where):
    for k in d:
        if k not in allowed:
            raise PolicyError("%s.%s is not a known key (known: %s)" % (where, k, ", ".join(allowed)))


def _get(d, key, where, default=None):
    if key in d:
        return d[key]
    if default is None:
        raise PolicyError("%s.%s is missing" % (where, key))
    return default


def _choice(v, names, where):
    if v not in names:
        raise PolicyError("%s must be one of %s, not %r" % (where, "/".join(names), v))
    return names.index(v)


def _cday(v, n, where):
    _list(v, where, 2 * MAX_PERIODS)
    if len(v) < 2 or len(v) % 2 or v[0] != 0:
        raise PolicyError("%s must be [0, tariff, minute, tariff, ...]" % where)
    last = -1
    for k in range(0, len(v), 2):
        m = _int(v[k], "%s[%d]" % (where, k), 0, 1439)
        if m <= last:
            raise PolicyError("%s[%d] = %d is not after %d" % (where, k, m, last))
        last = m
        _int(v[k + 1], "%s[%d]" % (where, k + 1), 0, n - 1)


def _key(key):
    # "policy.<key>", a policy key's name in errors: made here, not one interned literal per key
    return "policy." + key


def build(self, policy, set_tariff, relay, sink, seed):
    # Engine.__init__ (engine.py), here where the check is loaded anyway: the engine's module
    # does not hold this code while the node runs.
    c = check_compact(policy)
    # The compact document itself is not kept (~60 objects): only what the running
    # engine reads from it.  Its name names it in events, checkpoints and policy/state.
    self.name = c["n"]
    # holidays, seasons (read at each day change) in tuples: a list built by the JSON
    # parser keeps up to twice its items' room, a tuple holds just its items
    ss = []
    for x in c["s"]:
        ss.append((x[0], tuple(x[1]), tuple(x[2]), tuple(x[3])))
    self._cal = (tuple(c["h"]), tuple(ss))
    self._set_tariff = set_tariff
    self._relay = relay  # None: no relay
    self._sink = sink
    # [_S_TZ, _S_RT_PRICE, _S_RT_UNTIL, _S_MIDNIGHT, _S_RNG, _S_RELEASE, _S_RT_MAX]
    self._st = [c["tz"] * 60, 0.0, 0, 0, (seed & 0x3FFFFFFF) or 1, 0, c["rt"]]
    # (loops, not comprehensions: each of those is a function held with the module)
    p = self._prices = []
    for x in c["p"]:
        p.append(float(x))
    p = self._lims = []
    for x in c["l"]:
        lev = float(x[1]) * 1000.0 if x[0] == 4 else float(x[1])  # 4: max_energy_day, in kWh
        p.append([x[0], lev, x[2], x[3], x[4], x[5], 0, 0, 0, 0, 0])
    p = self._drs = []
    for x in c["d"]:
        p.append([x[0], float(x[1]), float(x[2]), x[3], x[4], x[5], 0, 0, 0, 0, 0, 0])
    self._site = c.get("rl", 0) == 0  # the relay disconnects the site, generation included
    self.tariff = -1
    self.day_type = -1
    self.relay_on = True
    self.price = self._prices[0]
    self._day = -1  # local day number (days since 1970) of the running day
    self._period = c["s"][0][1]
    self._e_day0 = -1


def check_compact(c):
    # Validates a compact policy (as stored on the node); returns it unchanged.
    w = "policy"
    _table(c, w)
    _no_extra(c, ("f", "n", "tz", "t", "h", "s", "p", "rt", "l", "d", "r", "rl"), w)
    if _get(c, "f", w) != FORMAT:
        raise PolicyError("policy.f = %r: this node understands format %d" % (c.get("f"), FORMAT))
    _str(_get(c, "n", w), _key("n"))
    _int(_get(c, "tz", w), _key("tz"), -720, 840)
    t = _list(_get(c, "t", w), _key("t"), MAX_TARIFFS)
    nt = len(t)
    if nt == 0:
        raise PolicyError("policy.t is empty")
    for n, d in enumerate(_list(_get(c, "h", w), _key("h"), MAX_HOLIDAYS)):
        _int(d, "policy.h[%d]" % n, 101, 21991231)
    ss = _list(_get(c, "s", w), _key("s"), MAX_SEASONS)
    if not ss:
        raise PolicyError("policy.s is empty")
    last = 0
    for n, s in enumerate(ss):
        sw = "policy.s[%d]" % n
        if not isinstance(s, list) or len(s) != 4:
            raise PolicyError("%s must be [start, weekday, weekend, holiday]" % sw)
        st = _int(s[0], "%s[%d]" % (sw, 0), 101, 1231)
        if st <= last:
            raise PolicyError("%s[0] = %d: seasons must be sorted by start" % (sw, st))
        last = st
        for k in range(3):
            _cday(s[k + 1], nt, "%s[%d]" % (sw, k + 1))
    p = _list(_get(c, "p", w), _key("p"), MAX_TARIFFS)
    if len(p) != nt:
        raise PolicyError("policy.p has %d prices for %d tariffs" % (len(p), nt))
    for n, v in enumerate(p):
        _num(v, "policy.p[%d]" % n, -1.0)
    _int(_get(c, "rt", w), _key("rt"), 1, 7 * 86400)
    for n, lm in enumerate(_list(_get(c, "l", w), _key("l"), MAX_LIMITS)):
        lw = "policy.l[%d]" % n
        if not isinstance(lm, list) or len(lm) != 6:
            raise PolicyError("%s must be [kind, level, hold_s, action, shed_s, retries]" % lw)
        _int(lm[0], lw + "[0] (kind)", 0, len(LIMIT_KINDS) - 1)
        _num(lm[1], lw + "[1] (level)", 0.0)
        _int(lm[2], lw + "[2] (hold_s)", 0, 86400)
        _int(lm[3], lw + "[3] (action)", 0, len(ACTIONS) - 1)
        _int(lm[4], lw + "[4] (shed_s)", 1, 86400)
        _int(lm[5], lw + "[5] (retries)", 0, 100)
    for n, r in enumerate(_list(_get(c, "d", w), _key("d"), MAX_DR)):
        dw = "policy.d[%d]" % n
        if not isinstance(r, list) or len(r) != 6:
            raise PolicyError("%s must be [trigger, a, b, for_s, shed_s, restore_random_s]" % dw)
        _int(r[0], dw + "[0] (trigger)", 0, len(DR_TRIGGERS) - 1)
        _num(r[1], "%s[%d]" % (dw, 1), 0.0)
        _num(r[2], "%s[%d]" % (dw, 2), 0.0)
        _int(r[3], dw + "[3] (for_s)", 0, 3600)
        _int(r[4], dw + "[4] (shed_s)", 1, 86400)
        _int(r[5], dw + "[5] (restore_random_s)", 0, 86400)
    if "rl" in c:
        _int(c["rl"], "policy.rl (relay)", 0, len(RELAY_KINDS) - 1)
    if "r" in c:  # optional reporting settings
        rep = _list(c["r"], _key("r"), 3)
        if len(rep) != 3:
            raise PolicyError("policy.r must be [telemetry_s, profile_min, quantities]")
        _int(rep[0], "policy.r[0] (telemetry_s)", 1, 86400)
        _int(rep[1], "policy.r[1] (profile_min)", 1, 1440)
        for n, q in enumerate(_list(rep[2], "policy.r[2]", 16)):
            _choice(q, QUANTITIES, "policy.r[2][%d]" % n)
    return c
