"""LoRaWAN: the compact codec (shared by firmware and host), the JavaScript codec it emits,
time on air and the duty-cycle governor, and the AT driver on the unix port against the
simulated modem over a pty."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from meternode.link import airtime, loracodec
from meternode.link.airtime import Governor, time_on_air_us
from meternode.store import records
from umeter import unixport
from umeter.decode import decode_lora, decode_mqtt, js_decoder
from umeter.errors import ConfigError
from umeter_hil.lorasim import SimModem

PROFILE = records.profile(900, 123456789, 5500, (2300, 2290, 2310), (1500, 10, 3000), (3450, -20, 6900))


def test_every_record_kind_fits_51_bytes_and_round_trips():
    frames = {
        "profile": loracodec.encode_record(records.PROFILE, 7, 1700000000, PROFILE),
        "daily": loracodec.encode_record(records.DAILY, 8, 1700000900, records.freeze(10**9, 5, 1234, 56)),
        "event": loracodec.encode_record(records.EVENT, 9, 1, records.event(records.EV_RELAY, -3, "x" * 40)),
        "telemetry": loracodec.encode_telemetry(10, 2, {"v": 230.12, "f": 50.01, "p": -1234.5, "e_imp_wh": 99.9}),
    }
    for name, f in frames.items():
        assert len(f) <= 51, name
        assert decode_lora(f)["kind"] == name
    p = decode_lora(frames["profile"].hex())
    assert (p["seq"], p["ts"], p["period_min"], p["e_imp_wh"], p["i_max_cA"], p["p_min_dw"]) == (
        7,
        1700000000,
        15,
        123456,
        300,
        -20,
    )
    assert decode_lora(frames["daily"])["e_imp_wh"] == 10**6
    e = decode_lora(frames["event"])
    assert (e["event"], e["arg"], len(e["text"])) == ("relay", -3, loracodec.EVENT_TEXT_MAX)
    t = decode_lora(frames["telemetry"])
    assert (t["v_dv"], t["f_chz"], t["p_dw"], t["e_imp_wh"]) == (2301, 5001, -12345, 99)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("2101", "shorter than the 9-byte header"),
        ("41" + "00" * 8, "frame version 2"),
        ("3f" + "00" * 8, "unknown frame kind 31"),
        ("21" + "00" * 9, "profile frame is 10 bytes, expected 42"),
        ("zz", "not hex"),
    ],
)
def test_bad_frames_say_what_is_wrong(frame, why):
    with pytest.raises(ConfigError, match=why):
        decode_lora(frame)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js to run the generated codec")
def test_generated_javascript_decodes_like_python(tmp_path):
    frames = [
        loracodec.encode_record(records.PROFILE, 7, 1700000000, PROFILE),
        loracodec.encode_record(records.EVENT, 9, 1, records.event(records.EV_LEAK, 2, "basement")),
        loracodec.encode_telemetry(10, 2, {"v": 230.1, "f": 50.0, "p": 100.0, "e_imp_wh": 5, "e_exp_wh": 0}),
    ]
    js = js_decoder() + "\nconst f = JSON.parse(process.argv[2]);\n"
    js += "console.log(JSON.stringify(f.map(h => decodeUplink({bytes: Buffer.from(h, 'hex'), fPort: 2}).data)));\n"
    (tmp_path / "c.js").write_text(js)
    out = subprocess.run(
        ["node", str(tmp_path / "c.js"), json.dumps([f.hex() for f in frames])], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [loracodec.decode(f) for f in frames]


def test_time_on_air_matches_the_reference_table():
    # protocols.md §11.5: 20 B at DR0/DR3/DR5 and 51 B at DR0 (13 B MAC overhead, CR 4/5)
    for payload, sf, ms in ((20, 12, 1810), (20, 9, 247), (20, 7, 72), (51, 12, 2794)):
        assert abs(time_on_air_us(payload, sf) / 1000 - ms) < 1, (payload, sf)


def test_eu868_duty_cycle_and_daily_budget_hold_uplinks_back():
    g = Governor("EU868", dr=0, daily_budget_ms=30000)
    day = 1_700_006_400  # a UTC midnight
    assert g.wait_ms(20, 0, day) == 0
    toa = g.sent_now(20, 0)
    assert toa == 1811
    assert g.wait_ms(20, 1000, day) == toa * 100 - 1000, "1 % duty: the band rests 99x the airtime"
    t = 0
    sent = 1
    while True:
        t += toa * 100
        w = g.wait_ms(20, t, day + t // 1000)
        if w < 0:
            break
        assert w == 0
        g.sent_now(20, t)
        sent += 1
    assert sent == 16, "TTN fair use: about 16 DR0 uplinks of 20 B per day"
    assert g.wait_ms(20, t, day + 86400) == 0, "a new UTC day resets the budget"
    with pytest.raises(ValueError, match="over DR0's 51"):
        g.wait_ms(60, t, day)
    with pytest.raises(ValueError, match=r"lora\.region"):
        Governor("US915")
    assert Governor("CN470", dr=5).duty_x == 1
    assert airtime.MAX_PAYLOAD[0] == 51


def test_mqtt_payload_decoder():
    d = decode_mqtt("umeter/n1/profile", b'{"seq": 3, "kind": "profile"}')
    assert (d["node"], d["leaf"], d["seq"]) == ("n1", "profile", 3)
    assert decode_mqtt("umeter/n1/state", b"online")["state"] == "online"
    with pytest.raises(ConfigError, match="not JSON"):
        decode_mqtt("umeter/n1/event", b"{")
    with pytest.raises(ConfigError, match="not <prefix>/<node>/<leaf>"):
        decode_mqtt("umeter", b"{}")


DRIVER = r"""
import asyncio, json, sys
from meternode.link.airtime import Governor
from meternode.link.loralink import LoRaLink
from meternode.link.lorawan import LoRaModem, ModemError
from meternode.store import records
from meternode.store.cursor import Cursor
from meternode.store.log import RecordLog

