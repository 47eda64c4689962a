# The node answers as a meter: on a bus configured as a slave it answers DL/T 645-2007
# read requests for its own registers at its own address (and AA x 6), the address read,
# and broadcast time sync (99 x 6, no answer), so a data concentrator reads it like any
# State Grid meter; with "modbus_unit" it also answers Modbus RTU functions 3/4 with the
# registers of modbus.MAPS["umeter"] (a plus: one map for the same values).
#
# Energy comes from the meter's integer registers (mWh); V, I, P, PF and f from the
# node's last telemetry (what it last measured and published).
import json

from meternode import _nop
from meternode.gateway import dlt645, modbus
from meternode.gateway import reading as R
from meternode.gateway.scanner import address_bytes
from meternode.store import records


class _Raw:
    # Collects bytes until the line falls silent (the bus's receive() then returns 0).
    def __init__(self, size=300):
        self.buf = bytearray(size)
        self.n = 0
        self.start = 0

    def reset(self):
        self.n = 0

    def pending(self):
        return self.n

    def feed(self, src, k=-1):
        if k < 0:
            k = len(src)
        if self.n + k > len(self.buf):
            k = len(self.buf) - self.n
        for i in range(k):
            self.buf[self.n + i] = src[i]
        self.n += k

    def next(self):
        return 0


