"""LoRaWAN: the compact codec (shared by firmware and host), the JavaScript codec it emits,
time on air and the duty-cycle governor, and the AT driver on the unix port against the
simulated modem over a pty."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from lorarun import run_driver

from meternode.link import airtime, loracodec, loradecode
from meternode.link.airtime import Governor, time_on_air_us
from meternode.store import records
from umeter import unixport
from umeter.decode import decode_lora, decode_mqtt, event_names, js_decoder
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
    assert (e["event"], e["arg"], len(e["text"])) == ("relay", -3, loradecode.EVENT_TEXT_MAX)
    t = decode_lora(frames["telemetry"])
    assert (t["v_dv"], t["f_chz"], t["p_dw"], t["e_imp_wh"]) == (2301, 5001, -12345, 99)


MONTHLY = records.freeze(10**9, 5, 1234, 56, (4100500, 1706745600))  # a month's maximum demand, 4.1 kW


def test_the_monthly_frame_carries_the_maximum_demand_and_an_older_firmwares_still_decodes():
    f = loracodec.encode_record(records.MONTHLY, 8, 1706745600, MONTHLY)
    d = decode_lora(f)
    assert (len(f), d["kind"], d["e_imp_wh"], d["gas_l"], d["md_w"], d["md_at"]) == (
        33,
        "monthly",
        10**6,
        56,
        4101,
        1706745600,
    )
    old = decode_lora(f[:25])  # a firmware before billing months: no maximum demand
    assert (old["e_imp_wh"], "md_w" in old) == (10**6, False)
    with pytest.raises(ConfigError, match="monthly frame is 29 bytes, expected 33"):
        decode_lora(f[:29])
    # a 24-byte MONTHLY record (stored by older firmware, sent by this one) goes out without one
    assert decode_lora(loracodec.encode_record(records.MONTHLY, 9, 1, records.freeze(1000, 0)))["md_w"] == 0


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
        loracodec.encode_record(records.EVENT, 11, 1, records.event(records.EV_TASK, 3, "lora reader OSError")),
        loracodec.encode_record(records.EVENT, 12, 1, records.event(records.EV_SAFE_MODE, 2, "crash loop")),
        loracodec.encode_telemetry(10, 2, {"v": 230.1, "f": 50.0, "p": 100.0, "e_imp_wh": 5, "e_exp_wh": 0}),
        loracodec.encode_record(records.MONTHLY, 13, 1706745600, MONTHLY),
        loracodec.encode_record(records.MONTHLY, 13, 1706745600, MONTHLY)[:25],  # an older firmware's
    ]
    js = js_decoder() + "\nconst f = JSON.parse(process.argv[2]);\n"
    js += "console.log(JSON.stringify(f.map(h => decodeUplink({bytes: Buffer.from(h, 'hex'), fPort: 2}).data)));\n"
    (tmp_path / "c.js").write_text(js)
    out = subprocess.run(
        ["node", str(tmp_path / "c.js"), json.dumps([f.hex() for f in frames])], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [loradecode.decode(f) for f in frames]
    assert [d.get("event") for d in json.loads(out.stdout)] == [None, "leak", "task", "safe_mode", None, None, None]
    assert [d.get("md_w") for d in json.loads(out.stdout)[-2:]] == [4101, None]


def test_event_codes_are_distinct_and_all_named():
    # Branches add event codes; two taking the same number would silently share a name
    # (the last name wins) and every decoder would misname one of them.
    codes = {k: getattr(records, k) for k in dir(records) if k.startswith("EV_")}
    assert len(set(codes.values())) == len(codes), codes
    assert sorted(codes.values()) == sorted(event_names())
    names = {records.event_name(c) for c in codes.values()}
    assert {"valve", "task", "safe_mode"} <= names
    assert len(names) == len(codes)


# READING frames made on MicroPython by the firmware: meter answers encoded by the codecs,
# decoded into Readings the way the drivers do, packed as READING records and encoded for LoRa.
READING_FRAMES = r"""
import json
from meternode.gateway import cjt188, dlt645, mbus
from meternode.gateway import reading as R
from meternode.gateway.scanner import put_bcd
from meternode.link import loracodec
from meternode.store import records

out = []
def frame(mid, r, seq):
    out.append(loracodec.encode_record(records.READING, seq, 1773500000 + seq, R.pack(mid, r)).hex())

buf = bytearray(300)
# DL/T 645-2007: forward energy block (total + 2 tariffs), then a negative power
sc = dlt645.scanner()
n = dlt645.encode(buf, "000000123456", 0x91, dlt645.block_bytes(0x0001FF00, [12345678, 4000000, 8345678]))
sc.feed(buf, n); sc.next()
r = R.Readings(); dlt645.values(sc.buf, sc.start, r)
sc.reset()
n = dlt645.encode(buf, "000000123456", 0x91, dlt645.value_bytes(0x02030000, -22000))
sc.feed(buf, n); sc.next(); dlt645.values(sc.buf, sc.start, r)
frame("dlt645-000000123456", r, 1)
# CJ/T 188 water meter, valve closed, battery low, with its clock
pay = bytearray(b"\x90\x1f\x01")
for v, unit in ((32109, 0x2C), (32000, 0x2C)):
    b = bytearray(5)
    put_bcd(b, 0, 4, v); b[4] = unit; pay += b
