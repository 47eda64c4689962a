# The gateway on MicroPython: the scanner and value decoders allocate nothing, the reading
# model round-trips, decoders survive garbage, and the poller's schedule (retries, backoff,
# silent/back events, stale last reading) against a scripted bus.

from meternode.gateway import cjt188, dlt645, drivers, lorareading, mbus, modbus, poller
from meternode.gateway import reading as R
from mptest import assert_no_alloc, eq, heap, raises


def _answer(buf, v, pre=2):
    return dlt645.encode(buf, "000000123456", 0x91, dlt645.value_bytes(0x00010000, v), -1, pre)


@heap("256k")  # four codecs and the poller compiled from source
def test_scanner_and_value_decoding_allocate_nothing():
    sc = dlt645.scanner()
    frame = bytearray(64)
    n = _answer(frame, 12345678)
    r = R.Readings()

    def feed_and_read():
        sc.reset()
        sc.feed(frame, n)
        k = sc.next()
        r.clear()
        dlt645.values(sc.buf, sc.start, r, 2007, 0x00010000)
        return k

    feed_and_read()  # warm up (first-call caches)
    eq(assert_no_alloc(feed_and_read), n - 2, "frame length")
    eq((r.n, r.v[0], r.e[0]), (1, 12345678, -2), "value")
    c = cjt188.scanner()
    b = bytearray(64)
    m = cjt188.read_request(b, 0x10, "00000000001234", 1)

    def scan188():
        c.reset()
        c.feed(b, m)
        return c.next()

    scan188()
    eq(assert_no_alloc(scan188), m - 2, "CJ/T 188 frame")
    rq = bytearray(8)
    modbus.read_request(rq, 1, 3, 0, 1)
    eq(assert_no_alloc(modbus.crc16, rq, 0, 6), 0x0A84, "CRC-16/MODBUS")


@heap("256k")  # four codecs and the poller compiled from source
def test_scanner_resyncs_after_noise_and_a_bad_checksum_on_micropython():
    sc = dlt645.scanner()
    a = bytearray(64)
    na = _answer(a, 1)
    b = bytearray(64)
    nb = _answer(b, 2)
    a[na - 2] ^= 0x55
    sc.feed(b"\x00\x68\x12")
    sc.feed(a, na)
    for i in range(nb):  # one byte per read
        sc.feed(b[i : i + 1])
    k = sc.next()
    eq(k, nb - 2, "good frame after the broken one")
    r = R.Readings()
    dlt645.values(sc.buf, sc.start, r)
    eq(r.v[0], 2, "its value")
    eq(sc.bad, 1, "bad checksums counted")


@heap("256k")  # four codecs and the poller compiled from source
def test_reading_record_and_lora_form_round_trip_on_micropython():
    r = R.Readings()
    r.add(R.Q_WATER, 32109, -2, R.U_M3)
    r.add(R.Q_E_IMP, 123456789, -3, R.U_WH)  # Wh -> kWh, exact
    r.meter_ts = 1773500000
    p = R.pack("cjt188-10-00000000001234", r)
    d = R.fields(p)
    eq(d["readings"][1]["value"], "123.456789", "Wh made kWh by the exponent")
    eq(d["readings"][1]["unit"], "kWh", "canonical unit")
    lo = lorareading.lora_decode(lorareading.lora(p, 42))
    eq(lo["meter"], "cjt188-10-00000000001234", "meter id from its digits")
    eq(lo["readings"][0]["value"], "321.09", "value")
    eq(R.civil(R.epoch(2026, 2, 28, 23, 59, 59) + 1), (2026, 3, 1, 0, 0, 0), "calendar")


@heap("256k")  # four codecs and the poller compiled from source
def test_decoders_survive_random_bytes_on_micropython():
    import random

    random.seed(7)
    sc = mbus.MBusScanner()
    buf = bytearray(300)
    for _ in range(300):
        n = random.getrandbits(8)
        for i in range(n):
            buf[i] = random.getrandbits(8)
        buf[0] = 0x68
        if n > 4:
            buf[2] = buf[1]
            buf[3] = 0x68
        sc.feed(buf, n)
        while sc.next():
            pass
        r = R.Readings()
        try:
            mbus.records(buf, 0, n, 0x04, r)
        except ValueError:
            pass
        try:
            R.fields(bytes(buf[:n]))
        except ValueError:
            pass


