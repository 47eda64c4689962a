# Per-channel calibration, from the board's defaults and the device's own values, and
# changeable at run time (Meter.set_calibration) without a rebuild.
#
# A channel's calibration (board: channels[k].cal, device: config.calibration[NAME]):
#   gain         multiplies the board's scale (units per count); 1.0 = nominal front end
#   offset       RMS noise floor in the channel's unit (V or A), removed from its RMS in
#                quadrature: rms = sqrt(rms**2 - offset**2); 0 = none.  It does not touch
#                power (noise does not correlate with the other channel).
#   phase        degrees the sensor's output LEADS its primary quantity (CT: typically
#                0.1 .. 3 degrees lead); corrected exactly by voltage interpolation
#   phase_table  [[amps, degrees], ...] ascending in amps: phase versus current, as real
#                CTs have; linear between points, flat beyond the ends; when present it
#                replaces `phase` for current channels
# The board's legacy per-channel "phase" key is read as the default phase.
from meternode import forget


def check(d, where):
    # Validates one channel's calibration dict; returns a clean copy.  The check is in
    # calcheck.py, loaded for the call and forgotten after (docs/memory.md): a running meter
    # changes its calibration seldom.
    from meternode.metrology import calcheck

    forget("meternode.metrology.calcheck")
    return calcheck.check(d, where)


class ChannelCal:
    # Made by calcheck.resolve() (one per board channel, at setup; no __init__ held with the
    # class).  No phase table, unless the board or the device gives one: a class default, set
    # on the instance only then (its dict one size smaller: 6 attributes, not 7)
    table = None

    def update(self, d, where):
        c = check(d, where)
        self.gain = c.get("gain", self.gain)
        self.offset = c.get("offset", self.offset)
        self.phase = c.get("phase", self.phase)
        if "phase_table" in c:
            self.table = c["phase_table"]

    def phase_at(self, i):
        # Degrees of lead at the current i (A).
        t = self.table
        if not t:
            return self.phase
        if i <= t[0][0]:
            return t[0][1]
        for k in range(1, len(t)):
            a1, p1 = t[k]
            if i <= a1:
                a0, p0 = t[k - 1]
                return p0 + (p1 - p0) * (i - a0) / (a1 - a0)
        return t[-1][1]

    def as_dict(self):
        d = {"gain": self.gain, "offset": self.offset, "phase": self.phase}
        if self.table:
            t = d["phase_table"] = []
            for a, p in self.table:
                t.append([a, p])
        return d
