# Wi-Fi supervision with a stand-in WLAN interface, on the unix port.
import asyncio

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
