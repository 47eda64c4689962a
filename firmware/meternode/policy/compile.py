# The policy source form (what the operator writes, TOML on the host, as a dict here) ->
# the compact form the node runs (schema.py).  Host side: the node only ever loads
# schema.check_compact(), which compile_policy() also runs on its result.  Pure Python,
# imports on MicroPython too (the firmware tests use it).  Every error names the bad key.
from meternode.policy.schema import (
    ACTIONS,
    DR_TRIGGERS,
    FORMAT,
    LIMIT_KINDS,
    MAX_DR,
    MAX_HOLIDAYS,
    MAX_LIMITS,
    MAX_PERIODS,
    MAX_SEASONS,
    MAX_TARIFFS,
    QUANTITIES,
    RELAY_KINDS,
    PolicyError,
    _choice,
    _get,
    _int,
    _list,
    _no_extra,
    _num,
    _str,
    _table,
    check_compact,
)

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
        src,
        ("name", "utc_offset_min", "tariffs", "holidays", "seasons", "prices", "limits", "dr", "reporting", "relay"),
        w,
    )
    relay = _choice(_get(src, "relay", w, "site"), RELAY_KINDS, w + ".relay")
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
    rep = None
    if "reporting" in src:  # optional: without it the node keeps its own reporting settings
        r = _table(src["reporting"], w + ".reporting")
        rw = w + ".reporting"
        _no_extra(r, ("telemetry_s", "profile_min", "quantities"), rw)
        tel = _int(_get(r, "telemetry_s", rw, 10), rw + ".telemetry_s", 1, 86400)
        prof = _int(_get(r, "profile_min", rw, 15), rw + ".profile_min", 1, 1440)
        if 1440 % prof:
            raise PolicyError("%s.profile_min = %d does not divide a day" % (rw, prof))
        qs = _list(_get(r, "quantities", rw, ["v", "p", "e_imp", "e_exp"]), rw + ".quantities", 16)
        for n, q in enumerate(qs):
            _choice(q, QUANTITIES, "%s.quantities[%d]" % (rw, n))
        rep = [tel, prof, list(qs)]
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
    }
    if rep is not None:
        c["r"] = rep
    if relay:  # "site" is the default and stays out of the compact form (older nodes read it)
        c["rl"] = relay
    return check_compact(c)