pay += bytes((0x00, 0x30, 0x12, 0x14, 0x03, 0x26, 0x20, 0x05, 0x00))
sc = cjt188.scanner()
n = cjt188.encode(buf, 0x10, "00000000001234", 0x81, pay)
sc.feed(buf, n); sc.next()
r = R.Readings(); cjt188.values(sc.buf, sc.start, r)
frame("cjt188-10-00000000001234", r, 2)
# M-Bus heat meter: energy, volume, power, temperatures, a 12-digit BCD value, the clock
rec = bytearray()
mbus.record(rec, 4321, 0x06); mbus.record(rec, 123456, 0x13); mbus.record(rec, 3200, 0x2B, 6)
mbus.record(rec, 652, 0x5A, 4); mbus.record(rec, 401, 0x5E, 4); mbus.record(rec, 999999999999, 0x13, 12, 1)
mbus.time_f(rec, 2026, 3, 14, 12, 30)
n = mbus.rsp_ud(buf, 5, "12345678", mbus.manufacturer_code("UMT"), 1, 0x04, 7, 0, rec)
s = mbus.MBusScanner(); s.feed(buf, n); s.next()
r = R.Readings(); mbus.values(s.buf, s.start, r)
frame("mbus-12345678", r, 3)
# values a JavaScript Number cannot hold (int64 M-Bus records), one each sign
r = R.Readings(); r.add(R.Q_E_IMP, (1 << 62) + 12345, -3, R.U_KWH); r.add(R.Q_E_EXP, -(1 << 60) - 7, 0, R.U_KWH)
frame("modbus-7", r, 4)
# more values than fit 51 bytes: the rest left out, flagged truncated
r = R.Readings()
for q in range(20):
    r.add(q, 10**9 + q, -2, R.U_KWH)
frame("dlt645v97-000000654321", r, 5)
print("FRAMES " + json.dumps(out))
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node.js to run the generated codec")
def test_generated_javascript_decodes_firmware_reading_frames_like_python(tmp_path):
    script = tmp_path / "frames.py"
    script.write_text(READING_FRAMES)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    out = subprocess.run(unixport.command(script, heap="512k"), capture_output=True, text=True, env=env, timeout=60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FRAMES ")), None)
    assert line is not None, out.stdout + out.stderr
    frames = [bytes.fromhex(h) for h in json.loads(line[7:])]
    js = js_decoder() + "\nconst f = JSON.parse(process.argv[2]);\n"
    js += "console.log(JSON.stringify(f.map(h => decodeUplink({bytes: Buffer.from(h, 'hex'), fPort: 2}))));\n"
    (tmp_path / "c.js").write_text(js)
    out = subprocess.run(
        ["node", str(tmp_path / "c.js"), json.dumps([f.hex() for f in frames])], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = [loradecode.decode(f) for f in frames]
    assert all("data" in g for g in got), got
    big = got[3]["data"]["readings"]
    # beyond 2**53 the JavaScript value is exact as text ("v" too, as a string)
    assert [x["v"] for x in big] == [str(x["v"]) for x in want[3]["readings"]]
    for x in big:
        x["v"] = int(x["v"])
    assert [g["data"] for g in got] == want
    assert [x["value"] for x in want[0]["readings"]] == ["123456.78", "40000.00", "83456.78", "-2.2000"]
    assert not want[0]["status"]
    assert want[1]["status"] == ["valve_closed", "battery_low"] and want[1]["meter_ts"]
    assert "truncated" in want[4]["status"] and len(frames[4]) <= 51
    assert want[3]["readings"][0]["value"] == "4611686018427400.249"
    # a cut or padded READING frame is an error in both decoders, saying the same
    for bad in (frames[1][:-2], frames[1] + b"\x00"):
        with pytest.raises(ConfigError) as e:
            decode_lora(bad)
        js_err = subprocess.run(
            ["node", str(tmp_path / "c.js"), json.dumps([bad.hex()])], capture_output=True, text=True
        )
        assert json.loads(js_err.stdout)[0] == {"errors": [e.value.message.split(": ", 1)[1]]}


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
    assert airtime.RATES[0][2] == 51


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
from lorarig import RTC, rig
from meternode.link.airtime import Governor
from meternode.link.loralink import LoRaLink
from meternode.link.lorawan import ModemError

m, log, cur = rig(sys.argv[1], sys.argv[2], 5)
gov = Governor("CN470", dr=5, daily_budget_ms=10**9)  # DR5: ~80 ms on air per frame
link = LoRaLink(m, log, cur, gov, RTC(1700000000), port=2, retry_ms=50)
out = {}

async def main():
    m.start()
    try:
        await m.cmd("AT+APPKEY=123")
    except ModemError as e:
        out["bad_key"] = str(e)
    await m.configure("70B3D57ED0000001", "0000000000000000", "00112233445566778899AABBCCDDEEFF", "EU868", 0)
    t = asyncio.create_task(link.run())
    for _ in range(2000):
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
        r, _ = run_driver(tmp_path, modem, DRIVER)
        assert r["bad_key"] == "modem refused AT+APPKEY: AT_PARAM_ERROR"
        assert r["acked"] == 5 and r["nacks"] == 1 and r["busy"] == 2, json.dumps(r)
        assert modem.joins == 3, "two failed joins, then joined"
        seqs = [loradecode.decode(data)["seq"] for port, data, confirmed in modem.uplinks]
        assert seqs == [1, 2, 3, 4, 5], "each record acknowledged once, in order"
        assert all(confirmed and port == 2 for port, data, confirmed in modem.uplinks)
        assert r["downlinks"] == [[3, "0102"]], "downlink after an uplink"
        assert (modem.settings["BAND"], modem.settings["DR"]) == ("4", "0"), "configured (read first, set if different)"
