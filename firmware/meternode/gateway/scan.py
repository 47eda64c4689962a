# Discovery: which meters answer on a bus.  One Scanner per bus; each method returns
# [{"protocol", "address", "meter"}] for what answered.
#   dlt645(probe=[...])   read address to AA x 6 (one meter on the bus), then a read of the
#                         forward energy at each probed address (2007, then 1997)
#   cjt188(probe=[...])   read address with the wildcard type and address (one meter); when
#                         several answer at once, each common meter type on its own; then a
#                         read of each probed (type, address)
#   mbus_primary(lo, hi)  SND_NKE at each primary address, E5 = present, then REQ_UD2 there
#                         for its identification number (the meter id)
#   mbus_secondary()      secondary search: select with wildcards digit by digit; a garbled
#                         answer means several meters matched, so the next digit is tried
#   modbus(ids)           read one holding register at each configured id; an exception
#                         answer counts as present too
# discover() runs them over a node's buses (the same code for `umeter bus scan --port` on a
# board through its raw REPL, and for `--board virtual` on the host): M-Bus searches on a bus
# with the M-Bus profile, DL/T 645, CJ/T 188 and Modbus on the others; the probes and Modbus
# ids include the meters configured on that bus; a meter found by both M-Bus searches is
# listed once.
from meternode.config import ConfigError, load_json
from meternode.gateway import cjt188, dlt645, mbus, modbus
from meternode.hal import bus as hbus

ALL = ("645", "188", "mbus", "modbus")
NARROW_188 = (0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x30)  # types asked one by one after a collision


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

    async def cjt188(self, probe=()):
        # The wildcard read address finds a meter alone on the bus; when several answer at
        # once (garbage on the line) each common type is asked on its own; then a read of
        # each probed (type, address) that is not found yet.
        out = []
        sc = cjt188.scanner()
        for t in (cjt188.ANY_TYPE,) + NARROW_188:
            n = cjt188.read_address_request(self.tx, 0, cjt188.PREAMBLE, t)
            k = await self._ask(n, sc)
            if k > 0 and sc.buf[sc.start + 9] == 0x83:
                mt = cjt188.meter_type(sc.buf, sc.start)
                a = cjt188.address_of(sc.buf, sc.start)
                out.append({"protocol": "cjt188", "address": a, "type": mt, "meter": cjt188.meter_id(mt, a)})
            if t == cjt188.ANY_TYPE and k != 0:
                break  # one meter, or none: nothing collided
        for t, a in probe:
            mid = cjt188.meter_id(t, a)
            if [f for f in out if f["meter"] == mid]:
                continue
            n = cjt188.read_request(self.tx, t, a, 1)
            k = await self._ask(n, sc)
            if k > 0 and sc.buf[sc.start + 9] & cjt188.DIR and cjt188.address_of(sc.buf, sc.start) == a:
                out.append({"protocol": "cjt188", "address": a, "type": t, "meter": mid})
        return out

    async def mbus_primary(self, lo=0, hi=mbus.MAX_PRIMARY):
        # SND_NKE at each address; one that acknowledges is asked REQ_UD2 for its ident.
        out = []
        sc = mbus.MBusScanner()
        for a in range(lo, hi + 1):
            n = mbus.snd_nke(self.tx, a)
            if await self._ask(n, sc) > 0 and sc.kind == 1:
                f = {"protocol": "mbus", "address": a, "meter": "mbus-p%d" % a}
                # it acknowledged, so it is there: a REQ_UD2 that goes unanswered in time (a
                # slow meter, a frame lost on the bus) is repeated once, with the same FCB (a
                # repetition, EN 13757-2), before the meter is listed without its ident
                for _ in range(2):
                    n = mbus.req_ud2(self.tx, a, True)
                    if await self._ask(n, sc) > 0 and sc.kind == 3:
                        try:
                            ident = mbus.header(sc.buf, sc.start)[1]
                        except ValueError:
                            ident = ""  # not a variable data answer: present, ident unknown
                        if ident:
                            f["secondary"] = ident
                            f["meter"] = mbus.meter_id(ident)
                        break
                out.append(f)
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


