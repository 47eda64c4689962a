# The DL/T 645 driver: one poll = a read of each configured DI (and the clock).  Loaded only
# when a configured meter speaks DL/T 645 (drivers.make).
from meternode.config import ConfigError
from meternode.gateway import reading as R
from meternode.gateway.drivers import BadAnswer, NoAnswer, hexdigits
from meternode.gateway.scanner import address_bytes, bcd


class Driver:
    kind = "645"

    def __init__(self, m, w):
        from meternode.gateway import dlt645

        self.c = dlt645
        self.version = m.get("version", 2007)
        if self.version not in (2007, 1997):
            raise ConfigError("%s.version must be 2007 or 1997, not %r" % (w, self.version))
        self.address = hexdigits(m.get("address"), 12, w + ".address")
        self.addr = address_bytes(self.address, 6)
        table = self.c.DI_2007 if self.version == 2007 else self.c.DI_1997
        blocks = self.c.BLOCKS_2007 if self.version == 2007 else self.c.BLOCKS_1997
        dis = m.get("dis")
        if dis is None:
            self.dis = self.c.POLL_2007 if self.version == 2007 else self.c.POLL_1997  # shared, not copied
        else:
            self.dis = []
            for k, d in enumerate(dis):
                try:
                    di = int(d, 16) if isinstance(d, str) else -1
                except ValueError:
                    di = -1
                if di not in table and di not in blocks:
                    raise ConfigError("%s.dis[%d] = %r is not a DI this gateway reads" % (w, k, d))
                self.dis.append(di)
        self.clock = bool(m.get("clock", False)) and self.version == 2007
        self.values = 0  # at most one value per DI, a block's per element
        for di in self.dis:
            self.values += len(blocks[di]) if di in blocks else 1
        self.skip = []  # DIs the meter said it does not have
        self.id = self.c.meter_id(self.address, self.version)

    def _check(self, buf, s, di):
        c = buf[s + 8]
        if not c & self.c.DIR:
            raise BadAnswer("own request echoed")
        if not self.c.same_address(buf, s, self.addr) and self.address != self.c.WILDCARD:
            raise BadAnswer("answer from meter %s" % self.c.address_of(buf, s))

    async def poll(self, p, out):
        sc = p.scanner("645")
        got = 0
        for di in self.dis:
            if di in self.skip:
                continue
            n = self.c.read_request(p.tx, self.addr, di, self.version)
            await p.xfer(n, sc)
            s = sc.start
            self._check(sc.buf, s, di)
            if sc.buf[s + 8] & self.c.ABNORMAL:
                err = self.c.err_code(sc.buf, s)
                if err & self.c.ERR_NO_DATA:
                    self.skip.append(di)
                    p.note(self, "DI %08X: the meter has no such data; not asked again" % di)
                else:
                    out.status |= R.METER_ERROR
                got += 1
                continue
            self.c.values(sc.buf, s, out, self.version, di)
            got += 1
        if self.clock:
            tm = [0, 0]
            for j, di in enumerate((self.c.DI_DATE, self.c.DI_TIME)):
                n = self.c.read_request(p.tx, self.addr, di, 2007)
                await p.xfer(n, sc)
                s = sc.start
                self._check(sc.buf, s, di)
                if sc.buf[s + 8] & self.c.ABNORMAL or sc.buf[s + 9] < 7:
                    break
                tm[j] = bcd(sc.buf, s + 14, sc.buf[s + 9] - 4, 0x33)
            else:
                d, t = tm
                if d is not None and t is not None:  # YYMMDDWW, hhmmss as BCD digit numbers
                    yy, mo, dd = d // 1000000, d // 10000 % 100, d // 100 % 100
                    hh, mi, ss = t // 10000, t // 100 % 100, t % 100
                    if 1 <= mo <= 12 and 1 <= dd <= 31:
                        out.meter_ts = R.epoch(2000 + yy, mo, dd, hh, mi, ss)
        if not got:
            raise NoAnswer("no DI left to read")
