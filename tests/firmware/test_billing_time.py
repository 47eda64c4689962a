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