class _Bus:
    # A scripted bus: answers come from `script` (frame bytes, None = silence).
    name = "fake"

    def __init__(self):
        self.script = []
        self.sent = 0

    def stats(self):
        return {}

    async def request(self, buf, n, sc, timeout_ms):
        self.sent += 1
        sc.reset()
        a = self.script.pop(0) if self.script else None
        if a is None:
            return -1
        sc.feed(a, len(a))
        return sc.next()


class _Sink:
    def __init__(self):
        self.got = []

    def reading(self, m, r):
        self.got.append(("reading", m.id, r.v[0]))

    def silent(self, m, why):
        self.got.append(("silent", m.id, m.last.v[0]))

    def back(self, m):
        self.got.append(("back", m.id, 0))

    def note(self, mid, text):
        self.got.append(("note", mid, text))


@heap("256k")  # four codecs and the poller compiled from source
async def test_silent_meter_backs_off_keeps_its_last_reading_and_comes_back():
    bus = _Bus()
    sink = _Sink()
    d = drivers.make({"protocol": "dlt645", "address": "000000123456", "dis": ["00010000"]}, "m")
    m = poller.Meter(d, 1000, 0)
    p = poller.Poller(bus, [m], sink, timeout_ms=50, retries=1, backoff_max_s=4, silent_after=2)
    f = bytearray(64)
    n = _answer(f, 500)
    bus.script = [bytes(f[:n])]
    eq(await p.poll(m), True, "first poll")
    bus.script = [None, None, None, None, None, None]
    await p.poll(m)
    eq(len(sink.got), 1, "one failed poll is no event yet")
    await p.poll(m)
    eq(sink.got[-1], ("silent", m.id, 500), "silent after 2 failed polls, last reading kept")
    eq(bus.sent, 1 + 4, "each failed poll tried twice (retries=1)")
    waits = []
    from meternode.ticks import diff as ticks_diff
    from meternode.ticks import ms as ticks_ms

    for _ in range(4):
        await p.poll(m)
        waits.append(ticks_diff(m.due, ticks_ms()))
    ok = [950 * 4 <= waits[0] <= 4000, waits[-1] <= 4000, waits[-1] >= 3900]
    eq(ok, [True, True, True], "backoff doubles to backoff_max_s: %r" % waits)
    eq([g[0] for g in sink.got].count("silent"), 1, "the silence is one event")
    n = _answer(f, 501)
    bus.script = [bytes(f[:n])]
    await p.poll(m)
    eq(sink.got[-2:], [("back", m.id, 0), ("reading", m.id, 501)], "back, then a fresh reading")
    eq(ticks_diff(m.due, ticks_ms()) <= 1000, True, "normal interval again")


@heap("256k")  # four codecs and the poller compiled from source
async def test_a_meter_without_a_di_is_noted_once_and_the_rest_still_read():
    bus = _Bus()
    sink = _Sink()
    d = drivers.make({"protocol": "dlt645", "address": "000000123456", "dis": ["02800002", "00010000"]}, "m")
    m = poller.Meter(d, 1000, 0)
    p = poller.Poller(bus, [m], sink, timeout_ms=50, retries=0)
    f = bytearray(64)
    k = dlt645.encode(f, "000000123456", 0xD1, bytes((dlt645.ERR_NO_DATA,)), 1, 0)
    err = bytes(f[:k])
    k = _answer(f, 7)
    ok = bytes(f[:k])
    for _ in range(2):
        bus.script = [err, ok] if not d.skip else [ok]
        eq(await p.poll(m), True, "poll")
    want = [("note", m.id, "DI 02800002: the meter has no such data; not asked again")]
    eq([g for g in sink.got if g[0] == "note"], want, "noted once")
    eq(bus.sent, 3, "the missing DI is not asked again")


@heap("256k")  # four codecs and the poller compiled from source
def test_bad_meter_config_names_the_key():
    e = raises(ValueError, drivers.make, {"protocol": "dlt645", "address": "12"}, "config.gateway.meters[3]")
    eq(str(e), "config.gateway.meters[3].address must be 12 digits, not '12'", "message")
    e = raises(ValueError, drivers.make, {"protocol": "iec1107"}, "config.gateway.meters[0]")
    eq("protocol must be one of" in str(e), True, "unknown protocol")
