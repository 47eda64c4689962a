# Wi-Fi supervision with a stand-in WLAN interface, on the unix port.
import asyncio
import time

from meternode.link.wifi import WifiSupervisor
from mptest import eq, raises


class FakeWlan:
    def __init__(self):
        self.on = False
        self.connected = False
        self.fail_next = 0  # connects that never come up
        self.stuck = False  # never connects until the interface is power-cycled
        self.calls = []

    def active(self, on):
        self.calls.append("active %d" % on)
        if not on:
            self.stuck = False
        self.on = on

    def connect(self, ssid, pw):
        self.calls.append("connect " + ssid)
        if self.fail_next:
            self.fail_next -= 1
            return
        if not self.stuck:
            self.connected = True

    def disconnect(self):
        self.connected = False

    def isconnected(self):
        return self.connected

    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")


async def _until(cond, ms):
    while ms > 0 and not cond():
        await asyncio.sleep_ms(10)
        ms -= 10
    return cond()


async def test_link_up_down_events_and_power_cycle_when_stuck():
    w = FakeWlan()
    ev = []
    s = WifiSupervisor(
        w,
        "home",
        "pw",
        lambda k, d: ev.append((k, d)),
        check_ms=20,
        connect_timeout_ms=60,
        backoff_min_ms=10,
        backoff_max_ms=40,
        reset_after=3,
    )
    w.fail_next = 1
    t = asyncio.create_task(s.run())
    eq(await _until(lambda: s.up, 2000), True, "up after one failed attempt")
    eq(ev[:2], [("fail", "no connection within 60 ms"), ("up", "10.0.0.7")], "events")
    w.connected = False  # the access point goes away, and the radio gets stuck
    w.stuck = True
    eq(await _until(lambda: s.ups == 2, 3000), True, "back up")
    kinds = [k for k, d in ev]
    eq(kinds.count("down"), 1, "one down event")
    eq(kinds.count("reset"), 1, "interface power-cycled after 3 failures")
    eq("active 0" in w.calls, True, "switched off")
    eq((s.ups, s.downs, s.resets), (2, 1, 1), "counters")
    t.cancel()


def test_empty_ssid_is_a_config_error():
    e = raises(ValueError, WifiSupervisor, FakeWlan(), "", "pw")
    eq(str(e), "config.wifi.ssid is empty", "message")


class StatusWlan(FakeWlan):
    # status() as the ESP32 reports it (ports/esp32/network_wlan.c): the last disconnect
    # reason stays until the next attempt ends 50 ms after connect(); config(reconnects=).
    BAD_AUTH = 202
    CONNECTING = 1001
    IDLE = 1000

    def __init__(self):
        super().__init__()
        self.code = self.IDLE
        self.auth_ok = False
        self.config_calls = []
        self.t_connect = None
        self.last_connect = 0

    def config(self, **kw):
        self.config_calls.append(kw)

    def connect(self, ssid, pw):
        self.calls.append("connect " + ssid)
        self.t_connect = self.last_connect = time.ticks_ms()

    def _settle(self):
        if self.t_connect is not None and time.ticks_diff(time.ticks_ms(), self.t_connect) >= 50:
            self.t_connect = None
            self.connected = self.auth_ok
            self.code = 1010 if self.auth_ok else self.BAD_AUTH

    def isconnected(self):
        self._settle()
        return self.connected

    def status(self):
        self._settle()
        return self.code


async def test_a_wrong_password_is_named_at_once_and_never_power_cycles_the_radio():
    w = StatusWlan()
    ev = []
    names = {StatusWlan.BAD_AUTH: "wrong password", StatusWlan.CONNECTING: "connecting", StatusWlan.IDLE: "idle"}
    early = []  # a fail reported before the attempt could have ended: the previous one's status

    def on_event(k, d):
        ev.append((k, d))
        if k == "fail" and time.ticks_diff(time.ticks_ms(), w.last_connect) < 45:
            early.append(d)

    s = WifiSupervisor(
        w, "home", "bad", on_event, check_ms=20, connect_timeout_ms=5000,
        backoff_min_ms=10, backoff_max_ms=60, reset_after=2, status_names=names, status_grace_ms=150,
    )  # fmt: skip
    t = asyncio.create_task(s.run())
    eq(await _until(lambda: s.failures >= 4, 3000), True, "four attempts well inside one connect timeout")
    eq(set(d for k, d in ev if k == "fail"), {"wrong password"}, "the reason by name, not a timeout")
    eq([k for k, d in ev].count("reset"), 0, "no power cycle: a password does not unstick")
    eq(w.config_calls, [{"reconnects": 0}], "the driver's own reconnects turned off, once")
    before = len(ev)
    w.auth_ok = True  # the stale "wrong password" from the last attempt must not end the next one
    eq(await _until(lambda: s.up, 2000), True, "up once the password is right")
    late = [d for k, d in ev[before:] if k == "fail"]
    eq(len(late) <= 1, True, "at most the attempt already under way fails: %r" % late)
    eq(early, [], "no attempt ended on the previous attempt's status")
    t.cancel()


async def test_no_connect_while_the_driver_is_still_connecting():
    w = StatusWlan()
    w.code = StatusWlan.CONNECTING  # the driver is mid-attempt (an ESP32 reconnect)
    w.auth_ok = True
    names = {StatusWlan.BAD_AUTH: "wrong password", StatusWlan.CONNECTING: "connecting"}
    s = WifiSupervisor(w, "home", "pw", None, check_ms=20, connect_timeout_ms=200, backoff_min_ms=10,
                       backoff_max_ms=40, status_names=names, status_grace_ms=30)  # fmt: skip
    t = asyncio.create_task(s.run())
    await asyncio.sleep_ms(100)
    eq([c for c in w.calls if c.startswith("connect")], [], "connect() left to the driver's attempt")
    w.connected = True
    eq(await _until(lambda: s.up, 1000), True, "up")
    t.cancel()
