# Policy documents: the source form the operator writes (TOML on the host, as a dict here)
# and the compact form the node stores and runs.  compile_policy() turns a source dict into
# the compact dict; check_compact() validates a compact dict.  The host runs both (so a
# policy that leaves the host has passed the node's own check); the node runs
# check_compact() on every policy it loads.  Every error names the bad key.
#
# Source form (keys; see docs/policy.md for a full example):
#   name, utc_offset_min, tariffs = [names, <= 8], holidays = ["MM-DD" | "YYYY-MM-DD"],
#   [[seasons]] start = "MM-DD", weekday/weekend/holiday = [["HH:MM", tariff], ...]
#   [prices] per_kwh = {tariff = price}, realtime_max_s
#   [[limits]] kind, level, hold_s, action, shed_s, retries
#   [[dr]] trigger, level | low/high, for_s, shed_s, restore_random_s
#   [reporting] telemetry_s, profile_min, quantities
#
# Compact form (JSON, short keys):
#   {"f": 1, "n": name, "tz": minutes, "t": [tariff names], "h": [MMDD | YYYYMMDD],
#    "s": [[start MMDD, weekday, weekend, holiday], ...]  each day = [min0, tariff0, min1, ...]
#    "p": [price per tariff or -1], "rt": realtime_max_s,
#    "l": [[kind, level, hold_s, action, shed_s, retries], ...],
#    "d": [[trigger, a, b, for_s, shed_s, restore_random_s], ...],
#    "r": [telemetry_s, profile_min, [quantities]]}
FORMAT = 1
MAX_TARIFFS = 8
MAX_PERIODS = 24  # per day type
MAX_SEASONS = 8
MAX_HOLIDAYS = 64
MAX_LIMITS = 8
MAX_DR = 8

# Limit kinds and actions, DR triggers: codes used by the compact form and the engine.
LIMIT_KINDS = ("over_voltage", "under_voltage", "over_current", "max_power", "max_energy_day")
ACTIONS = ("event", "shed")
DR_TRIGGERS = ("event", "price_above", "freq_below", "voltage_outside")
QUANTITIES = ("v", "i", "f", "p", "q", "pf", "e_imp", "e_exp", "tariff", "price", "relay")
DAY_TYPES = ("weekday", "weekend", "holiday")


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


_MDAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def parse_date(s, where, year_ok=True):
    # "MM-DD" -> MMDD, "YYYY-MM-DD" -> YYYYMMDD.
    if not isinstance(s, str):
        raise PolicyError("%s must be a date string 'MM-DD' or 'YYYY-MM-DD', not %r" % (where, s))
    parts = s.split("-")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = None
    if nums is None or len(nums) not in ((2, 3) if year_ok else (2,)):
        raise PolicyError("%s = %r is not a date ('MM-DD'%s)" % (where, s, " or 'YYYY-MM-DD'" if year_ok else ""))
    y = nums[0] if len(nums) == 3 else 0
    m, d = nums[-2], nums[-1]
    if not (1 <= m <= 12 and 1 <= d <= _MDAYS[m - 1]) or (len(nums) == 3 and not 1970 <= y <= 2199):
        raise PolicyError("%s = %r is not a valid date" % (where, s))
    return y * 10000 + m * 100 + d


def parse_time(s, where):
    # "HH:MM" -> minutes of the day.
    if not isinstance(s, str) or len(s.split(":")) != 2:
        raise PolicyError("%s must be a time 'HH:MM', not %r" % (where, s))
    h, m = s.split(":")
    try:
        h, m = int(h), int(m)
    except ValueError:
        raise PolicyError("%s = %r is not a time 'HH:MM'" % (where, s))
    if not (0 <= h <= 23 and 0 <= m <= 59):
        raise PolicyError("%s = %r is not a valid time of day" % (where, s))
    return h * 60 + m


