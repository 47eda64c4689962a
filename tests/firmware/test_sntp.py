# The node's clock from NTP (link/sntp.py), against servers on loopback whose packets are made
# and read by ntplib (hil/umeter_hil/ntpsim.py): a request ours must be NTP v4 from a client,
# or it gets no answer.
import time

from meternode.link import sntp
from mptest import RTC, eq, host_value, needs, raises


def _ports():
    return {k: int(v) for k, v in (x.split(":") for x in host_value("ntp_ports").split(","))}


@needs("host:ntp")
async def test_a_clock_never_set_takes_the_servers_time_and_a_set_one_only_a_bounded_step():
    p = _ports()
    host_now = int(time.time())  # the unix port's clock is the host's: the servers' time
    c = RTC(946684800)  # 2000-01-01: an ESP32's RTC after a power cut
    step = await sntp.sync(c, "127.0.0.1", p["good"])
    eq(abs(c.t - host_now) <= 2 and step == c.t - 946684800, True, "set to %d, host %d" % (c.t, host_now))
    cache = [None]
    eq(await sntp.sync(c, "127.0.0.1", p["good"], 3000, 86400, cache), 0, "within 2 s: no step")
    eq(len(c.sets), 1, "one set")
    # the address looked up once: the next sync does not resolve the name again
    eq((cache[0] is not None, await sntp.sync(c, "no-such-host.invalid", 1, 3000, 86400, cache)), (True, 0), "cached")
    c.t -= 30  # thirty seconds of drift
    eq(await sntp.sync(c, "127.0.0.1", p["good"]) in (29, 30, 31), True, "stepped back on time")
    # a server two hours ahead of a clock that is set: over a 1-hour limit, refused, named
    e = await _refused(ValueError, sntp.sync(c, "127.0.0.1", p["ahead"], 3000, 3600))
    eq("is over the 3600-s limit" in str(e) and "+7" in str(e), True, str(e))
    eq(await sntp.sync(c, "127.0.0.1", p["ahead"], 3000, 86400) in (7199, 7200, 7201), True, "within a day's limit")


@needs("host:ntp")
async def test_an_answer_that_cannot_set_the_clock_is_refused_naming_why():
    p = _ports()
    c = RTC(1700000000)
    for name, why in (("spoof", "an answer to another request"), ("kod", "kiss-o'-death RATE"),
                      ("unsync", "the server is not synchronised")):  # fmt: skip
        e = await _refused(ValueError, sntp.sync(c, "127.0.0.1", p[name]))
        eq(str(e), why, name)
    e = await _refused(OSError, sntp.sync(c, "127.0.0.1", p["silent"], 300))
    eq(str(e), "no answer from 127.0.0.1:%d in 300 ms" % p["silent"], "silent")
    eq(c.sets, [], "the clock untouched")


def test_the_packet_checks_and_the_2036_era():
    req = sntp.request(1700000000, 0xABCDE)
    eq((len(req), req[0]), (48, 0x23), "48 bytes, version 4, client")
    ans = bytearray(48)
    ans[0], ans[1] = 0x24, 2
    ans[24:32] = req[40:48]
    ans[40:44] = (5).to_bytes(4, "big")  # NTP seconds wrapped in February 2036: era 1
    ans[44:48] = (0x80000000).to_bytes(4, "big")
    eq(sntp.answer(bytes(ans), req), (2085978501, 500), "2036-02-07 06:28:21.5 UTC")
    for b, why in ((ans[:47], "a short answer: 47 bytes"), (bytes([0x23]) + ans[1:], "not a server's answer (mode 3)"),
                   (bytes([0x14]) + ans[1:], "NTP version 2")):  # fmt: skip
        eq(str(raises(ValueError, sntp.answer, bytes(b), req)), why, why)


async def _refused(kind, coro):
    # the exception `coro` raises, which must be a `kind`
    try:
        await coro
    except kind as e:
        return e
    raise AssertionError("no %s" % kind.__name__)
