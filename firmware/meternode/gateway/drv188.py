# The CJ/T 188 driver: one poll = a read of 901F; the valve.  Loaded only when a configured
# meter speaks CJ/T 188 (drivers.make).
from meternode.config import ConfigError
from meternode.gateway.drivers import BadAnswer, hexdigits
from meternode.gateway.scanner import address_bytes


class Driver:
    kind = "188"

    def __init__(self, m, w):
        from meternode.gateway import cjt188

        self.c = cjt188
        t = m.get("type", 0x10)
        if isinstance(t, str):
            t = int(t, 16)
        if not isinstance(t, int) or not 0 <= t <= 0xFF:
            raise ConfigError("%s.type must be a meter type 0x10..0x49, not %r" % (w, m.get("type")))
        self.type = t
        self.address = hexdigits(m.get("address"), 14, w + ".address")
        self.addr = address_bytes(self.address, 7)
        self.ser = 0
        self.id = self.c.meter_id(t, self.address)
        self.valve_control = bool(m.get("valve_control", False))
        self.values = 8 if self.c.family(t) == "heat" else 2

    def _check(self, buf, s):
        if not buf[s + 9] & self.c.DIR:
            raise BadAnswer("own request echoed")
        if not self.c.same_address(buf, s, self.addr) and self.address != self.c.WILDCARD:
            raise BadAnswer("answer from meter %s" % self.c.address_of(buf, s))

    async def poll(self, p, out):
        sc = p.scanner("188")
        self.ser = (self.ser + 1) & 0xFF
        n = self.c.read_request(p.tx, self.type, self.addr, self.ser)
        await p.xfer(n, sc)
        self._check(sc.buf, sc.start)
        self.c.values(sc.buf, sc.start, out)

    async def valve(self, p, close):
        # Opens or closes the meter's valve (config valve_control must allow it).  Returns ""
        # when the meter confirmed, else why not; raises NoAnswer / BadAnswer.
        if not self.valve_control:
            raise ConfigError("meter %s: valve_control is not enabled in its config" % self.id)
        sc = p.scanner("188")
        self.ser = (self.ser + 1) & 0xFF
        n = self.c.valve_request(p.tx, self.type, self.addr, close, self.ser)
        await p.xfer(n, sc)
        self._check(sc.buf, sc.start)
        st = self.c.valve_state(sc.buf, sc.start)
        want = "closed" if close else "open"
        if st == "refused":
            return "the meter refused the valve command"
        if st and st != want:
            return "the meter reports its valve %s" % st
        return ""