port, d = sys.argv[1], sys.argv[2]

class Clock:
    def time(self):
        return 1700000000

f = open(port, "r+b")
m = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}), timeout_ms=2000)
log = RecordLog(d + "/log", 4096, 65536)
for i in range(5):
    log.append(records.PROFILE, 1700000000 + 900 * i,
               records.profile(900, 1000 * i, 0, (2300, 2290, 2310), (1000, 900, 1100), (2300, 2000, 2500)))
cur = Cursor(d + "/lora.cursor")
gov = Governor("CN470", dr=5, daily_budget_ms=10**9)  # DR5: ~80 ms on air per frame
link = LoRaLink(m, log, cur, gov, Clock(), port=2, retry_ms=50)
out = {}

async def main():
    m.start()
    try:
        await m.cmd("AT+APPKEY=123")
    except ModemError as e:
        out["bad_key"] = str(e)
    await m.configure("70B3D57ED0000001", "0000000000000000", "00112233445566778899AABBCCDDEEFF", "EU868", 0)
    t = asyncio.create_task(link.run())
    for _ in range(300):
        if cur.acked == 5 and m.downlinks:
            break
        await asyncio.sleep_ms(20)
    out.update({"acked": cur.acked, "sent": link.sent, "nacks": link.nacks, "busy": m.busy,
                "failures": link.failures, "error": str(link.last_error),
                "downlinks": [[p, b.hex()] for p, b, r, s in m.downlinks]})
    print("RESULT " + json.dumps(out))

asyncio.run(main())
"""


def test_at_driver_joins_retries_and_delivers_each_record_once(tmp_path):
    with SimModem() as modem:
        modem.fail_joins = 2
        modem.busy_sends = 2
        modem.fail_confirms = 1
        modem.queue_downlink(3, b"\x01\x02")
        (tmp_path / "drv.py").write_text(DRIVER)
        env = dict(os.environ, MICROPYPATH=unixport.micropypath())
        p = subprocess.run(
            unixport.command(tmp_path / "drv.py", modem.port, str(tmp_path), heap="256k"),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, p.stdout + p.stderr
        r = json.loads(lines[-1][7:])
        assert r["bad_key"] == "modem refused AT+APPKEY: AT_PARAM_ERROR"
        assert r["acked"] == 5 and r["nacks"] == 1 and r["busy"] == 2, json.dumps(r)
        assert modem.joins == 3, "two failed joins, then joined"
        seqs = [loracodec.decode(data)["seq"] for port, data, confirmed in modem.uplinks]
        assert seqs == [1, 2, 3, 4, 5], "each record acknowledged once, in order"
        assert all(confirmed and port == 2 for port, data, confirmed in modem.uplinks)
        assert r["downlinks"] == [[3, "0102"]], "downlink after an uplink"
        assert (modem.settings["BAND"], modem.settings["DR"]) == ("4", "0"), "configured (read first, set if different)"
