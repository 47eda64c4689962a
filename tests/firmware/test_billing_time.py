# Billing time: the node's local standard time (config.utc_offset_min, ticks.LOCAL_S) for
# midnight, the month and the load profile's periods; the records' timestamps stay UTC.
from meternode.store import records
from meternode.store.log import RecordLog
from mptest import eq, raises, scratch_dir


def _esnap(imp_mwh):
    return {"v": 230.0, "elements": [{"name": "I1", "i": 5.0, "p": 1150.0, "e_imp_mwh": imp_mwh, "e_exp_mwh": 0}]}


def _profile_records(log):
    r = log.reader()
    r.seek(1)
    out = []
    while r.next():
        out.append((records.kind_name(r.kind), r.ts, r.record().get("e_imp_mwh")))
    return out


def test_freezes_periods_and_the_billing_month_follow_the_nodes_local_time():
    # config.utc_offset_min (ticks.LOCAL_S): a node in Brisbane (UTC+10) freezes its day at
    # local midnight, 14:00 UTC the day before, and nothing at UTC midnight; a February demand
    # period that ends in the first hour of Feb 1 local time is February's although UTC still
    # says January 31. In India (+5:30) hourly profile periods end at half past the UTC hours.
    from meternode import ticks
    from meternode.metrology.registers import Registers
    from meternode.store.profile import ProfileRecorder

    feb = 1706745600  # 2024-02-01 00:00 UTC
    try:
        ticks.LOCAL_S = 600 * 60
        loc = feb - 36000  # 2024-02-01 00:00 in UTC+10
        eq((ticks.floor(loc + 5, 86400), ticks.floor(loc - 5, 86400)), (loc, loc - 86400), "local midnights")
        eq((ticks.month(loc - 1), ticks.month(loc)), (2024 * 12 + 0, 2024 * 12 + 1), "local months")
        log = RecordLog(scratch_dir() + "/log", 4096, 65536)
        regs = Registers(1)
        rec = ProfileRecorder(log, 900, None, None, regs)
        regs.demand(3000.0, loc - 900, True)  # January's, ended 13:45 UTC Jan 31
        rec.add(loc - 450, _esnap(100))
        regs.demand(4000.0, loc + 900, True)  # February's, ended 14:15 UTC Jan 31
        rec.add(loc + 450, _esnap(200))
        rec.add(feb - 450, _esnap(300))
        rec.add(feb + 450, _esnap(400))  # UTC midnight: no freeze
        got = [(k, ts, e) for k, ts, e in _profile_records(log) if k != "profile"]
        eq(got, [("daily", loc, 150), ("monthly", loc, 150)], "one day's freezes, at local midnight")
        r = log.reader()
        r.seek(1)
        while r.next():
            if r.kind == records.MONTHLY:
                d = r.record()
                eq((d["md_mw"], d["md_at"]), (3000000, loc - 900), "January's maximum, local")
        eq(regs.md[:3], [4000000, loc + 900, 2024 * 12 + 1], "February's in progress")

        ticks.LOCAL_S = 330 * 60
        log = RecordLog(scratch_dir() + "/log2", 4096, 65536)
        rec = ProfileRecorder(log, 3600)
        t = 1706745600 + 4 * 3600 + 60  # 04:01 UTC = 09:31 local
        for k in range(4):
            rec.add(t + k * 1200, _esnap(100 * k))
        ends = [(ts - feb) % 3600 for k, ts, *_ in _profile_records(log) if k == "profile"]
        eq(ends, [1800], "an hourly period ends at 10:00 local, half past the UTC hour")
    finally:
        ticks.LOCAL_S = 0


def test_the_local_offset_is_checked_in_the_config():
    from meternode.checks import check_config
    from meternode.config import ConfigError

    eq(check_config({"node_id": "n", "utc_offset_min": -210})["utc_offset_min"], -210, "Newfoundland")
    for bad, why in ((100, "not a whole quarter of an hour"), (900, "is above 840"), (5.5, "must be int")):
        e = raises(ConfigError, check_config, {"node_id": "n", "utc_offset_min": bad})
        eq("utc_offset_min" in str(e) and why in str(e), True, str(e))
    # a policy in the config bills in its own time (policy/rare.py): another offset is refused
    e = raises(ConfigError, check_config, {"node_id": "n", "utc_offset_min": 60, "policy": {"tz": 0}})
    eq(str(e), "config.utc_offset_min = 60, but config.policy's utc_offset_min is 0: give both the same", "")
    eq(check_config({"node_id": "n", "utc_offset_min": 60, "policy": {"tz": 60}})["utc_offset_min"], 60, "same")
    eq(check_config({"node_id": "n", "policy": {"tz": 60}})["policy"]["tz"], 60, "left out: the policy's")


