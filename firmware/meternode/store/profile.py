# Load profile and freezes: turns the periodic meter snapshots into PROFILE records (one per
# `period_s`, aligned to the wall clock: 00:00, 00:15, ...), DAILY freezes at each midnight
# and MONTHLY freezes at each first of the month, all appended to the record log. Midnight,
# the month and the periods' boundaries are the node's billing time (ticks.floor/month: UTC +
# ticks.LOCAL_S, config.utc_offset_min or a signed policy's); the records' timestamps are UTC.
# A day is frozen when the local date moves on, not the midnight's timestamp: billing time
# moved west (a policy, docs/policy.md) makes that day longer, moved east shorter (across a
# midnight, the day ends at the interval boundary where the move came), and never freezes a
# day twice or a day that did not end.
# Energies come from the snapshot's exact register integers (e_imp_mwh, e_exp_mwh), never
# rebuilt from float Wh: a single-precision float is exact only below 16.8 kWh.
#
# A record holds the registers AT its boundary: snapshots come every telemetry_s, not on the
# boundary, so the value there is interpolated (integers) between the last snapshot before
# and the first at or after it -- exact when one falls on it or the power is steady. So the
# PROFILE record ending at midnight and that midnight's DAILY and MONTHLY freezes hold the
# same registers. Boundaries only move forward: a clock stepped back by less than a period
# (an NTP correction across midnight) stays in the interval and freezes nothing twice; one
# stepped back further starts afresh, as after a boot. A new period_s (a `set` command)
# applies from the end of the interval in progress, which keeps its own length.
# A MONTHLY freeze also holds the month's maximum demand and when its period ended, which the
# freeze takes from the registers (Registers.bill: the billing month ends; `regs` None, as in
# tests of the store alone, freezes none).
from meternode import run, ticks
from meternode.store import records


def _at(b, t0, v0, t1, v1):
    # The register at time b, from (t0, v0) before it and (t1, v1) at or after it.
    if b >= t1 or t1 <= t0:
        return v1
    if b <= t0:
        return v0
    return v0 + (v1 - v0) * (b - t0) // (t1 - t0)


class ProfileRecorder:
    def __init__(self, log, period_s=900, mains=None, on_record=None, regs=None):
        # the check and the state: store/storeinit.py profile(), loaded for the call
        run("meternode.store.storeinit", "profile", self, log, period_s, mains, on_record, regs)

    def add(self, ts, snap):
        # One snapshot (Meter.snapshot()) taken at wall-clock time ts.
        ts = int(ts)
        i = p = 0.0
        imp = exp = 0
        for e in snap["elements"]:
            if self.mains is None or e["name"] in self.mains:
                i += e["i"]
                p += e["p"]
                # the registers in mWh: the exact integers where the snapshot has them (the
                # meter's), else from float Wh (older snapshot producers)
                x = e.get("e_imp_mwh")
                imp += x if x is not None else int(e["e_imp_wh"] * 1000 + 0.5)
                x = e.get("e_exp_mwh")
                exp += x if x is not None else int(e["e_exp_wh"] * 1000 + 0.5)
        end = self._end
        t0 = self._ts
        if end is None or ts < t0 - self._per:  # the first, or the clock set back a period or more
            self.close(None, 0, 0)  # what an interval had is dropped: no end of it is known
            self._day = (ts + ticks.LOCAL_S) // 86400  # the local date of ts (days since 1970)
            self._month = ticks.month(ts)
            end = None
        elif ts >= end:  # the interval's end has passed: its record, the registers at its end
            i0 = self.e_imp_mwh
            x0 = self.e_exp_mwh
            self.close(end, _at(end, t0, i0, ts, imp), _at(end, t0, x0, ts, exp))
            x = (ts + ticks.LOCAL_S) // 86400
            if x > self._day:  # midnight: the registers then, and the meters' last readings
                self._day = x
                m = ticks.floor(ts, 86400)
                if m < end:  # moved east past a midnight: the day ended where the move came
                    m = end
                i0 = _at(m, t0, i0, ts, imp)
                x0 = _at(m, t0, x0, ts, exp)
                self._append(records.DAILY, m, records.freeze(i0, x0, self.water_l, self.gas_l))
                x = ticks.month(ts)
                if x != self._month:
                    md = self.regs.bill(ticks.month(m)) if self.regs else (0, 0)
                    self._append(records.MONTHLY, m, records.freeze(i0, x0, self.water_l, self.gas_l, md))
                    self._month = x
            end = None
        if end is None:  # the interval that holds ts, of the period in force now
            x = self._per = self.period_s
            self._end = ticks.floor(ts, x) + x
        self._ts = ts
        self.e_imp_mwh = imp
        self.e_exp_mwh = exp
        a = self.acc  # V, I, P: sum, min, max each (storeinit.profile)
        for k, x in ((0, snap["v"]), (3, i), (6, p)):
            a[k] += x
            if x < a[k + 1]:
                a[k + 1] = x
            if x > a[k + 2]:
                a[k + 2] = x
        self.n += 1

    def close(self, ts_end, imp, exp):
        # Appends the PROFILE record of the interval ending at ts_end (if it saw anything),
        # with the registers imp, exp (mWh) there (ts_end None: drops it); the next starts empty.
        n = self.n
        if not n:
            return 0
        # mean, min and max of V (0.1 V), I (mA) and P (0.1 W), rounded and clamped to their fields
        t = []
        a = self.acc
        fields = ((0, 10, 0, 65535), (3, 1000, 0, 0xFFFFFFFF), (6, 10, -0x7FFFFFFF, 0x7FFFFFFF))
        for k, scale, lo, hi in fields:
            out = []
            for x in (a[k] / n, a[k + 1], a[k + 2]):
                x = int(x * scale + (0.5 if x >= 0 else -0.5))
                out.append(lo if x < lo else hi if x > hi else x)
            t.append(out)
            a[k] = 0
            a[k + 1] = 1e30
            a[k + 2] = -1e30
        self.n = 0
        if ts_end is None:
            return 0
        return self._append(records.PROFILE, ts_end, records.profile(self._per, imp, exp, t[0], t[1], t[2]))

    def _append(self, kind, ts, payload):
        seq = self.log.append(kind, ts, payload)
        if self.on_record is not None:
            self.on_record(seq)
        return seq
