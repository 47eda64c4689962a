"""The RUI3 AT driver (firmware/meternode/link/lorawan.py) on the unix port against the
simulated RAK3172 (umeter_hil.lorasim) over a pty: what RUI3 really does -- AT+NWM answers
"OK" without CR/LF and reboots, every set is an NVM write, Restricted_Wait before
AT_BUSY_ERROR, JOINED after the driver stopped waiting, a module power-cycled under a
running reader, noise on the line."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from umeter import unixport
from umeter_hil.lorasim import SimModem

KEYS = ("70B3D57ED0000001", "0000000000000000", "00112233445566778899AABBCCDDEEFF")

DRIVER = r"""
import asyncio, json, sys, time
from meternode.link.lorawan import LoRaModem, ModemError

port, scenario = sys.argv[1], sys.argv[2]
f = open(port, "r+b")
try:
    m = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}), timeout_ms=1500, boot_ms=4000)
except TypeError:  # a driver without boot_ms
    m = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}), timeout_ms=1500)
out = {}

def mark(name):
    print("MARK " + name)

async def step(name, coro):
    try:
        out[name] = await coro
    except ModemError as e:
        out[name] = "ModemError: %s" % e

async def main():
    m.start()
    keys = %KEYS%
    if scenario == "configure":
        await step("first", m.configure(*keys))
        out["sets_first"] = m.sets
        await step("second", m.configure(*keys))
        out["sets_second"] = m.sets - out["sets_first"]
    elif scenario == "noise":
        await step("configure", m.configure(*keys))
        mark("noise")
        await asyncio.sleep_ms(400)  # the host writes noise now
        await step("join", m.join(2, 3000))
        await step("send", m.send(2, b"\x01\x02", confirmed=True))
    elif scenario == "restricted":
        await step("join", m.join(2, 3000))
        mark("restrict")
        await asyncio.sleep_ms(200)
        t0 = time.ticks_ms()
        await step("send", m.send(2, b"\x01", confirmed=False))
        out["waited_ms"] = time.ticks_diff(time.ticks_ms(), t0)
    elif scenario == "late_join":
        await step("join", m.join(3, 400, 900))
    elif scenario == "power_cycle":
        await step("join", m.join(2, 3000))
        await step("send1", m.send(2, b"\x01", confirmed=True))
        mark("cycle")
        await asyncio.sleep_ms(1200)  # the module reboots under the running reader
        out["joined_after"] = m.joined
        await step("join2", m.join(2, 3000))
        await step("send2", m.send(2, b"\x02", confirmed=True))
    elif scenario == "cfm":
        await step("join", m.join(2, 3000))
        for k in range(3):
            await step("c" + str(k), m.send(2, bytes([k]), confirmed=True))
        await step("u", m.send(2, b"\x09", confirmed=False))
    for k in ("noise", "errors", "reboots", "busy", "joined", "restarts"):
        out[k] = getattr(m, k, None)
    out["reader_alive"] = not m.task.done()
    print("RESULT " + json.dumps(out))