def test_telemetry_slower_than_half_the_profile_is_refused_in_the_config():
    # The load profile records an interval at the first snapshot after its end; an interval
    # with no snapshot in it (telemetry every 300 s, profile every 60) is never recorded, so
    # four intervals in five went missing without a word (benchmarks/endurance.py
    # --profile-s 60). Such a config is refused, naming both and the most telemetry_s can be.
    from meternode.checks import check_config
    from meternode.config import ConfigError

    e = raises(ConfigError, check_config, {"node_id": "n", "telemetry_s": 300.0, "profile_s": 60})
    eq(str(e), "telemetry_s = 300 is more than half of profile_s = 60: the load profile would miss "
               "intervals with no snapshot in them (at most 30)", "")  # fmt: skip
    e = raises(ConfigError, check_config, {"node_id": "n", "telemetry_s": 900.0})  # profile_s 900 by default
    eq("at most 450" in str(e), True, str(e))
    eq(check_config({"node_id": "n", "telemetry_s": 450.0})["telemetry_s"], 450.0, "half of the default")
    eq(check_config({"node_id": "n", "telemetry_s": 30.0, "profile_s": 60})["profile_s"], 60, "half")


def _freezes_across_a_move(before_min, after_min, move_at, start, end):
    # A profile recorder fed every 450 s from `start` to `end` (UTC), the billing time moved
    # from `before_min` to `after_min` at `move_at`: its freezes, (kind, ts).
    from meternode import ticks
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    ticks.LOCAL_S = before_min * 60
    try:
        t = start
        while t < end:
            if t >= move_at:
                ticks.LOCAL_S = after_min * 60
            rec.add(t, _esnap((t - start) // 45))
            t += 450
    finally:
        ticks.LOCAL_S = 0
    r = log.reader()
    r.seek(1)
    out = []
    while r.next():
        if r.kind != records.PROFILE:
            out.append((records.kind_name(r.kind), r.ts))
    return out


def test_billing_time_moved_west_makes_that_day_longer_and_freezes_nothing_twice():
    # Almaty moved from UTC+6 to UTC+5 on 1 March 2024. Moved at noon on 29 February (local):
    # the 28th ended at 00:00 +6 (18:00 UTC), the 29th at 00:00 +5 (19:00 UTC the next day,
    # 25 h), March's first day 24 h later. The midnight under the new offset is an hour after
    # the one frozen: before, that hour was a day of its own, frozen the moment it moved.
    h = 3600
    feb28 = 1709078400  # 2024-02-28 00:00 UTC
    got = _freezes_across_a_move(360, 300, feb28 + 30 * h, feb28 - 8 * h, feb28 + 3 * 24 * h)
    want = [("daily", feb28 - 6 * h), ("daily", feb28 + 18 * h), ("daily", feb28 + 43 * h),
            ("monthly", feb28 + 43 * h), ("daily", feb28 + 67 * h)]  # fmt: skip
    eq(got, want, "one freeze per local date, the 29th 25 h long")


def test_billing_time_moved_east_makes_that_day_shorter():
    # UTC+5 to UTC+6 at noon on the 29th (local): it ends at 00:00 +6, 23 h after the 28th did.
    h = 3600
    feb28 = 1709078400
    got = _freezes_across_a_move(300, 360, feb28 + 31 * h, feb28 - 8 * h, feb28 + 3 * 24 * h)
    want = [("daily", feb28 - 5 * h), ("daily", feb28 + 19 * h), ("daily", feb28 + 42 * h),
            ("monthly", feb28 + 42 * h), ("daily", feb28 + 66 * h)]  # fmt: skip
    eq(got, want, "one freeze per local date, the 29th 23 h long")


def test_billing_time_moved_across_the_date_line_ends_that_day_where_it_moved():
    # Samoa moved from UTC-11 to UTC+13 in December 2011. Moved at noon on the 29th (-11,
    # 23:00 UTC), it is noon on the 30th (+13): the 29th ends there, frozen at that interval
    # boundary with its registers (not stamped at the 30th's midnight, 12 h gone), the 30th at
    # its own midnight, and December at the first of January's (+13).
    h = 3600
    dec29 = 1325116800  # 2011-12-29 00:00 UTC
    got = _freezes_across_a_move(-660, 780, dec29 + 23 * h, dec29, dec29 + 3 * 24 * h)
    want = [("daily", dec29 + 11 * h), ("daily", dec29 + 23 * h), ("daily", dec29 + 35 * h),
            ("daily", dec29 + 59 * h), ("monthly", dec29 + 59 * h)]  # fmt: skip
    eq(got, want, "")
