# The Modbus RTU driver: one poll = a read of each block of the register map.  Loaded only
# when a configured meter speaks Modbus (drivers.make).
from meternode.config import ConfigError
from meternode.gateway import reading as R
from meternode.gateway.drivers import BadAnswer


class Driver:
    kind = "modbus"

    def __init__(self, m, w):
        from meternode.gateway import modbus

        self.c = modbus
        self.unit = m.get("unit")
        if not isinstance(self.unit, int) or not 1 <= self.unit <= 247:
            raise ConfigError("%s.unit must be a Modbus address 1..247, not %r" % (w, self.unit))
        try:
            spec = m.get("map", "pzem004t")
            if isinstance(spec, str):
                self.map = self.c.named(spec, w + ".map")  # shared by the meters that name it
            else:
                self.map = self.c.RegisterMap(spec, w + ".map")
        except ValueError as e:
            raise ConfigError(str(e))
        self.id = self.c.meter_id(self.unit)
        self.values = len(self.map.fields)

    async def poll(self, p, out):
        sc = p.scanner("rtu")
        for bi, (fn, start, count) in enumerate(self.map.blocks):
            n = self.c.read_request(p.tx, self.unit, fn, start, count)
            await p.xfer(n, sc)
            try:
                off = self.c.check_answer(sc.buf, sc.length, self.unit, fn, count)
            except self.c.ModbusException as e:
                p.note(self, "block %d: %s" % (bi, e))
                out.status |= R.METER_ERROR
                continue
            except self.c.FrameError as e:
                raise BadAnswer(str(e))
            self.map.decode(bi, sc.buf, off, out)
