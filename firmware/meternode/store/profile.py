# Load profile and freezes: turns the periodic meter snapshots into PROFILE records (one per
# `period_s`, aligned to the wall clock: 00:00, 00:15, ...), DAILY freezes at each UTC
# midnight and MONTHLY freezes at each first of the month, all appended to the record log.
# Energies come from the snapshot's exact register integers (e_imp_mwh, e_exp_mwh), never
# rebuilt from float Wh: a single-precision float is exact only below 16.8 kWh.
import time

from meternode import run
from meternode.store import records


def _month(ts):
    t = time.gmtime(int(ts))
    return t[0] * 12 + t[1] - 1


class ProfileRecorder:
    def __init__(self, log, period_s=900, mains=None, on_record=None):
        # the check and the state: store/storeinit.py profile(), loaded for the call
        run("meternode.store.storeinit", "profile", self, log, period_s, mains, on_record)

    def add(self, ts, snap):
        # One snapshot (Meter.snapshot()) taken at wall-clock time ts.
        slot = int(ts) // self.period_s
        if self._slot is None:
            self._slot = slot
            self._day = int(ts) // 86400
            self._month = _month(ts)
        elif slot != self._slot:
            self.close(self._slot * self.period_s + self.period_s)
            self._slot = slot
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
        day = int(ts) // 86400
        if day != self._day:
            self._append(
                records.DAILY, day * 86400, records.freeze(self.e_imp_mwh, self.e_exp_mwh, self.water_l, self.gas_l)
            )
            self._day = day
            m = _month(ts)
            if m != self._month:
                self._append(
                    records.MONTHLY,
                    day * 86400,
                    records.freeze(self.e_imp_mwh, self.e_exp_mwh, self.water_l, self.gas_l),
                )
                self._month = m

    def close(self, ts_end):
        # Appends the PROFILE record of the interval ending at ts_end (if it saw anything).
        if not self.n:
            return 0
        n = self.n
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
            a[k] = 0  # the next interval starts empty
            a[k + 1] = 1e30
            a[k + 2] = -1e30
        payload = records.profile(self.period_s, self.e_imp_mwh, self.e_exp_mwh, t[0], t[1], t[2])
        self.n = 0
        return self._append(records.PROFILE, ts_end, payload)

    def _append(self, kind, ts, payload):
        seq = self.log.append(kind, ts, payload)
        if self.on_record is not None:
            self.on_record(seq)
        return seq
