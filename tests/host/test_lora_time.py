"""The node's clock from a LoRaWAN network (firmware/meternode/link/nettime.py): a DeviceTimeReq
riding on a record's uplink through the AT driver, on the MicroPython unix port, against the
simulated RAK3172 over a pty; and RUI3's AT+LTIME text read into UNIX seconds, checked against
CPython's own calendar."""

from __future__ import annotations

import calendar
import os
import random
import subprocess
import time

import pytest
from lorarun import run_driver

from umeter import unixport
from umeter_hil.lorasim import SimModem

DRIVER = r"""
import asyncio, json, sys
from lorarig import RTC, rig
from meternode import ticks
from meternode.link.airtime import Governor
from meternode.link.loralink import LoRaLink

d, epoch, max_step = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
due_in_s = int(sys.argv[5]) if len(sys.argv) > 5 else None  # the next request's deadline from now

m, log, cur = rig(sys.argv[1], d, 3)
clock = RTC(epoch)
link = LoRaLink(m, log, cur, Governor("CN470", dr=5, daily_budget_ms=10**9), clock, port=2, retry_ms=50)
link.nettime = [None, None, None, 600, 86400, max_step]  # as loraservice.make: daily
if due_in_s is not None:  # (ticks ms: 30 bits that wrap, as on a board; a board's ticks_add
    t = ticks.ms()           # takes at most half the period, 6.2 days, so in steps of a day)
    while due_in_s:
        x = max(-86400, min(86400, due_in_s))
        t = ticks.add(t, x * 1000)
        due_in_s -= x
    link.nettime[2] = t
events = []
link.event = lambda code, arg, text: events.append([code, arg, text])

async def main():
    m.start()
    t = asyncio.create_task(link.run())
    for _ in range(1500):
        if cur.acked == 3:
            break
        await asyncio.sleep_ms(20)
    t.cancel()
    nt = link.nettime
    print("RESULT " + json.dumps({"acked": cur.acked, "clock": clock.t, "sets": clock.sets, "events": events,
                                  "at": nt[0], "error": nt[1], "due_in_s": ticks.diff(nt[2], ticks.ms()) // 1000,
                                  "pause": nt[3]}))

asyncio.run(main())
"""


def _run(tmp_path, modem, epoch, max_step=86400, *due_in_s):
    modem.joined = True  # a session the module already has (joining is test_lora.py's)
    return run_driver(tmp_path, modem, DRIVER, epoch, max_step, *due_in_s)


def test_a_clock_never_set_takes_the_networks_time_on_the_first_uplink_and_asks_again_a_day_later(tmp_path):
    with SimModem() as modem:
        r, out = _run(tmp_path, modem, 946684800)  # 2000-01-01: an ESP32's RTC after a power cut
    now = time.time()
    assert r["acked"] == 3, out
    assert abs(r["clock"] - now) <= 3, f"set to {r['clock']}, the network's (host's) time is {now:.0f}"
    assert r["sets"] == [r["clock"]], "one set"
    assert r["events"] == [[14, r["clock"] - 946684800, "lorawan"]], "a TIME_SET event with the step"
    assert (r["error"], abs(r["at"] - r["clock"]) <= 3) == (None, True)
    assert modem.time_requests == 1, "one request, on the first uplink; the next is due in a day"
    assert 86300 <= r["due_in_s"] <= 86400 and r["pause"] == 600
    assert [c for c in modem.commands if "TIMEREQ" in c or "LTIME" in c] == ["AT+TIMEREQ=1", "AT+LTIME=?"]
    assert len(modem.uplinks) == 3, "no uplink of its own: the request rode on a record's"


def test_a_network_that_does_not_answer_leaves_the_clock_and_the_records_alone_and_is_asked_again_later(tmp_path):
    with SimModem() as modem:
        modem.network_time = None
        r, out = _run(tmp_path, modem, 1700000000)
    assert r["acked"] == 3, "every record delivered all the same"
    assert (r["clock"], r["sets"], r["events"], r["at"]) == (1700000000, [], [], None)
    assert r["error"] == "the network did not answer DeviceTimeReq", out
    assert "lorawan: the network did not answer DeviceTimeReq" in out
    assert 590 <= r["due_in_s"] <= 600 and r["pause"] == 1200, "again in 10 min, then 20"
    assert modem.time_requests == 1


def test_a_network_time_over_the_step_limit_is_refused_naming_it(tmp_path):
    with SimModem() as modem:
        modem.network_time = lambda: time.time() + 2 * 86400  # a network server two days ahead
        set_at = int(time.time())
        r, _ = _run(tmp_path, modem, set_at, 86400)
    assert (r["clock"], r["sets"], r["events"]) == (set_at, [], []), "a set clock is not stepped two days"
    assert r["error"].startswith("a step of +17") and r["error"].endswith("s is over the 86400-s limit"), r
    assert r["acked"] == 3


