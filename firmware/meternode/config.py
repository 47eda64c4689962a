# Configuration and board definitions: JSON files on the node's filesystem, validated at
# load time.  A bad value raises ConfigError naming the key, never a KeyError deep inside.
import json


class ConfigError(ValueError):
    pass


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        raise ConfigError("%s: cannot be read" % path)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (path, e))


def need(d, key, kind, where, default=None, lo=None, hi=None):
    # Returns d[key] checked for type and range; `default` None means required.
    if key not in d:
        if default is None:
            raise ConfigError("%s.%s is missing" % (where, key))
        return default
    v = d[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError("%s.%s must be %s, not %r" % (where, key, kind.__name__, v))
    if lo is not None and v < lo:
        raise ConfigError("%s.%s = %r is below %r" % (where, key, v, lo))
    if hi is not None and v > hi:
        raise ConfigError("%s.%s = %r is above %r" % (where, key, v, hi))
    return v


_KINDS = ("voltage", "current")


def check_board(b):
    # A board definition (boards/*.json): ADC front end, channel map, scaling, pins.
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
        if kind not in _KINDS:
            raise ConfigError("%s.kind must be one of %s, not %r" % (cw, "/".join(_KINDS), kind))
        need(ch, "scale", float, cw, lo=0.0)
        role = ch.get("role", "main")
        if role not in ("main", "circuit"):
            raise ConfigError("%s.role must be main or circuit, not %r" % (cw, role))
    if chans[0]["kind"] != "voltage":
        raise ConfigError("board.channels[0] must be the voltage channel")
    if b.get("mcu") in ("esp32", "rp2040"):  # pins the chip cannot use so (hal/pins.py)
        __import__("meternode.hal.pins").hal.pins.check_board_pins(b)
    return b


def check_config(c):
    # The node's own configuration (config.json), written by `umeter provision` or `umeter sim`.
    w = "config"
    need(c, "node_id", str, w)
    need(c, "telemetry_s", float, w, default=10.0, lo=0.1, hi=86400.0)
    wifi = need(c, "wifi", dict, w, default={})
    if wifi:
        if not need(wifi, "ssid", str, w + ".wifi"):
            raise ConfigError("config.wifi.ssid is empty")
        need(wifi, "password", str, w + ".wifi", default="")
    m = need(c, "mqtt", dict, w, default={})
    if m:
        need(m, "host", str, w + ".mqtt")
        need(m, "port", int, w + ".mqtt", default=1883, lo=1, hi=65535)
        need(m, "prefix", str, w + ".mqtt", default="umeter")
        need(m, "keepalive", int, w + ".mqtt", default=30, lo=5, hi=3600)
    return c