def bus_specs(board, config, names=None):
    # The board's master buses merged with config.gateway.buses -> [(name, spec, meters)]
    # (`meters` are the config entries on that bus; discover() checks each spec).  ConfigError
    # for a board without buses or an unknown name.
    have = board.get("buses") or {}
    if not have:
        raise ConfigError("board %s has no buses (board.json key buses)" % board.get("name", "?"))
    g = config.get("gateway") or {}
    over = g.get("buses") or {}
    out = []
    for name in names or sorted(have):
        if name not in have:
            raise ConfigError("bus %r is not in board.buses (have: %s)" % (name, ", ".join(sorted(have))))
        spec = dict(have[name]) if isinstance(have[name], dict) else have[name]
        if isinstance(spec, dict):
            spec.update(over.get(name) or {})
            if spec.get("role") == "slave" and not names:
                continue  # the node answers there as a meter: nothing to find
        out.append((name, spec, [m for m in g.get("meters") or [] if isinstance(m, dict) and m.get("bus") == name]))
    return out


def _protocols(spec, meters, want):
    mine = ("mbus",) if spec.get("profile") == "mbus" else ("645", "188", "modbus")
    names = {"dlt645": "645", "cjt188": "188", "mbus": "mbus", "modbus": "modbus"}
    extra = [names.get(m.get("protocol")) for m in meters]
    return [p for p in ALL if p in want and (p in mine or p in extra)]


async def discover(board, config, protocols=ALL, probe=(), ids=range(1, 11), primary=(0, mbus.MAX_PRIMARY),
                   timeout_ms=200, names=None):
    # Every master bus of the node (or `names`): -> {"found": [{bus, protocol, address, meter,
    # ...}], "scanned": [bus names], "errors": ["<bus>: <why>"], "requests": n}.  A bus that
    # cannot be opened is an error entry; the other buses are still scanned.
    found = []
    scanned = []
    errors = []
    requests = 0
    for name, spec, meters in bus_specs(board, config, names):
        try:
            spec = hbus.check(name, spec)
            b = hbus.make(name, spec)
        except (ConfigError, OSError, ValueError) as e:
            errors.append("%s: %s" % (name, e))
            continue
        s = Scanner(b, timeout_ms)
        scanned.append(name)
        got = []
        try:
            for p in _protocols(spec, meters, protocols):
                if p == "645":
                    pr = list(probe)
                    for m in meters:
                        a = m.get("address")
                        if m.get("protocol") == "dlt645" and isinstance(a, str) and a not in pr:
                            pr.append(a)
                    got += await s.dlt645(pr)
                elif p == "188":
                    pr = []
                    for m in meters:
                        if m.get("protocol") == "cjt188" and isinstance(m.get("address"), str):
                            t = m.get("type", 0x10)
                            pr.append((int(t, 16) if isinstance(t, str) else t, m["address"]))
                    got += await s.cjt188(pr)
                elif p == "modbus":
                    us = list(ids)
                    for m in meters:
                        u = m.get("unit")
                        if m.get("protocol") == "modbus" and isinstance(u, int) and u not in us:
                            us.append(u)
                    got += await s.modbus(us)
                else:
                    got += await s.mbus_primary(primary[0], primary[1])
                    seen = [f["meter"] for f in got]
                    for f in await s.mbus_secondary():
                        if f["meter"] in seen:  # found at its primary address already
                            continue
                        got.append(f)
        except OSError as e:
            errors.append("%s: %s" % (name, e))
        finally:
            close = getattr(b.port, "close", None)
            if close is not None:
                close()
        requests += s.requests
        for f in got:
            f["bus"] = name
        found += got
    return {"found": found, "scanned": scanned, "errors": errors, "requests": requests}


async def discover_files(root=".", protocols=ALL, probe=(), ids=range(1, 11), primary=(0, mbus.MAX_PRIMARY),
                         timeout_ms=200, names=None):
    # discover() with the node's own board.json and config.json (a board's root directory).
    board = load_json(root + "/board.json")
    try:
        config = load_json(root + "/config.json")
    except ConfigError:
        config = {}  # a board not provisioned yet still has its buses
    return await discover(board, config, protocols, probe, ids, primary, timeout_ms, names)