def test_a_request_is_due_at_its_deadline_even_when_the_ticks_went_past_it_and_wrapped(tmp_path):
    # The deadline is in ticks (ms, 30 bits): a node without an uplink for 7 days finds it
    # "in the future" by the difference alone (it wrapped at 6.2 days); a deadline is never
    # more than time_s ahead, so such a difference is one gone past
    for due_in_s, asked in ((3600, 0), (-60, 1), (-7 * 86400, 1)):
        d = tmp_path / f"due{due_in_s}"  # a record log and cursor of its own
        d.mkdir()
        with SimModem() as modem:
            r, out = _run(d, modem, 1700000000, 86400, due_in_s)
        assert (r["acked"], modem.time_requests) == (3, asked), (due_in_s, r, out)


def test_a_modem_whose_clock_was_never_set_is_no_time(tmp_path):
    # The module's own clock before any DeviceTimeAns reads 1970 (the network answered nothing
    # since its power-up): TIMEREQ_OK then an LTIME from a module that rebooted in between is
    # the case; here the network's answer itself is 1970.
    with SimModem() as modem:
        modem.network_time = lambda: 0.0
        r, _ = _run(tmp_path, modem, 946684800)
    assert (r["clock"], r["sets"]) == (946684800, [])
    assert r["error"] == "no time: 0 is not in 2020..2099", r


LTIME = r"""
import sys
from meternode.link import nettime
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    try:
        print(nettime.ltime(line))
    except ValueError as e:
        print("ValueError: %s" % e)
"""


def test_the_modems_time_text_reads_as_cpythons_calendar_does(tmp_path):
    # RUI3 prints its clock as "%02dh%02dm%02ds on %02d/%02d/%04d" (hour, minute, second, month,
    # day, year: service_lora_get_local_time); 3000 instants from 1970 to 2099, leap days and
    # the turns of years among them, read on MicroPython and by calendar.timegm.
    rng = random.Random(7)
    instants = [rng.randrange(0, 4102444800) for _ in range(3000)]
    edges = ((2, 28, 23), (2, 29, 0), (3, 1, 0), (12, 31, 23), (1, 1, 0))
    for y in (1970, 2000, 2024, 2099):
        instants += [calendar.timegm((y, m, d, h, 59, 59)) for m, d, h in edges if (m, d) != (2, 29) or y % 4 == 0]
    texts = [time.strftime("%Hh%Mm%Ss on %m/%d/%Y", time.gmtime(t)) for t in instants]
    bad = ["", "15h08m55s", "15h08m55s at 08/17/2026", "15:08:55 on 08/17/2026", "15h08m55s on 2026-08-17"]
    bad += ["25h08m55s on 08/17/2026", "15h08m55s on 13/17/2026", "15h08m55s on 08/17/1969", "15h08m55s on 1/2/3"]
    # a firmware that prints its own prefix (seen in the field: "+LTIME: 04h36m00s on 11/27/2023")
    texts.append("+LTIME: 04h36m00s on 11/27/2023")
    instants.append(calendar.timegm((2023, 11, 27, 4, 36, 0)))
    (tmp_path / "in.txt").write_text("\n".join(texts + bad) + "\n")
    (tmp_path / "lt.py").write_text(LTIME)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    p = subprocess.run(unixport.command(tmp_path / "lt.py", str(tmp_path / "in.txt")), capture_output=True,
                       text=True, timeout=60, env=env)  # fmt: skip
    got = p.stdout.splitlines()
    assert len(got) == len(texts) + len(bad), p.stdout[-2000:] + p.stderr
    assert [int(g) for g in got[: len(texts)]] == instants
    for text, g in zip(bad, got[len(texts) :], strict=True):
        assert g.startswith("ValueError: the modem's time ") and repr(text) in g, (text, g)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (60, "config.lora.time_s must be 0 (never) or 3600..518400, not 60 (a downlink each)"),
        (86400 * 7, "config.lora.time_s"),
    ],
)
def test_a_request_interval_that_would_flood_the_downlink_or_outrun_the_ticks_is_refused(value, why):
    from meternode import ConfigError
    from meternode.link import loraservice

    lora = {"deveui": "0" * 16, "appeui": "0" * 16, "appkey": "0" * 32, "time_s": value}
    with pytest.raises(ConfigError, match=why.replace("(", r"\(").replace(")", r"\)")):
        loraservice.check({"lora": lora})
    lora["time_s"] = 0
    assert loraservice.check({"lora": lora})["time_s"] == 0
