# The M-Bus driver: one poll = (selection or link reset) + REQ_UD2.  Loaded only when a
# configured meter speaks M-Bus (drivers.make).
from meternode.config import ConfigError
from meternode.gateway import reading as R
from meternode.gateway.drivers import BadAnswer, NoAnswer, hexdigits


class Driver:
    kind = "mbus"

    def __init__(self, m, w):
        from meternode.gateway import mbus

        self.c = mbus
        self.primary = m.get("primary")
        self.secondary = m.get("secondary")
        if self.secondary is not None:
            self.secondary = hexdigits(self.secondary, 8, w + ".secondary")
            self.id = self.c.meter_id(self.secondary)
        elif isinstance(self.primary, int) and 0 <= self.primary <= self.c.MAX_PRIMARY:
            self.id = "mbus-p%d" % self.primary  # until its answer names its ident
        else:
            raise ConfigError("%s needs primary (0..250) or secondary (8 digits)" % w)
        self.medium = m.get("medium", 0xFF)
        self.values = R.MAX_VALUES  # a variable data answer says how many only when it comes
        self.fcb = True
        self.linked = False

    async def poll(self, p, out):
        sc = p.scanner("mbus")
        if self.secondary is not None:
            n = self.c.select(p.tx, self.secondary)
            await p.xfer(n, sc)
            if sc.kind != 1:
                raise BadAnswer("selection not acknowledged")
            a = self.c.ADDR_SELECTED
        else:
            a = self.primary
            if not self.linked:
                n = self.c.snd_nke(p.tx, a)
                try:
                    await p.xfer(n, sc, 1)
                except (NoAnswer, BadAnswer):
                    pass  # some meters do not acknowledge a reset; REQ_UD2 decides
                self.linked = True
                self.fcb = True
        n = self.c.req_ud2(p.tx, a, self.fcb)
        try:
            await p.xfer(n, sc)
        except NoAnswer:
            self.linked = False
            raise
        if sc.kind != 3 or (sc.buf[sc.start + 4] & 0x4F) != self.c.C_RSP_UD:
            raise BadAnswer("answer is not RSP_UD")
        self.fcb = not self.fcb
        ident = self.c.values(sc.buf, sc.start, out, self.medium)
        if ident and self.secondary is None:
            self.id = self.c.meter_id(ident)
        elif ident and ident != self.secondary:
            raise BadAnswer("selected %s, meter %s answered" % (self.secondary, ident))