def _day(periods, tariffs, where):
    _list(periods, where, MAX_PERIODS)
    if not periods:
        raise PolicyError('%s is empty; give at least ["00:00", tariff]' % where)
    flat = []
    last = -1
    for n, p in enumerate(periods):
        w = "%s[%d]" % (where, n)
        if not isinstance(p, list) or len(p) != 2:
            raise PolicyError('%s must be ["HH:MM", tariff], not %r' % (w, p))
        t = parse_time(p[0], w)
        if n == 0 and t != 0:
            raise PolicyError("%s must start at 00:00, not %r" % (w, p[0]))
        if t <= last:
            raise PolicyError("%s starts at %r, not after the period before it" % (w, p[0]))
        last = t
        flat.append(t)
        flat.append(_choice(p[1], tariffs, w + " tariff"))
    return flat


def compile_policy(src):
    # Source dict (from TOML) -> compact dict.  Raises PolicyError naming the bad key.
    w = "policy"
    _table(src, w)
    _no_extra(
        src, ("name", "utc_offset_min", "tariffs", "holidays", "seasons", "prices", "limits", "dr", "reporting"), w
    )
    name = _str(_get(src, "name", w), w + ".name")
    tz = _int(_get(src, "utc_offset_min", w, 0), w + ".utc_offset_min", -720, 840)
    tariffs = _list(_get(src, "tariffs", w), w + ".tariffs", MAX_TARIFFS)
    if not tariffs:
        raise PolicyError("policy.tariffs is empty; name at least one tariff")
    for n, t in enumerate(tariffs):
        _str(t, "policy.tariffs[%d]" % n)
        if tariffs.index(t) != n:
            raise PolicyError("policy.tariffs[%d] = %r is a duplicate" % (n, t))
    hol = [
        parse_date(d, "policy.holidays[%d]" % n)
        for n, d in enumerate(_list(_get(src, "holidays", w, []), w + ".holidays", MAX_HOLIDAYS))
    ]
    seasons = []
    slist = _list(_get(src, "seasons", w), w + ".seasons", MAX_SEASONS)
    if not slist:
        raise PolicyError("policy.seasons is empty; give at least one season")
    for n, s in enumerate(slist):
        sw = "policy.seasons[%d]" % n
        _table(s, sw)
        _no_extra(s, ("name", "start", "weekday", "weekend", "holiday"), sw)
        start = parse_date(_get(s, "start", sw, "01-01"), sw + ".start", False)
        wd = _day(_get(s, "weekday", sw), tariffs, sw + ".weekday")
        we = _day(_get(s, "weekend", sw, s.get("weekday")), tariffs, sw + ".weekend")
        ho = _day(_get(s, "holiday", sw, s.get("weekend", s.get("weekday"))), tariffs, sw + ".holiday")
        seasons.append([start, wd, we, ho])
    seasons.sort(key=lambda x: x[0])
    for n in range(1, len(seasons)):
        if seasons[n][0] == seasons[n - 1][0]:
            raise PolicyError("policy.seasons: two seasons start on %04d (MMDD)" % seasons[n][0])
    prices = [-1.0] * len(tariffs)
    rt = 3600
    if "prices" in src:
        pw = "policy.prices"
        pr = _table(src["prices"], pw)
        _no_extra(pr, ("currency", "per_kwh", "realtime_max_s"), pw)
        per = _table(_get(pr, "per_kwh", pw, {}), pw + ".per_kwh")
        for k, v in per.items():
            prices[_choice(k, tariffs, pw + ".per_kwh key")] = _num(v, "%s.per_kwh.%s" % (pw, k), 0.0)
        rt = _int(_get(pr, "realtime_max_s", pw, 3600), pw + ".realtime_max_s", 1, 7 * 86400)
    limits = []
    for n, lm in enumerate(_list(_get(src, "limits", w, []), w + ".limits", MAX_LIMITS)):
        lw = "policy.limits[%d]" % n
        _table(lm, lw)
        _no_extra(lm, ("kind", "level", "hold_s", "action", "shed_s", "retries"), lw)
        kind = _choice(_get(lm, "kind", lw), LIMIT_KINDS, lw + ".kind")
        level = _num(_get(lm, "level", lw), lw + ".level", 0.0)
        hold = _int(_get(lm, "hold_s", lw, 0), lw + ".hold_s", 0, 86400)
        action = _choice(_get(lm, "action", lw, "event"), ACTIONS, lw + ".action")
        shed = _int(_get(lm, "shed_s", lw, 60), lw + ".shed_s", 1, 86400)
        retries = _int(_get(lm, "retries", lw, 0), lw + ".retries", 0, 100)
        limits.append([kind, level, hold, action, shed, retries])
    drs = []
    for n, r in enumerate(_list(_get(src, "dr", w, []), w + ".dr", MAX_DR)):
        dw = "policy.dr[%d]" % n
        _table(r, dw)
        _no_extra(r, ("name", "trigger", "level", "low", "high", "for_s", "shed_s", "restore_random_s"), dw)
        trig = _choice(_get(r, "trigger", dw), DR_TRIGGERS, dw + ".trigger")
        a = b = 0.0
        if trig == 1 or trig == 2:
            a = _num(_get(r, "level", dw), dw + ".level", 0.0)
        elif trig == 3:
            a = _num(_get(r, "low", dw), dw + ".low", 0.0)
            b = _num(_get(r, "high", dw), dw + ".high", 0.0)
            if b <= a:
                raise PolicyError("%s.high = %r must be above %s.low = %r" % (dw, b, dw, a))
        for_s = _int(_get(r, "for_s", dw, 0), dw + ".for_s", 0, 3600)
        shed = _int(_get(r, "shed_s", dw, 300), dw + ".shed_s", 1, 86400)
        rnd = _int(_get(r, "restore_random_s", dw, 0), dw + ".restore_random_s", 0, 86400)
        drs.append([trig, a, b, for_s, shed, rnd])
    rep = _table(_get(src, "reporting", w, {}), w + ".reporting")
    _no_extra(rep, ("telemetry_s", "profile_min", "quantities"), w + ".reporting")
    tel = _int(_get(rep, "telemetry_s", w + ".reporting", 10), w + ".reporting.telemetry_s", 1, 86400)
    prof = _int(_get(rep, "profile_min", w + ".reporting", 15), w + ".reporting.profile_min", 1, 1440)
    qs = _list(_get(rep, "quantities", w + ".reporting", ["v", "p", "e_imp", "e_exp"]), w + ".reporting.quantities", 16)
    for n, q in enumerate(qs):
        _choice(q, QUANTITIES, "policy.reporting.quantities[%d]" % n)
    c = {
        "f": FORMAT,
        "n": name,
        "tz": tz,
        "t": list(tariffs),
        "h": hol,
        "s": seasons,
        "p": prices,
        "rt": rt,
        "l": limits,
        "d": drs,
        "r": [tel, prof, list(qs)],
    }
    return check_compact(c)


