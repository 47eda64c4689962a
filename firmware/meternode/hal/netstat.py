# Wi-Fi station status codes of this port (network.WLAN.status()), as names, for
# link/wifi.py; only hal/ imports `network`.  The values differ per port: ESP32 returns
# its WIFI_REASON_* (STAT_WRONG_PASSWORD = 202 AUTH_FAIL, STAT_NO_AP_FOUND = 201, ...), the
# Pico W the CYW43 link states (-3 bad auth, -2 no net, -1 fail) -- MicroPython
# ports/esp32/modnetwork_globals.h and extmod/modnetwork.c.
_NAMES = (
    ("STAT_WRONG_PASSWORD", "wrong password"),
    ("STAT_NO_AP_FOUND", "no access point with that SSID"),
    ("STAT_CONNECT_FAIL", "connection refused"),
    ("STAT_HANDSHAKE_TIMEOUT", "handshake timeout"),
    ("STAT_BEACON_TIMEOUT", "beacon timeout"),
    ("STAT_CONNECTING", "connecting"),
    ("STAT_GOT_IP", "connected"),
    ("STAT_IDLE", "idle"),
)
FINAL = ("wrong password", "no access point with that SSID", "connection refused", "handshake timeout")


def status_names():
    # {code: name} for this port; {} where there is no `network` module.
    try:
        import network
    except ImportError:
        return {}
    out = {}
    for attr, name in _NAMES:
        code = getattr(network, attr, None)
        if code is not None and code not in out:
            out[code] = name
    return out


def set_country(network, cc):
    # config.wifi.country (two capitals, ISO 3166) before the radio starts: the Pico W's
    # CYW43 otherwise keeps the worldwide "XX" channel set (extmod/network_cyw43.c).
    if not isinstance(cc, str) or len(cc) != 2 or not cc.isupper():
        from meternode.config import ConfigError

        raise ConfigError("config.wifi.country must be two capitals (ISO 3166, e.g. DE), not %r" % (cc,))
    if hasattr(network, "country"):
        network.country(cc)
