# The check of a channel's calibration values (calibration.py's header says what they mean),
# loaded by calibration.check for the call and forgotten after (meternode.forget,
# docs/memory.md): at setup and when a calibration changes.  Also what makes the channels'
# calibrations at setup (resolve).
from meternode.config import ConfigError
from meternode.metrology.calibration import ChannelCal

_KEYS = ("gain", "offset", "phase", "phase_table")


def _num(v, where, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError("%s must be a number, not %r" % (where, v))
    v = float(v)
    if v < lo or v > hi:
        raise ConfigError("%s = %r is outside %r .. %r" % (where, v, lo, hi))
    return v


def check(d, where):
    # calibration.check: validates one channel's calibration dict; returns a clean copy.
    if not isinstance(d, dict):
        raise ConfigError("%s must be an object, not %r" % (where, d))
    out = {}
    for key in d:
        if key not in _KEYS:
            raise ConfigError("%s.%s is not a calibration key (use %s)" % (where, key, ", ".join(_KEYS)))
    if "gain" in d:
        out["gain"] = _num(d["gain"], where + ".gain", 0.2, 5.0)
    if "offset" in d:
        out["offset"] = _num(d["offset"], where + ".offset", 0.0, 1e6)
    if "phase" in d:
        out["phase"] = _num(d["phase"], where + ".phase", -30.0, 30.0)
    if "phase_table" in d:
        t = d["phase_table"]
        w = where + ".phase_table"
        if not isinstance(t, list) or not t:
            raise ConfigError("%s must be a non-empty list of [amps, degrees]" % w)
        rows = []
        last = -1.0
        for n, row in enumerate(t):
            if not isinstance(row, list) or len(row) != 2:
                raise ConfigError("%s[%d] must be [amps, degrees], not %r" % (w, n, row))
            a = _num(row[0], "%s[%d] amps" % (w, n), 0.0, 1e6)
            if a <= last:
                raise ConfigError("%s[%d] amps %r must be above the row before" % (w, n, a))
            rows.append((a, _num(row[1], "%s[%d] degrees" % (w, n), -30.0, 30.0)))
            last = a
        out["phase_table"] = rows
    return out


def _channel(self, ch, dev):
    # a ChannelCal's values: the board's defaults, then the device's
    self.name = ch["name"]
    self.kind = ch["kind"]
    self.base_scale = ch["scale"]
    base = {"gain": 1.0, "offset": 0.0, "phase": float(ch.get("phase", 0.0)), "phase_table": None}
    base.update(check(ch.get("cal", {}), "board.channels.%s.cal" % self.name))
    self.gain = base["gain"]
    self.offset = base["offset"]
    self.phase = base["phase"]
    if base["phase_table"]:
        self.table = base["phase_table"]
    if dev:
        self.update(dev, "calibration.%s" % self.name)


def resolve(board, cal):
    # One ChannelCal per board channel; per-device values override the board's (by Meter():
    # metrology/meterinit.py).
    cal = cal or {}
    if not isinstance(cal, dict):
        raise ConfigError("calibration must be an object keyed by channel name, not %r" % (cal,))
    # (loops, not comprehensions: each of those is a function held with the module)
    names = []
    for ch in board["channels"]:
        names.append(ch["name"])
    for key in cal:
        if key not in names:
            raise ConfigError("calibration.%s names no channel of board %s" % (key, board.get("name", "?")))
    out = []
    for ch in board["channels"]:
        c = ChannelCal()
        _channel(c, ch, cal.get(ch["name"]))
        out.append(c)
    return out
