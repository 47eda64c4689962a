# Configuration and board definitions: JSON files on the node's filesystem, validated at
# load time.  A bad value raises ConfigError naming the key, never a KeyError deep inside.
# The checks of a board definition and of the node's configuration are in checks.py
# (check_board, check_config): loaded at start and forgotten after (docs/memory.md).  This
# module too is forgotten once the node has started (Node.run): its checks run at start-up.
import json

from meternode import ConfigError  # noqa: F401 (defined in the package, which a node keeps: one class)


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
