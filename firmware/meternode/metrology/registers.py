# Energy registers: integers in milliwatt-hours, one import and one export register per
# measuring element plus totals.  Energy arrives per mains cycle as signed joules; each
# cycle is netted on its own (import and export never cancel across cycles), so the
# import register never runs backwards while solar exports.  The remainder below one mWh
# is kept in millijoules, so nothing is lost to rounding over months.
_MJ_PER_MWH = 3600  # 1 mWh = 3.6 J


class Registers:
    def __init__(self, elements):
        self.n = elements
        self.imp = [0] * elements  # mWh
        self.exp = [0] * elements  # mWh
        self._rimp = [0] * elements  # mJ below one mWh
        self._rexp = [0] * elements

    def add(self, k, joules):
        mj = int(joules * 1000.0 + (0.5 if joules >= 0 else -0.5))
        if mj > 0:
            r = self._rimp[k] + mj
            self.imp[k] += r // _MJ_PER_MWH
            self._rimp[k] = r % _MJ_PER_MWH
        elif mj < 0:
            r = self._rexp[k] - mj
            self.exp[k] += r // _MJ_PER_MWH
            self._rexp[k] = r % _MJ_PER_MWH

    def total_import(self):
        return sum(self.imp)

    def total_export(self):
        return sum(self.exp)

    def state(self):
        # Everything needed to restore the registers exactly (checkpoints use this).
        return {"imp": list(self.imp), "exp": list(self.exp), "rimp": list(self._rimp), "rexp": list(self._rexp)}

    def restore(self, st):
        for key in ("imp", "exp", "rimp", "rexp"):
            v = st.get(key)
            if not isinstance(v, list) or len(v) != self.n:
                raise ValueError("register state %s has %r, expected %d values" % (key, v, self.n))
        self.imp = list(st["imp"])
        self.exp = list(st["exp"])
        self._rimp = list(st["rimp"])
        self._rexp = list(st["rexp"])