asyncio.run(main())
""".replace("%KEYS%", repr(list(KEYS)))


def _run(tmp_path, modem, scenario, on_mark=None, timeout=40):
    (tmp_path / "drv.py").write_text(DRIVER)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    p = subprocess.Popen(
        unixport.command(tmp_path / "drv.py", modem.port, scenario, heap="256k"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines = []
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        for ln in p.stdout:
            lines.append(ln)
            if ln.startswith("MARK ") and on_mark is not None:
                on_mark(ln[5:].strip())
    finally:
        timer.cancel()
        p.wait()
    res = [ln for ln in lines if ln.startswith("RESULT ")]
    assert res, "".join(lines)
    return json.loads(res[-1][7:])


def test_configure_twice_writes_each_setting_once_and_reboots_the_module_once(tmp_path):
    with SimModem(boot_s=0.3) as modem:
        modem.settings["NWM"] = "0"  # a module in LoRa P2P mode, as some ship
        r = _run(tmp_path, modem, "configure")
        assert r["first"] is None and r["second"] is None, r
        assert modem.reboots == 1, "AT+NWM once: RUI3 reboots on every NWM set"
        assert modem.settings["NWM"] == "1" and modem.settings["BAND"] == "4"
        assert (modem.settings["DEVEUI"], modem.settings["APPEUI"], modem.settings["APPKEY"]) == KEYS
        assert (modem.settings["ADR"], modem.settings["DR"], modem.settings["CLASS"]) == ("0", "0", "A")
        assert r["sets_second"] == 0, "the second configure writes nothing"
        writes = modem.nvm_writes
        assert writes == r["sets_first"] == 4, "NWM, DEVEUI, APPKEY, ADR differ from the module's values"
        assert not [c for c in modem.commands if c.startswith("AT+NWM=") and c != "AT+NWM=?"][1:], "one NWM set"


def test_noise_bytes_on_the_line_do_not_end_the_reader(tmp_path):
    with SimModem() as modem:

        def noise(name):
            modem.noise(b"\xff\r\n")
            modem.noise(b"\x00\x80\xfe+EVT:\xc3(\r\n" + b"x" * 900 + b"\r\n")

        r = _run(tmp_path, modem, "noise", noise)
        assert r["join"] is True and r["send"] is True, r
        assert r["noise"] >= 5 and r["reader_alive"], r


def test_a_duty_cycle_restriction_is_waited_out_not_hammered(tmp_path):
    with SimModem() as modem:
        r = _run(tmp_path, modem, "restricted", lambda name: modem.restrict(3500))
        assert r["send"] is True, r
        assert 3000 <= r["waited_ms"] <= 6000, r
        sends = [c for c in modem.commands if c.startswith("AT+SEND=")]
        assert len(sends) == 2, f"one refused, one after the wait the module named: {sends!r}"


def test_a_joined_event_after_the_driver_stopped_waiting_is_not_lost(tmp_path):
    with SimModem(join_delay=0.7) as modem:
        r = _run(tmp_path, modem, "late_join")
        assert r["join"] is True and r["joined"], r
        assert modem.join_cmds == 1, "no second join over a late JOINED"
        assert modem.joins == 1, "the module does not retry on its own (count 0)"


def test_a_module_power_cycled_under_the_running_reader_is_joined_again(tmp_path):
    with SimModem(boot_s=0.3) as modem:
        r = _run(tmp_path, modem, "power_cycle", lambda name: modem.power_cycle())
        assert (r["send1"], r["joined_after"], r["join2"], r["send2"]) == (True, False, True, True), r
        assert r["reboots"] == 1 and r["reader_alive"], r
        assert modem.join_cmds == 2


def test_confirmed_mode_is_written_to_the_module_only_when_it_changes(tmp_path):
    with SimModem() as modem:
        r = _run(tmp_path, modem, "cfm")
        assert [r["c0"], r["c1"], r["c2"], r["u"]] == [True, True, True, True], r
        cfm = [c for c in modem.commands if c.startswith("AT+CFM=") and c != "AT+CFM=?"]
        assert cfm == ["AT+CFM=1", "AT+CFM=0"], cfm
        assert [u[2] for u in modem.uplinks] == [True, True, True, False]


def test_simulated_module_reboots_on_every_nwm_set_like_rui3():
    # The simulator's own behaviour, against RUI3's At_NwkWorkMode: "OK" without CR/LF, then
    # a reboot, even when the mode does not change.
    import select

    with SimModem(boot_s=0.1) as modem:
        fd = os.open(modem.port, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"AT+NWM=1\r\n")
            got = b""
            t0 = time.monotonic()
            while b"Current Work Mode" not in got and time.monotonic() - t0 < 3:
                r, _, _ = select.select([fd], [], [], 0.1)
                if r:
                    got += os.read(fd, 256)
        finally:
            os.close(fd)
        assert got.startswith(b"OK") and not got.startswith(b"OK\r\n"), got
        assert b"Current Work Mode: LoRaWAN." in got and modem.reboots == 1
