# `network` stand-in for a virtual board: a WLAN interface that "connects" at once and reports
# the host's loopback address, so firmware that waits for Wi-Fi runs unmodified.  The unix port
# uses the host's network stack for sockets, which is what the node really talks through.
import vbstate

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_CONNECT_FAIL = -1
STAT_GOT_IP = 1010


def hostname(name=None):
    return "umeter-" + "".join("%02x" % b for b in vbstate.UID[-3:]) if name is None else None


class WLAN:
    def __init__(self, interface=STA_IF):
        self._if = interface
        self._active = False
        self._ssid = None
        self._status = STAT_IDLE

    def active(self, on=None):
        if on is None:
            return self._active
        self._active = bool(on)
        if not on:
            self._status = STAT_IDLE

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError("WLAN not active")
        self._ssid = ssid
        self._status = STAT_GOT_IP

    def disconnect(self):
        self._status = STAT_IDLE

    def isconnected(self):
        return self._active and self._status == STAT_GOT_IP

    def status(self, param=None):
        if param == "rssi":
            return -50
        return self._status

    def ifconfig(self, cfg=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def ipconfig(self, key=None):
        return "127.0.0.1" if key == "addr4" else None

    def config(self, key=None, **kw):
        if key == "mac":
            return vbstate.UID
        if key == "ssid" or key == "essid":
            return self._ssid
        if key is None:
            return None
        raise ValueError("unknown config param")

    def scan(self):
        return []
