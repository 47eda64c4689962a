# The start-up checks of the board definition and the node's configuration (nodeinit.setup
# loads this module for them and forgets it after: meternode.forget, docs/memory.md).  A bad
# value raises ConfigError naming the key.  Plain Python (no micropython module): the host
# checks an inventory's configs with it too.
from meternode.config import ConfigError, need


def check_board(b):
    w = "board"
    need(b, "name", str, w)
    need(b, "hal", str, w)
    adc = need(b, "adc", dict, w)
    need(adc, "bits", int, w + ".adc", lo=8, hi=16)
    need(adc, "rate", int, w + ".adc", lo=400, hi=100000)
    need(adc, "block", int, w + ".adc", lo=16, hi=1024)
    chans = need(b, "channels", list, w)
    if not chans:
        raise ConfigError("board.channels is empty")
    for n, ch in enumerate(chans):
        cw = "board.channels[%d]" % n
        need(ch, "name", str, cw)
        kind = need(ch, "kind", str, cw)
        if kind not in ("voltage", "current"):
            raise ConfigError("%s.kind must be one of voltage/current, not %r" % (cw, kind))
        need(ch, "scale", float, cw, lo=0.0)
        role = ch.get("role", "main")
        if role not in ("main", "circuit"):
            raise ConfigError("%s.role must be main or circuit, not %r" % (cw, role))
    if chans[0]["kind"] != "voltage":
        raise ConfigError("board.channels[0] must be the voltage channel")
    if b.get("mcu") in ("esp32", "rp2040"):  # pins the chip cannot use so (hal/pins.py)
        __import__("meternode.hal.pins").hal.pins.check_board_pins(b)
    return b


def profile_pace(t, p):
    # telemetry_s `t` against profile_s `p`, at start and for a `set` command (link/actions.py):
    # the load profile closes an interval at the first snapshot after it, and one with none
    # in it is never recorded (store/profile.py)
    if t * 2 > p:
        raise ConfigError(
            "telemetry_s = %g is more than half of profile_s = %d: the load profile would miss intervals "
            "with no snapshot in them (at most %g)" % (t, p, p / 2)
        )


def check_config(c):
    w = "config"
    need(c, "node_id", str, w)
    t = need(c, "telemetry_s", float, w, default=10.0, lo=0.1, hi=86400.0)
    p = c.get("profile_s", 900)  # (its own check: store/storeinit.py)
    if isinstance(p, int):
        profile_pace(t, p)
    wifi = need(c, "wifi", dict, w, default={})
    if wifi:
        if not need(wifi, "ssid", str, w + ".wifi"):
            raise ConfigError("config.wifi.ssid is empty")
        need(wifi, "password", str, w + ".wifi", default="")
    ntp = c.get("ntp", {})  # the clock over Wi-Fi (link/wifi.py clock_sync), or false
    if ntp is not False:
        if not isinstance(ntp, dict):
            raise ConfigError("config.ntp must be an object (host, port, interval_s) or false, not %r" % (ntp,))
        need(ntp, "host", str, w + ".ntp", default="pool.ntp.org")
        need(ntp, "port", int, w + ".ntp", default=123, lo=1, hi=65535)
        need(ntp, "interval_s", int, w + ".ntp", default=3600, lo=60, hi=86400)
    m = need(c, "mqtt", dict, w, default={})
    if m:
        need(m, "host", str, w + ".mqtt")
        need(m, "port", int, w + ".mqtt", default=1883, lo=1, hi=65535)
        need(m, "prefix", str, w + ".mqtt", default="umeter")
        need(m, "keepalive", int, w + ".mqtt", default=30, lo=5, hi=3600)
    # billing time (ticks.LOCAL_S): local standard time, minutes east of UTC
    tz = need(c, "utc_offset_min", int, w, default=0, lo=-720, hi=840)
    if tz % 15:
        raise ConfigError("config.utc_offset_min = %d is not a whole quarter of an hour east of UTC" % tz)
    # a policy's time is the node's billing time from when it loads (policy/rare.py): the
    # config may leave utc_offset_min out, but not give another
    p = c.get("policy")
    if "utc_offset_min" in c and isinstance(p, dict) and isinstance(p.get("tz"), int) and p["tz"] != tz:
        raise ConfigError(
            "config.utc_offset_min = %d, but config.policy's utc_offset_min is %d: give both the same" % (tz, p["tz"])
        )
    return c
