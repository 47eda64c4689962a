# Wi-Fi supervision with a stand-in WLAN interface, on the unix port.
import asyncio
import time

from meternode.link.wifi import WifiSupervisor
from mptest import eq, host_value, needs, raises


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


class _Clock:
    def __init__(self, t):
        self.t = t

    def time(self):
        return self.t

    def set_time(self, t):
        self.t = t


class _Uplink:
    def __init__(self):
        self.events = []

    def event(self, code, arg, text):
        self.events.append((code, arg, text))


class _Node:
    # what clock_sync reads of a node: its config, its HAL's clock and its uplink service
    def __init__(self, ntp):
        self.config = {"wifi": {"ssid": "home"}, "ntp": ntp}
        self.hal = type("H", (), {})()
        self.hal.clock = _Clock(946684800)  # an RTC after a power cut
        self.uplink_service = _Uplink()


@needs("host:ntp")
async def test_once_wifi_is_up_the_clock_comes_from_ntp_and_a_silent_server_is_tried_again():
    from meternode.link.wifi import supervise
    from meternode.store import records

    ports = {k: int(v) for k, v in (x.split(":") for x in host_value("ntp_ports").split(","))}
    n = _Node({"host": "127.0.0.1", "port": ports["good"], "interval_s": 60})
    s = supervise(n, FakeWlan())
    s.check_ms = 20
    t = asyncio.create_task(s.run())
    eq(await _until(lambda: n.hal.clock.t > 1700000000, 3000), True, "the clock set once Wi-Fi is up")
    eq(abs(n.hal.clock.t - int(time.time())) <= 2, True, "to the server's time")
    ev = [e for e in n.uplink_service.events if e[0] == records.EV_TIME_SET]
    eq((len(ev), ev[0][2]), (1, "ntp 127.0.0.1"), "one TIME_SET event: %r" % ev)
    eq(ev[0][1] > 700000000, True, "its step")
    eq((abs(n.ntp[0] - n.hal.clock.t) <= 1, n.ntp[1]), (True, None), "status's clock.ntp: %r" % n.ntp)
    t.cancel()
    # a server that never answers: logged, and not asked again before its 60-s retry
    import meternode.node as mn

    logs = []
    log, mn.log = mn.log, logs.append
    try:
        n = _Node({"host": "127.0.0.1", "port": ports["silent"]})
        s = supervise(n, FakeWlan())
        s.check_ms = 20
        t = asyncio.create_task(s.run())
        await _until(lambda: False, 4500)
        t.cancel()
    finally:
        mn.log = log
    eq((n.hal.clock.t, s.ups), (946684800, 1), "the clock untouched, Wi-Fi up")
    want = "ntp 127.0.0.1: no answer from 127.0.0.1:%d in 3000 ms" % ports["silent"]
    eq([x for x in logs if x.startswith("ntp")], [want], "one attempt in 4.5 s: %r" % logs)
    eq(n.ntp[:2], [None, want[len("ntp 127.0.0.1: ") :]], "status's clock.ntp")
    eq(supervise(_Node(False), FakeWlan()).when_up, None, "ntp false: no sync")


@needs("host:ntp")
async def test_a_sync_whose_deadline_the_ticks_went_past_and_wrapped_is_due():
    # The next sync's deadline is in ticks (ms, 30 bits): Wi-Fi down for 7 days finds it "ahead"
    # by the difference alone (it wrapped at 6.2 days); a deadline is never more than interval_s
    # ahead, so such a difference is one gone past (link/wifi.py, as loralink.py's)
    from meternode import ticks
    from meternode.link.wifi import supervise

    ports = {k: int(v) for k, v in (x.split(":") for x in host_value("ntp_ports").split(","))}
    n = _Node({"host": "127.0.0.1", "port": ports["good"], "interval_s": 3600})
    s = supervise(n, FakeWlan())
    n.ntp[2] = ticks.add(ticks.ms(), 600 * 1000)  # due in 10 min
    await s.when_up()
    eq(n.hal.clock.t, 946684800, "not due: not asked")
    # due a week ago (in two adds: a board's ticks_add takes at most half the period, 6.2 days)
    n.ntp[2] = ticks.add(ticks.add(ticks.ms(), -4 * 86400 * 1000), -3 * 86400 * 1000)
    await s.when_up()
    eq(abs(n.hal.clock.t - int(time.time())) <= 2, True, "due: the clock set (%d)" % n.hal.clock.t)
    eq(ticks.diff(n.ntp[2], ticks.ms()) // 1000 in (3599, 3600), True, "the next in an hour")
