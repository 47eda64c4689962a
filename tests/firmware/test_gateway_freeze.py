# Daily and monthly freezes of the meters the gateway reads, and the gateway's memory gate, on
# MicroPython with the real Node (sim board), record log, profile recorder, gateway service,
# poller, drivers and codecs.
# The meters are an in-process line (a port object in place of the pty) answering with the
# codecs' own encoders; the node's clock is the sim clock, driven over midnight and the end
# of a month by the samples it measures and by setting it: no waiting for midnight.
import json

from meternode.gateway import cjt188, dlt645
from meternode.gateway import reading as R
from meternode.gateway.scanner import put_bcd
from meternode.gateway.service import GatewayService
from meternode.node import Node
from meternode.store import records
from mptest import eq, heap, scratch_dir

JAN31 = R.epoch(2026, 1, 31)
FEB1 = R.epoch(2026, 2, 1)
FEB2 = R.epoch(2026, 2, 2)


class Line:
    # Three meters on one line: a DL/T 645 electricity meter, a CJ/T 188 water and a gas meter.
    # Their registers are set by the test; `dead` meters do not answer.
    def __init__(self):
        self.kwh = {"000000123456": 0}  # 0.01 kWh
        self.m3 = {"00000000001234": 0, "00000000005678": 0}  # litres
        self.dead = []
        self.out = bytearray(300)
        self.n = 0
        self.k = 0
        self.sc645 = dlt645.scanner()
        self.sc188 = cjt188.scanner()

    def any(self):
        return 1 if self.k < self.n else 0

    def readinto(self, buf):
        i = 0
        while i < len(buf) and self.k < self.n:
            buf[i] = self.out[self.k]
            i += 1
            self.k += 1
        return i

    async def write(self, buf, n, char_us):
        self.n = self.k = 0
        self.sc645.reset()
        self.sc645.feed(buf, n)
        if self.sc645.next():
            s = self.sc645.start
            a = dlt645.address_of(self.sc645.buf, s)
            if a in self.kwh and a not in self.dead:
                di = dlt645.di_of(self.sc645.buf, s, 4)
                self.n = dlt645.encode(self.out, a, 0x91, dlt645.value_bytes(di, self.kwh[a]))
            return
        self.sc188.reset()
        self.sc188.feed(buf, n)
        if self.sc188.next():
            b = self.sc188.buf
            s = self.sc188.start
            a = cjt188.address_of(b, s)
            if a in self.m3 and a not in self.dead:
                pay = bytearray(22)
                pay[0], pay[1], pay[2] = b[s + 11], b[s + 12], b[s + 13]
                put_bcd(pay, 3, 4, self.m3[a] // 10)  # 0.01 m³
                pay[7] = 0x2C
                put_bcd(pay, 8, 4, 0)
                pay[12] = 0x2C
                for i in range(13, 20):
                    pay[i] = 0xFF  # no clock
                self.n = cjt188.encode(self.out, b[s + 1], a, 0x81, pay)


def _node(line, off_min=0):
    with open(__file__.rsplit("/", 3)[0] + "/boards/sim.json") as f:
        board = json.load(f)
    meters = [
        {"bus": "rs485", "protocol": "dlt645", "address": "000000123456", "dis": ["00010000"]},
        {"bus": "rs485", "protocol": "cjt188", "type": 16, "address": "00000000001234"},
        {"bus": "rs485", "protocol": "cjt188", "type": 48, "address": "00000000005678"},
    ]
    cfg = {
        "node_id": "fz1",
        "store": {"path": scratch_dir() + "/st"},
        "checkpoint": {"dir": ""},
        "sim": {"seed": 3, "epoch": JAN31 + 86400 - 150, "currents": [{"rms": 4.0}]},  # Jan 31 23:57:30 UTC
        "utc_offset_min": off_min,
        "gateway": {
            "buses": {"rs485": {"port": line, "baud": 115200, "turnaround_ms": 0}},
            "meters": meters, "timeout_ms": 50, "retries": 0, "silent_after": 1,
        },
    }
    n = Node(board, cfg)
    u = n.uplink()
    g = GatewayService(n, log=lambda m: None)
    n.gateway = g
    return n, u, g


def _advance(n, s):
    # `s` seconds of measured signal: the sim clock moves with the samples.
    n.hal.sampler.run(n.meter, s)


async def _round(n, g, line, kwh, water_l, gas_l):
    # New register values on the line, every meter polled once, then the node's report
    # (profile accounting, its own daily/monthly freezes).
    line.kwh["000000123456"] = kwh
    line.m3["00000000001234"] = water_l
    line.m3["00000000005678"] = gas_l
    p = g.pollers[0]
    for m in p.meters:
        await p.poll(m)
    await n._report()


def _records(u, kinds):
    r = u.log.reader()
    r.seek(1)
    out = []
    while r.next():
        if r.kind in kinds:
            out.append((r.kind, r.ts, r.record()))
    return out


def _frozen(u):
    # the gateway's freezes: {(ts, meter): (flags, {quantity: value})}
    out = {}
    for kind, ts, d in _records(u, (records.READING,)):
        st = d["status"]
        if "frozen_day" in st:
            out[(ts, d["meter"])] = (st, {x["quantity"]: x["value"] for x in d["readings"]})
    return out


@heap("1m")
async def test_freezes_at_midnight_and_month_end_carry_the_last_readings_before():
    line = Line()
    n, u, g = _node(line)
    _advance(n, 10)
    await _round(n, g, line, 100000, 100000, 50000)  # 23:57:40
    _advance(n, 90)
    await _round(n, g, line, 100100, 100500, 50250)  # 23:59:10: the last readings of January
    eq(_frozen(u), {}, "no freeze before midnight")
    _advance(n, 60)  # 00:00:10 on February 1st
    # the water meter is read first after midnight: its freeze is still January's last value
    line.m3["00000000001234"] = 101000
    p = g.pollers[0]
    await p.poll(p.meters[1])
    fz = _frozen(u)
    want = {
        (FEB1, "dlt645-000000123456"): (["frozen_day", "frozen_month"], {"energy_import": "1001.00"}),
        (FEB1, "cjt188-10-00000000001234"): (["frozen_day", "frozen_month"],
                                             {"water_volume": "100.50", "water_volume_settlement": "0.00"}),
        (FEB1, "cjt188-30-00000000005678"): (["frozen_day", "frozen_month"],
                                             {"gas_volume": "50.25", "gas_volume_settlement": "0.00"}),
    }
    eq(fz, want, "daily + monthly freeze at Feb 1 00:00 of each meter's last January reading")
    await _round(n, g, line, 100200, 101000, 51000)
    eq(len(_frozen(u)), 3, "one freeze per meter per midnight")
    # the node's own DAILY and MONTHLY freezes carry the water and gas litres of the same moment
    own = [(k, ts, (d["water_l"], d["gas_l"])) for k, ts, d in _records(u, (records.DAILY, records.MONTHLY))]
    eq(own, [(records.DAILY, FEB1, (100500, 50250)), (records.MONTHLY, FEB1, (100500, 50250))], "node freezes")
    # the rest of February 1st: no freeze; the gas meter falls silent before midnight
    n.hal.clock.set_time(FEB2 - 40)
    await _round(n, g, line, 100900, 103000, 52000)
    line.dead.append("00000000005678")
    _advance(n, 20)
    await _round(n, g, line, 101000, 103250, 99999)
    _advance(n, 30)  # Feb 2 00:00:10
    await _round(n, g, line, 101100, 103500, 99999)
    fz = _frozen(u)
    eq(len(fz), 6, "three more freezes at Feb 2 00:00")
    eq(fz[(FEB2, "dlt645-000000123456")], (["frozen_day"], {"energy_import": "1010.00"}), "daily only: no month end")
    eq(fz[(FEB2, "cjt188-10-00000000001234")][1]["water_volume"], "103.25", "water: the last reading before")
    eq(fz[(FEB2, "cjt188-30-00000000005678")], (["stale", "frozen_day"], {"gas_volume": "52.00",
                                                 "gas_volume_settlement": "0.00"}), "silent gas meter: stale")
    own = [(k, ts, (d["water_l"], d["gas_l"])) for k, ts, d in _records(u, (records.DAILY, records.MONTHLY))]
    eq(own[-1], (records.DAILY, FEB2, (103250, 52000)), "the node's daily freeze of Feb 2")
    # the clock set back a day and forward again: no day is frozen twice
    n.hal.clock.set_time(FEB2 - 3600)
    await _round(n, g, line, 101200, 103600, 99999)
    n.hal.clock.set_time(FEB2 + 600)
    await _round(n, g, line, 101300, 103700, 99999)
    eq(len(_frozen(u)), 6, "Feb 2 is not frozen again")
    u.log.close()


@heap("1m")
async def test_no_freeze_from_a_clock_that_was_never_set():
    # A board that has not had its time yet counts from 2000 or 1970: its midnights are not
    # days of the meters' lives, and setting the clock must not freeze stale readings.
    line = Line()
    n, u, g = _node(line)
    n.hal.clock.set_time(86400 - 30)  # 1970-01-01 23:59:30
    await _round(n, g, line, 100000, 100000, 50000)
    _advance(n, 60)
    await _round(n, g, line, 100100, 100100, 50100)
    n.hal.clock.set_time(FEB1 + 3600)  # the time arrives
    await _round(n, g, line, 100200, 100200, 50200)
    eq(_frozen(u), {}, "no freeze")
    n.hal.clock.set_time(FEB2 + 5)
    await _round(n, g, line, 100300, 100300, 50300)
    eq(sorted(set(ts for ts, _ in _frozen(u))), [FEB2], "freezes once the clock is real")
    u.log.close()


@heap("1m")
async def test_the_gateway_gate_refuses_below_the_measured_need_and_metering_goes_on():
    # node.py starts the gateway only with the free heap benchmarks/gateway.py measured it
    # needs: with 4-5 KB less (ballast), "gateway off" and the node still measures; with 2-3 KB
    # more than the need free, it starts and reads the meter.
    import gc

    from meternode import forget, nodegw
    from meternode import node as N

    line = Line()
    n, u, g = _node(line)
    n.config["gateway"]["meters"] = n.config["gateway"]["meters"][:1]
    need = nodegw.need(n.config)
    eq(nodegw.need({"gateway": {"meters": [{"protocol": "dlt645"}, {"protocol": "mbus"}]}}) > need, True,
       "a second protocol and meter need more")
    logs = []
    N.log = logs.append
    forget("meternode.nodegw")  # Node._gateway() loads it afresh, logging with this log
    for short, want in ((4096, False), (-2048, True)):
        # nodegw compiled (from source here) and its names interned before the ballast is
        # sized: the gate is to see the heap the node leaves it, not this test's compile or a
        # qstr pool its names happen to start (Node._gateway() finds it loaded)
        __import__("meternode.nodegw")
        ballast = []
        gc.collect()
        while gc.mem_free() - (need - short) > 1024:
            ballast.append(bytearray(1024))
        gw = n._gateway()  # the service (its tasks go to the supervisor, tasks.py), or None
        eq(gw is not None, want, "gateway started with %d bytes short: %r" % (short, logs[-1:]))
        ballast = None
    eq(logs[0].startswith("gateway off: ") and logs[0].endswith("it needs %d (raise the heap, or ship .mpy / frozen)"
                                                               % need), True, "says why: %r" % logs[0])
    _advance(n, 2)
    eq(n.meter.snapshot() is not None, True, "metering goes on")
    await n.gateway.pollers[0].poll(n.gateway.pollers[0].meters[0])
    eq(n.gateway.pollers[0].meters[0].good, 1, "the meter read")
    u.log.close()


@heap("1m")
async def test_a_node_in_new_york_freezes_at_its_local_midnight():
    # config.utc_offset_min -300 (EST): the gateway's freezes and the node's own are at
    # 05:00 UTC, Feb 1 00:00 local, and a month's end there; none at the UTC midnight before.
    from meternode import ticks

    line = Line()
    n, u, g = _node(line, -300)
    try:
        loc = FEB1 + 5 * 3600
        _advance(n, 10)
        await _round(n, g, line, 100000, 100000, 50000)  # 18:57:40 local
        _advance(n, 160)
        await _round(n, g, line, 100100, 100500, 50250)  # 00:00:10 UTC, 19:00:10 local
        eq(_frozen(u), {}, "no freeze at the UTC midnight")
        n.hal.clock.set_time(loc - 40)
        await _round(n, g, line, 100200, 101000, 51000)  # the last readings of January, local
        _advance(n, 50)
        await _round(n, g, line, 100300, 101500, 51500)
        fz = _frozen(u)
        eq(sorted(fz), [(loc, "cjt188-10-00000000001234"), (loc, "cjt188-30-00000000005678"),
                        (loc, "dlt645-000000123456")], "each meter frozen at local midnight")  # fmt: skip
        eq(fz[(loc, "dlt645-000000123456")], (["frozen_day", "frozen_month"], {"energy_import": "1002.00"}), "Jan")
        own = [(k, ts) for k, ts, d in _records(u, (records.DAILY, records.MONTHLY))]
        eq(own, [(records.DAILY, loc), (records.MONTHLY, loc)], "the node's own freezes, the same moment")
    finally:
        ticks.LOCAL_S = 0
        u.log.close()


@heap("1m")
async def test_billing_time_moved_west_freezes_no_day_twice():
    # The billing time moved from UTC+6 to UTC+5 at noon (a signed policy, docs/policy.md):
    # its new midnight behind it is an hour after the one frozen, a day that did not end;
    # the gateway and the node freeze the 2nd once, at 00:00 on the 3rd in UTC+5.
    from meternode import ticks

    line = Line()
    n, u, g = _node(line, 360)
    h = 3600
    try:
        _advance(n, 10)
        await _round(n, g, line, 100000, 100000, 50000)
        n.hal.clock.set_time(FEB2 - 6 * h - 40)
        await _round(n, g, line, 100000, 100000, 50000)
        _advance(n, 50)
        await _round(n, g, line, 100100, 100500, 50250)  # Feb 2 00:00:10 in UTC+6
        n.hal.clock.set_time(FEB2 + 6 * h)  # noon
        ticks.LOCAL_S = 300 * 60
        await _round(n, g, line, 100200, 101000, 51000)
        _advance(n, 50)
        await _round(n, g, line, 100300, 101500, 51500)
        eq(sorted({ts for ts, _m in _frozen(u)}), [FEB2 - 6 * h], "no freeze at the new offset's past midnight")
        n.hal.clock.set_time(FEB2 + 19 * h - 40)
        await _round(n, g, line, 100400, 102000, 52000)
        _advance(n, 50)
        await _round(n, g, line, 100500, 102500, 52500)  # Feb 3 00:00:10 in UTC+5
        eq(sorted({ts for ts, _m in _frozen(u)}), [FEB2 - 6 * h, FEB2 + 19 * h], "the 2nd frozen once, 25 h long")
        own = [(k, ts) for k, ts, d in _records(u, (records.DAILY,))]
        eq(own, [(records.DAILY, FEB2 - 6 * h), (records.DAILY, FEB2 + 19 * h)], "the node's own, the same")
    finally:
        ticks.LOCAL_S = 0
        u.log.close()
