# SNTP (RFC 4330, NTP version 4 on the wire) for the node's wall clock: one request to a
# server, its answer checked, the clock stepped to the server's time plus half the round
# trip.  Loaded for a sync and forgotten after (meternode.run: the Wi-Fi supervisor's
# `when_up`, link/wifi.py); a node without Wi-Fi never loads it.  A board's RTC starts in
# 2000 or 2021 after a power cut: without a set clock the node freezes nothing, bills no
# demand and refuses signed bundles (docs/uplink.md, "Time").
#
# What an answer must be to set the clock (else ValueError naming what it was): 48 bytes or
# more, a server's (mode 4), version 3 or 4, synchronised (leap indicator not 3, stratum
# 1..15; stratum 0 is a kiss-o'-death, its code named), the originate timestamp equal to
# this request's transmit timestamp (its seconds and 20 random bits: an answer to another
# request, or a forged one, does not match), a transmit time; and what link/nettime.py's
# step() asks of any network time (after 2020; once the clock is set, a step of at most
# max_step_s, as a `time` command's; a step under 2 s is not made).
import os
import socket

from micropython import const

from meternode import run
from meternode.ticks import diff, ms, sleep_ms

_NTP_UNIX = const(2208988800)  # seconds from 1900-01-01 to 1970-01-01


def request(now_s, nonce):
    # 48 bytes: leap 0, version 4, mode 3 (client); the transmit timestamp is the node's time
    # with `nonce` (20 bits) in the fraction's top bits, which the server echoes as originate
    b = bytearray(48)
    b[0] = 0x23
    b[40:44] = ((now_s + _NTP_UNIX) & 0xFFFFFFFF).to_bytes(4, "big")
    b[44:48] = ((nonce & 0xFFFFF) << 12).to_bytes(4, "big")
    return b


def answer(b, req):
    # -> (UNIX seconds, milliseconds) of the server's transmit time
    if len(b) < 48:
        raise ValueError("a short answer: %d bytes" % len(b))
    mode = b[0] & 7
    if mode != 4:
        raise ValueError("not a server's answer (mode %d)" % mode)
    if (b[0] >> 3) & 7 not in (3, 4):
        raise ValueError("NTP version %d" % ((b[0] >> 3) & 7))
    if b[1] == 0:
        code = "".join(chr(c) if 32 < c < 127 else "?" for c in b[12:16])
        raise ValueError("kiss-o'-death %s" % code)
    if b[0] >> 6 == 3 or b[1] > 15:
        raise ValueError("the server is not synchronised")
    if b[24:32] != req[40:48]:
        raise ValueError("an answer to another request")
    s = int.from_bytes(b[40:44], "big")
    f = int.from_bytes(b[44:48], "big")
    if not s and not f:
        raise ValueError("no transmit time")
    # NTP seconds wrap in 2036: below 2**31 they are of the next era
    s = s - _NTP_UNIX if s >= 0x80000000 else s + 0x100000000 - _NTP_UNIX
    return s, (f * 1000) >> 32


async def sync(clock, host, port=123, timeout_ms=3000, max_step_s=86400, cache=None):
    # One exchange with host:port; -> the step made (s; 0: within 2 s, not made).  OSError when
    # no answer comes in timeout_ms, ValueError for an answer that cannot set the clock.
    # `cache`: a one-item list holding the server's address, resolved when it holds None (the
    # lookup blocks the event loop: a board's sampler counts the sets it loses then)
    addr = cache[0] if cache else None
    if addr is None:
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
        if cache is not None:
            cache[0] = addr
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        req = request(int(clock.time()), int.from_bytes(os.urandom(3), "big"))
        t0 = ms()
        s.sendto(req, addr)
        while True:
            try:
                b = s.recv(64)
                break
            except OSError:  # nothing yet (EAGAIN)
                if diff(ms(), t0) >= timeout_ms:
                    raise OSError("no answer from %s:%d in %d ms" % (host, port, timeout_ms))
                await sleep_ms(20)
        rtt = diff(ms(), t0)
        sec, msec = answer(b, req)
        # the step every network source shares (link/nettime.py: its bounds)
        return run("meternode.link.nettime", "step", clock, sec + (msec + rtt // 2) // 1000, max_step_s)
    finally:
        s.close()
