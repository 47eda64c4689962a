# The node keeps Wi-Fi up on boards: config.wifi is validated, the board's WLAN gets a
# supervisor, and a sim node without Wi-Fi has none (it uses the host's network).
import json
import sys

from mptest import eq, heap, raises

_BOARD = __file__.rsplit("/", 3)[0] + "/boards/sim.json"


class _WLAN:
    def __init__(self, iface):
        self.iface = iface
        self.connects = []
        self.on = False

    def active(self, on=None):
        if on is not None:
            self.on = on
        return self.on

    def connect(self, ssid, password):
        self.connects.append((ssid, password))

    def isconnected(self):
        return len(self.connects) >= 2  # the second attempt succeeds

    def disconnect(self):
        pass

    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")


class _network:
    STA_IF = 0
    WLAN = _WLAN


def _node(wifi, board_wifi=True):
    from meternode.node import Node

    with open(_BOARD) as f:
        b = json.load(f)
    if board_wifi:
        b["wifi"] = True  # a board with a radio (the virtual board's network stand-in)
    c = {"node_id": "n1", "checkpoint": {"dir": ""}, "sim": {}}
    if wifi is not None:
        c["wifi"] = wifi
    return Node(b, c)


@heap("256k")  # a whole node from source, as the sim board runs it
def test_a_board_with_wifi_gets_a_supervisor_that_connects_and_reports():
    sys.modules["network"] = _network
    try:
        from meternode.tasks import wifi

        n = _node({"ssid": "meters", "password": "pw"})
        w = wifi(n)
        eq(w.ssid, "meters", "ssid")
        eq(w.wlan.iface, _network.STA_IF, "station interface")
        seen = []
        w.on_event = lambda kind, detail: seen.append((kind, detail))
        w.connect_timeout_ms = 50
        w.backoff.min_ms = 1

        import asyncio

        async def go():
            t = asyncio.create_task(w.run())
            for _ in range(100):
                await asyncio.sleep_ms(20)
                if w.up:
                    break
            t.cancel()

        asyncio.run(go())
        eq(w.up, True, "link up")
        eq(seen[0][0], "fail", "first attempt failed")
        eq(("up", "10.0.0.7") in seen, True, "up event with the address")
    finally:
        del sys.modules["network"]


@heap("256k")
def test_no_wifi_config_or_no_radio_means_no_supervisor():
    sys.modules["network"] = _network
    try:
        from meternode.tasks import wifi

        eq(wifi(_node(None)), None, "no config.wifi")
        eq(wifi(_node({"ssid": "x"}, board_wifi=False)), None, "sim board without a radio")
    finally:
        del sys.modules["network"]


def test_bad_wifi_config_names_the_key():
    from meternode.checks import check_config
    from meternode.config import ConfigError

    e = raises(ConfigError, check_config, {"node_id": "n", "wifi": {"ssid": ""}})
    eq(str(e), "config.wifi.ssid is empty", "message")
    e = raises(ConfigError, check_config, {"node_id": "n", "wifi": {"password": "x"}})
    eq(str(e), "config.wifi.ssid is missing", "message")
    # the clock's server (link/wifi.py clock_sync)
    e = raises(ConfigError, check_config, {"node_id": "n", "ntp": "pool.ntp.org"})
    eq(str(e), "config.ntp must be an object (host, port, interval_s) or false, not 'pool.ntp.org'", "message")
    e = raises(ConfigError, check_config, {"node_id": "n", "ntp": {"interval_s": 10}})
    eq(str(e), "config.ntp.interval_s = 10 is below 60", "message")
    eq(check_config({"node_id": "n", "ntp": False})["ntp"], False, "none")