class Slave:
    def __init__(self, node, bus, cfg, event=None):
        self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
        self.node = node
        self.bus = bus
        self.address = cfg["address"]
        self.addr = address_bytes(self.address, 6)
        self.unit = cfg.get("modbus_unit")
        self.event = event
        self.raw = _Raw()
        self.sc = dlt645.scanner()
        self.tx = bytearray(300)
        self._last = None
        self._t = {}
        self.answered = 0
        self.ignored = 0
        self.time_syncs = 0
        self.modbus_answered = 0

    def stats(self):
        return {"answered": self.answered, "modbus": self.modbus_answered, "time_syncs": self.time_syncs,
                "ignored": self.ignored, "bad": self.sc.bad}

    async def run(self):
        while True:
            self.beat()
            self.raw.reset()
            n = await self.bus.receive(self.raw, 1000, 2)
            if n < 0 or not self.raw.n:
                continue
            try:
                await self._handle(self.raw.buf, self.raw.n)
            except Exception as e:  # one bad request never stops the slave
                self.ignored += 1
                print("slave: request not answered: %r" % (e,))

    # -- values ------------------------------------------------------------------------------
    def _telemetry(self):
        p = getattr(self.node, "last", None)
        if p is not None and p is not self._last:
            self._last = p
            try:
                self._t = json.loads(p)
            except ValueError:
                self._t = {}
        return self._t

    def _registers(self):
        return self.node.meter.registers

    def value(self, di):
        # The value of a DI at its format's exponent (an int), or None when the node has none.
        regs = self._registers()
        if di in (0x00000000, 0x00010000, 0x00020000):
            imp = regs.total_import() // 10000  # mWh -> 0.01 kWh
            exp = regs.total_export() // 10000
            return {0x00000000: imp + exp, 0x00010000: imp, 0x00020000: exp}[di]
        if 0x00010100 <= di <= 0x00010400 or 0x00020100 <= di <= 0x00020400:
            t = ((di >> 8) & 0xFF) - 1
            if t >= regs.tariffs:
                return 0
            pair = regs.tariff_registers(t)
            return pair[0 if di < 0x00020000 else 1] // 10000
        t = self._telemetry()
        if not t:
            return None
        el = (t.get("elements") or [{}])[0]
        if di == 0x02010100:
            return _rnd(t.get("v"), 10)
        if di == 0x02020100:
            return _rnd(el.get("i"), 1000)
        if di == 0x02030000:
            return _rnd(t.get("p"), 10)  # W -> 0.0001 kW
        if di == 0x02060000:
            return _rnd(el.get("pf"), 1000)
        if di == 0x02800002:
            return _rnd(t.get("f"), 100)
        return None

    # -- DL/T 645 ----------------------------------------------------------------------------
    async def _handle(self, buf, n):
        sc = self.sc
        sc.reset()
        sc.feed(buf, n)
        found = False
        while True:
            k = sc.next()
            if not k:
                break
            found = True
            await self._frame(sc.buf, sc.start)
        if not found and self.unit is not None and n == 8:
            await self._modbus(buf, n)

    async def _frame(self, b, s):
        c = b[s + 8]
        if c & dlt645.DIR:
            return  # another meter's answer
        fn = c & 0x1F
        bcast = dlt645.same_address(b, s, b"\x99\x99\x99\x99\x99\x99")
        wild = dlt645.same_address(b, s, b"\xaa\xaa\xaa\xaa\xaa\xaa")
        if fn == dlt645.C_TIME_SYNC and bcast:
            self._time_sync(b, s)
            return
        if not (wild or dlt645.same_address(b, s, self.addr)):
            return
        tx = self.tx
        if fn == dlt645.C_READ_ADDR:
            n = dlt645.encode(tx, self.addr, 0x93, self.addr, 6)
        elif fn == dlt645.C_READ and b[s + 9] >= 4:
            n = self._read(dlt645.di_of(b, s, 4))
        else:
            n = dlt645.encode(tx, self.addr, c | 0xC0, bytes((dlt645.ERR_OTHER,)), 1)
        await self.bus.send(tx, n)
        self.answered += 1

    def _read(self, di):
        tx = self.tx
        try:
            if di == dlt645.DI_ADDRESS:
                d = _le(di)
                d.extend(self.addr)
                return dlt645.encode(tx, self.addr, 0x91, d)
            if di in (dlt645.DI_DATE, dlt645.DI_TIME):
                y, mo, d, hh, mi, ss = R.civil(self.node.hal.clock.time())
                if di == dlt645.DI_DATE:
                    wd = (R.epoch(y, mo, d) // 86400 + 4) % 7  # 1970-01-01 was a Thursday
                    vals = (wd, d, mo, y % 100)
                else:
                    vals = (ss, mi, hh)
                out = _le(di)
                for x in vals:
                    out.append(((x // 10) << 4) | (x % 10))
                return dlt645.encode(tx, self.addr, 0x91, out)
            if di in dlt645.BLOCKS_2007:
                vals = [self.value(x) for x in dlt645.BLOCKS_2007[di]]
                if None not in vals:
                    return dlt645.encode(tx, self.addr, 0x91, dlt645.block_bytes(di, vals))
            elif di in dlt645.DI_2007:
                v = self.value(di)
                if v is not None:
                    return dlt645.encode(tx, self.addr, 0x91, dlt645.value_bytes(di, v))
        except ValueError:  # a value beyond its format: say "other error"
            return dlt645.encode(tx, self.addr, 0xD1, bytes((dlt645.ERR_OTHER,)), 1)
        return dlt645.encode(tx, self.addr, 0xD1, bytes((dlt645.ERR_NO_DATA,)), 1)

    def _time_sync(self, b, s):
        a, bb = dlt645.time_of(b, s)
        clock = self.node.hal.clock
        now = clock.time()
        best = None
        for t in (a, bb):  # the field order is not settled in the field: take the one nearer our clock
            if t is not None:
                e = R.epoch(*t)
                if best is None or abs(e - now) < abs(best - now):
                    best = e
        if best is None:
            self.ignored += 1
            return
        clock.set_time(best)
        self.time_syncs += 1
        print("slave: time set by DL/T 645 broadcast (%+d s)" % int(best - now))
        if self.event is not None:
            self.event(records.EV_TIME_SET, int(best - now), "dlt645 broadcast")

    # -- Modbus RTU --------------------------------------------------------------------------
    async def _modbus(self, b, n):
        try:
            unit, fn, start, count = modbus.parse_request(b, n)
        except modbus.FrameError:
            self.ignored += 1
            return
        if unit != self.unit:
            return
        tx = self.tx
        regs = self.modbus_registers()
        if fn != 3:
            k = modbus.exception_answer(tx, unit, fn, 1)
        elif count < 1 or count > modbus.MAX_REGS or start + count > len(regs):
            k = modbus.exception_answer(tx, unit, fn, 2)
        else:
            k = modbus.read_answer(tx, unit, fn, regs, start, count)
        await self.bus.send(tx, k)
        self.modbus_answered += 1

    def modbus_registers(self):
        # modbus.MAPS["umeter"]: holding registers 0..13
        r = [0] * 14
        regs = self._registers()

        def u32(i, v):
            v &= 0xFFFFFFFF
            r[i] = v >> 16
            r[i + 1] = v & 0xFFFF

        u32(0, regs.total_import() // 10000)  # mWh -> 0.01 kWh
        u32(2, regs.total_export() // 10000)
        t = self._telemetry()
        el = (t.get("elements") or [{}])[0] if t else {}
        r[4] = (_rnd(t.get("v"), 10) or 0) & 0xFFFF if t else 0
        u32(5, _rnd(el.get("i"), 1000) or 0)
        u32(7, _rnd(t.get("p"), 10) or 0 if t else 0)
        r[9] = (_rnd(el.get("pf"), 1000) or 0) & 0xFFFF
        r[10] = (_rnd(t.get("f"), 100) or 0) & 0xFFFF if t else 0
        u32(11, regs.tariff_registers(0)[0] // 1000)
        return r


def _rnd(x, scale):
    if x is None:
        return None
    return int(x * scale + (0.5 if x >= 0 else -0.5))


def _le(di):
    return bytearray(((di >> 0) & 0xFF, (di >> 8) & 0xFF, (di >> 16) & 0xFF, (di >> 24) & 0xFF))