def _cday(v, nt, where):
    _list(v, where, 2 * MAX_PERIODS)
    if len(v) < 2 or len(v) % 2 or v[0] != 0:
        raise PolicyError("%s must be [0, tariff, minute, tariff, ...]" % where)
    last = -1
    for k in range(0, len(v), 2):
        m = _int(v[k], "%s[%d]" % (where, k), 0, 1439)
        if m <= last:
            raise PolicyError("%s[%d] = %d is not after %d" % (where, k, m, last))
        last = m
        _int(v[k + 1], "%s[%d]" % (where, k + 1), 0, nt - 1)


def check_compact(c):
    # Validates a compact policy (as stored on the node); returns it unchanged.
    w = "policy"
    _table(c, w)
    _no_extra(c, ("f", "n", "tz", "t", "h", "s", "p", "rt", "l", "d", "r"), w)
    if _get(c, "f", w) != FORMAT:
        raise PolicyError("policy.f = %r: this node understands format %d" % (c.get("f"), FORMAT))
    _str(_get(c, "n", w), "policy.n")
    _int(_get(c, "tz", w), "policy.tz", -720, 840)
    t = _list(_get(c, "t", w), "policy.t", MAX_TARIFFS)
    nt = len(t)
    if nt == 0:
        raise PolicyError("policy.t is empty")
    for n, d in enumerate(_list(_get(c, "h", w), "policy.h", MAX_HOLIDAYS)):
        _int(d, "policy.h[%d]" % n, 101, 21991231)
    ss = _list(_get(c, "s", w), "policy.s", MAX_SEASONS)
    if not ss:
        raise PolicyError("policy.s is empty")
    last = 0
    for n, s in enumerate(ss):
        sw = "policy.s[%d]" % n
        if not isinstance(s, list) or len(s) != 4:
            raise PolicyError("%s must be [start, weekday, weekend, holiday]" % sw)
        st = _int(s[0], sw + "[0]", 101, 1231)
        if st <= last:
            raise PolicyError("%s[0] = %d: seasons must be sorted by start" % (sw, st))
        last = st
        for k in range(3):
            _cday(s[k + 1], nt, "%s[%d]" % (sw, k + 1))
    p = _list(_get(c, "p", w), "policy.p", MAX_TARIFFS)
    if len(p) != nt:
        raise PolicyError("policy.p has %d prices for %d tariffs" % (len(p), nt))
    for n, v in enumerate(p):
        _num(v, "policy.p[%d]" % n, -1.0)
    _int(_get(c, "rt", w), "policy.rt", 1, 7 * 86400)
    for n, lm in enumerate(_list(_get(c, "l", w), "policy.l", MAX_LIMITS)):
        lw = "policy.l[%d]" % n
        if not isinstance(lm, list) or len(lm) != 6:
            raise PolicyError("%s must be [kind, level, hold_s, action, shed_s, retries]" % lw)
        _int(lm[0], lw + "[0] (kind)", 0, len(LIMIT_KINDS) - 1)
        _num(lm[1], lw + "[1] (level)", 0.0)
        _int(lm[2], lw + "[2] (hold_s)", 0, 86400)
        _int(lm[3], lw + "[3] (action)", 0, len(ACTIONS) - 1)
        _int(lm[4], lw + "[4] (shed_s)", 1, 86400)
        _int(lm[5], lw + "[5] (retries)", 0, 100)
    for n, r in enumerate(_list(_get(c, "d", w), "policy.d", MAX_DR)):
        dw = "policy.d[%d]" % n
        if not isinstance(r, list) or len(r) != 6:
            raise PolicyError("%s must be [trigger, a, b, for_s, shed_s, restore_random_s]" % dw)
        _int(r[0], dw + "[0] (trigger)", 0, len(DR_TRIGGERS) - 1)
        _num(r[1], dw + "[1]", 0.0)
        _num(r[2], dw + "[2]", 0.0)
        _int(r[3], dw + "[3] (for_s)", 0, 3600)
        _int(r[4], dw + "[4] (shed_s)", 1, 86400)
        _int(r[5], dw + "[5] (restore_random_s)", 0, 86400)
    rep = _list(_get(c, "r", w), "policy.r", 3)
    if len(rep) != 3:
        raise PolicyError("policy.r must be [telemetry_s, profile_min, quantities]")
    _int(rep[0], "policy.r[0] (telemetry_s)", 1, 86400)
    _int(rep[1], "policy.r[1] (profile_min)", 1, 1440)
    for n, q in enumerate(_list(rep[2], "policy.r[2]", 16)):
        _choice(q, QUANTITIES, "policy.r[2][%d]" % n)
    return c
