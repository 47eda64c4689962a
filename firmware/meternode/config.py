# Configuration and board definitions: JSON files on the node's filesystem, validated at
# load time.  A bad value raises ConfigError naming the key, never a KeyError deep inside.
import json

from meternode import run


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


def check_board(b):
    # A board definition (boards/*.json): ADC front end, channel map, scaling, pins.  Checked
    # once, at start: checks.py, loaded for the call and forgotten (docs/memory.md).
    return run("meternode.checks", "check_board", b)


def check_config(c):
    # The node's own configuration (config.json), written by `umeter provision` or `umeter
    # sim`: checks.py, as check_board.
    return run("meternode.checks", "check_config", c)
