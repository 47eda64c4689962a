# Discovery: which meters answer on a bus.  One Scanner per bus; each method returns
# [{"protocol", "address", "meter"}] for what answered.
#   dlt645(probe=[...])   read address to AA x 6 (one meter on the bus), then a read of the
#                         forward energy at each probed address (2007, then 1997)
#   cjt188()              read address with the wildcard type and address
#   mbus_primary(lo, hi)  SND_NKE at each primary address, E5 = present
#   mbus_secondary()      secondary search: select with wildcards digit by digit; a garbled
#                         answer means several meters matched, so the next digit is tried
#   modbus(ids)           read one holding register at each configured id; an exception
#                         answer counts as present too
from meternode.gateway import cjt188, dlt645, mbus, modbus


class Scanner:
    def __init__(self, bus, timeout_ms=200):
        self.bus = bus
        self.timeout_ms = timeout_ms
        self.tx = bytearray(300)
        self.requests = 0

    async def _ask(self, n, sc):
        self.requests += 1
        return await self.bus.request(self.tx, n, sc, self.timeout_ms)

    async def dlt645(self, probe=()):
        out = []
        seen = []
        sc = dlt645.scanner()
        n = dlt645.read_address_request(self.tx)
        if await self._ask(n, sc) > 0 and sc.buf[sc.start + 8] == 0x93:
            a = dlt645.address_of(sc.buf, sc.start)
            seen.append(a)
            out.append({"protocol": "dlt645", "address": a, "meter": dlt645.meter_id(a)})
        for a in probe:
            if a in seen:
                continue
            for version, di in ((2007, 0x00010000), (1997, 0x9010)):
                n = dlt645.read_request(self.tx, a, di, version)
                k = await self._ask(n, sc)
                if k > 0 and sc.buf[sc.start + 8] & dlt645.DIR and dlt645.address_of(sc.buf, sc.start) == a:
                    out.append({"protocol": "dlt645", "address": a, "version": version,
                                "meter": dlt645.meter_id(a, version)})
                    break
        return out

    async def cjt188(self):
        sc = cjt188.scanner()
        n = cjt188.read_address_request(self.tx)
        if await self._ask(n, sc) > 0 and sc.buf[sc.start + 9] == 0x83:
            t = cjt188.meter_type(sc.buf, sc.start)
            a = cjt188.address_of(sc.buf, sc.start)
            return [{"protocol": "cjt188", "address": a, "type": t, "meter": cjt188.meter_id(t, a)}]
        return []

    async def mbus_primary(self, lo=0, hi=mbus.MAX_PRIMARY):
        out = []
        sc = mbus.MBusScanner()
        for a in range(lo, hi + 1):
            n = mbus.snd_nke(self.tx, a)
            if await self._ask(n, sc) > 0 and sc.kind == 1:
                out.append({"protocol": "mbus", "address": a, "meter": "mbus-p%d" % a})
        return out

    async def mbus_secondary(self, prefix=""):
        # Depth-first over the 8 ID digits: "1F..." wildcards the rest.
        out = []
        sc = mbus.MBusScanner()
        for d in "0123456789":
            pat = prefix + d
            n = mbus.select(self.tx, pat + "F" * (8 - len(pat)))
            k = await self._ask(n, sc)
            if k <= 0 and not sc.pending() and k < 0:
                continue  # nobody matches
            if k > 0 and sc.kind == 1:  # exactly one meter selected
                if len(pat) == 8:
                    out.append({"protocol": "mbus", "address": pat, "meter": mbus.meter_id(pat)})
                    continue
                # the one that answered: ask it for its ident
                n = mbus.req_ud2(self.tx, mbus.ADDR_SELECTED)
                if await self._ask(n, sc) > 0 and sc.kind == 3:
                    ident = mbus.header(sc.buf, sc.start)[1]
                    out.append({"protocol": "mbus", "address": ident, "meter": mbus.meter_id(ident)})
                continue
            if len(pat) < 8:  # a collision (or garbage): narrow down
                out += await self.mbus_secondary(pat)
        return out

    async def modbus(self, ids):
        out = []
        sc = modbus.Collector()
        for unit in ids:
            for fn in (3, 4):
                n = modbus.read_request(self.tx, unit, fn, 0, 1)
                k = await self._ask(n, sc)
                if k > 0 and sc.buf[0] == unit:
                    out.append({"protocol": "modbus", "address": unit, "meter": modbus.meter_id(unit)})
                    break
        return out
