# How each protocol polls one meter: the requests of one poll and what their answers
# give.  A driver's poll(p, out) uses the poller's xfer() (timeout, bounded retries,
# turnaround gap) and adds values to `out` (reading.Readings).  Meter entries come from
# config["gateway"]["meters"]; make() checks one and names the key that is wrong.
# The codec modules are imported by the drivers that use them: a node loads only the
# protocols its meters speak.
from meternode.config import ConfigError
from meternode.gateway import reading as R
from meternode.gateway.scanner import address_bytes, bcd


class NoAnswer(Exception):
    pass


class BadAnswer(ValueError):
    pass


def _hexdigits(v, n, w):
    if not isinstance(v, str) or len(v) != n or any(c not in "0123456789abcdefABCDEF" for c in v):
        raise ConfigError("%s must be %d digits, not %r" % (w, n, v))
    return v.lower()


class DLT645:
    kind = "645"

    def __init__(self, m, w):
        from meternode.gateway import dlt645

        self.c = dlt645
        self.version = m.get("version", 2007)
        if self.version not in (2007, 1997):
            raise ConfigError("%s.version must be 2007 or 1997, not %r" % (w, self.version))
        self.address = _hexdigits(m.get("address"), 12, w + ".address")
        self.addr = address_bytes(self.address, 6)
        table = self.c.DI_2007 if self.version == 2007 else self.c.DI_1997
        blocks = self.c.BLOCKS_2007 if self.version == 2007 else self.c.BLOCKS_1997
        dis = m.get("dis")
        if dis is None:
            self.dis = list(self.c.POLL_2007 if self.version == 2007 else self.c.POLL_1997)
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


class CJT188:
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
        self.address = _hexdigits(m.get("address"), 14, w + ".address")
        self.addr = address_bytes(self.address, 7)
        self.ser = 0
        self.id = self.c.meter_id(t, self.address)
        self.valve_control = bool(m.get("valve_control", False))

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


class MBus:
    kind = "mbus"

    def __init__(self, m, w):
        from meternode.gateway import mbus

        self.c = mbus
        self.primary = m.get("primary")
        self.secondary = m.get("secondary")
        if self.secondary is not None:
            self.secondary = _hexdigits(self.secondary, 8, w + ".secondary")
            self.id = self.c.meter_id(self.secondary)
        elif isinstance(self.primary, int) and 0 <= self.primary <= self.c.MAX_PRIMARY:
            self.id = "mbus-p%d" % self.primary  # until its answer names its ident
        else:
            raise ConfigError("%s needs primary (0..250) or secondary (8 digits)" % w)
        self.medium = m.get("medium", 0xFF)
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


class Modbus:
    kind = "modbus"

    def __init__(self, m, w):
        from meternode.gateway import modbus

        self.c = modbus
        self.unit = m.get("unit")
        if not isinstance(self.unit, int) or not 1 <= self.unit <= 247:
            raise ConfigError("%s.unit must be a Modbus address 1..247, not %r" % (w, self.unit))
        try:
            self.map = self.c.RegisterMap(m.get("map", "pzem004t"), w + ".map")
        except ValueError as e:
            raise ConfigError(str(e))
        self.id = self.c.meter_id(self.unit)

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


DRIVERS = {"dlt645": DLT645, "cjt188": CJT188, "mbus": MBus, "modbus": Modbus}


def make(m, w):
    if not isinstance(m, dict):
        raise ConfigError("%s must be an object" % w)
    proto = m.get("protocol")
    cls = DRIVERS.get(proto)
    if cls is None:
        raise ConfigError("%s.protocol must be one of %s, not %r" % (w, ", ".join(sorted(DRIVERS)), proto))
    return cls(m, w)


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
