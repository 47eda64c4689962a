# How each protocol polls one meter: the requests of one poll and what their answers
# give.  A driver's poll(p, out) uses the poller's xfer() (timeout, bounded retries,
# turnaround gap) and adds values to `out` (reading.Readings); `values` is how many values
# one poll can give at most (the size of the meter's kept reading).  Meter entries come
# from config["gateway"]["meters"]; make() checks one and names the key that is wrong.
# Each protocol's driver is its own module (drv645, drv188, drvmbus, drvmodbus) with its
# codec: a node loads only the protocols its meters speak.
from meternode.config import ConfigError


class NoAnswer(Exception):
    pass


class BadAnswer(ValueError):
    pass


def hexdigits(v, n, w):
    if not isinstance(v, str) or len(v) != n or any(c not in "0123456789abcdefABCDEF" for c in v):
        raise ConfigError("%s must be %d digits, not %r" % (w, n, v))
    return v.lower()


DRIVERS = {"dlt645": "drv645", "cjt188": "drv188", "mbus": "drvmbus", "modbus": "drvmodbus"}


def make(m, w):
    if not isinstance(m, dict):
        raise ConfigError("%s must be an object" % w)
    proto = m.get("protocol")
    mod = DRIVERS.get(proto)
    if mod is None:
        raise ConfigError("%s.protocol must be one of %s, not %r" % (w, ", ".join(sorted(DRIVERS)), proto))
    return __import__("meternode.gateway." + mod, None, None, ("Driver",)).Driver(m, w)


def scanner(kind):
    if kind == "645":
        from meternode.gateway import dlt645

        return dlt645.scanner()
    if kind == "188":
        from meternode.gateway import cjt188

        return cjt188.scanner()
    if kind == "mbus":
        from meternode.gateway import mbus

        return mbus.MBusScanner()
    from meternode.gateway import modbus

    return modbus.Collector()
