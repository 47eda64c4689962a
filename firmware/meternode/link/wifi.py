# Wi-Fi supervision for boards: keeps a network.WLAN-like interface connected, reports link
# up/down as events, retries with bounded jittered backoff, and power-cycles the interface
# after repeated failures (ESP32 radios can stay stuck after a long outage: mqtt_as #132).
#
# `wlan` needs active(bool), connect(ssid, password), isconnected(), disconnect(), and
# optionally ifconfig(), status() and config(); the board HAL passes
# network.WLAN(network.STA_IF).
#
# One owner of reconnection: the ESP32 driver reconnects on its own after every
# disconnect (ports/esp32/network_wlan.c, wifi_sta_reconnects, "retry forever" by default),
# so a supervisor that also calls connect() fights it.  The supervisor turns that off
# (config(reconnects=0): no driver retries) and reads status() while it waits: a wrong
# password or a missing access point ends the attempt (a reason repeated from the previous
# attempt only after status_grace_ms: the ESP32 keeps it until a new one arrives), is
# reported by name in the
# "fail" event (not as a timeout), backs off to the longest pause (it will not fix itself)
# and never power-cycles the radio; connect() is not called while the driver still says
# it is connecting.

from meternode.hal.netstat import FINAL as _FINAL
from meternode.link.mqtt import Backoff
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms


def _nop():
    pass


class WifiSupervisor:
    def __init__(
        self,
        wlan,
        ssid,
        password,
        on_event=None,
        check_ms=2000,
        connect_timeout_ms=15000,
        backoff_min_ms=1000,
        backoff_max_ms=60000,
        reset_after=3,
        status_names=None,
        status_grace_ms=8000,
    ):
        if not ssid:
            raise ValueError("config.wifi.ssid is empty")
        if status_names is None:
            from meternode.hal.netstat import status_names as _names

            status_names = _names()
        self.names = status_names  # {status code: name} (hal/netstat.py)
        # ESP32: connect() does not clear the last disconnect reason (network_wlan.c), so
        # status() repeats the previous attempt's "wrong password" until this one ends: a
        # final status equal to the one right after connect() counts only after this long
        self.status_grace_ms = status_grace_ms
        self.wlan = wlan
        self.ssid = ssid
        self.password = password
        self.on_event = on_event  # callback(kind: "up"/"down"/"fail"/"reset", detail: str)
        self.check_ms = check_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.backoff = Backoff(backoff_min_ms, backoff_max_ms)
        self.reset_after = reset_after
        self.up = False
        self.ups = 0
        self.downs = 0
        self.failures = 0  # consecutive failed attempts
        self.resets = 0
        self.last_status = None  # the name of the last status() that ended an attempt
        self._own = False  # driver auto-reconnect turned off
        self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
        self.when_up = None  # an async callable that never raises, awaited every check while connected

    def _event(self, kind, detail=""):
        if self.on_event is not None:
            self.on_event(kind, detail)

    def _status(self):
        st = getattr(self.wlan, "status", None)
        if st is None:
            return None
        try:
            return self.names.get(st(), None)
        except Exception:
            return None

    async def _attempt(self):
        w = self.wlan
        if not self._own:
            self._own = True
            try:
                w.config(reconnects=0)  # ESP32: no driver retries behind our back
            except Exception:
                pass  # ports without the option do not reconnect on their own
        if self.failures and self.failures % self.reset_after == 0 and self.last_status not in _FINAL:
            # stuck radio: switch the interface off and on before trying again
            try:
                w.disconnect()
            except Exception:
                pass
            w.active(False)
            await _sleep_ms(100)
            self.resets += 1
            self._event("reset", "after %d failures" % self.failures)
        w.active(True)
        self.last_status = None
        if self._status() != "connecting":
            try:
                w.connect(self.ssid, self.password)
            except OSError as e:
                return "connect refused: %s" % e
        t0 = _now()
        stale = self._status()
        while _diff(_now(), t0) < self.connect_timeout_ms:
            if w.isconnected():
                return None
            name = self._status()
            if name in _FINAL and (name != stale or _diff(_now(), t0) >= self.status_grace_ms):
                self.last_status = name
                return name
            await _sleep_ms(200)
        return "no connection within %d ms" % self.connect_timeout_ms

    async def run(self):
        while True:
            self.beat()
            if self.wlan.isconnected():
                if not self.up:
                    self.up = True
                    self.ups += 1
                    self.failures = 0
                    self.backoff.reset()
                    ip = ""
                    try:
                        ip = self.wlan.ifconfig()[0]
                    except Exception:
                        pass
                    self._event("up", ip)
                if self.when_up is not None:
                    await self.when_up()  # handles its own failures (clock_sync)
                await _sleep_ms(self.check_ms)
                continue
            if self.up:
                self.up = False
                self.downs += 1
                self._event("down", self.ssid)
            why = await self._attempt()
            if why is None:
                continue  # the next loop reports "up"
            self.failures += 1
            self._event("fail", why)
            if why in ("wrong password", "no access point with that SSID"):
                await _sleep_ms(self.backoff.max_ms)  # retrying sooner cannot help
            else:
                await _sleep_ms(self.backoff.next_ms())


def supervise(node, wlan):
    # The node's Wi-Fi (tasks.wifi; config "wifi": {"ssid", "password"}): up/down/fail/reset
    # become log lines and WIFI events in the record log; bounded, jittered retries.
    from meternode.node import log

    c = node.config["wifi"]
    codes = {"up": 1, "down": 2, "fail": 3, "reset": 4}

    def on_event(kind, detail):
        log("wifi %s %s" % (kind, detail))
        u = node.uplink_service
        if u is not None:
            from meternode.store import records

            u.event(records.EV_WIFI, codes.get(kind, 0), ("%s %s" % (kind, detail))[: records.EVENT_TEXT])

    w = WifiSupervisor(wlan, c.get("ssid", ""), c.get("password", ""), on_event)
    n = node.config.get("ntp", {})
    if n is not False:
        w.when_up = clock_sync(node, n.get("host", "pool.ntp.org"), n.get("port", 123), n.get("interval_s", 3600))
    return w


def clock_sync(node, host, port, interval_s):
    # The wall clock from an NTP server while Wi-Fi is up (config "ntp": {"host", "port",
    # "interval_s"}, default pool.ntp.org:123 hourly; false: none): at once after start, then
    # every interval_s; a failure is tried again after 60 s, doubling up to interval_s (the
    # bookkeeping, logs and TIME_SET event are link/nettime.py's done(), shared with LoRaWAN's
    # network time).  -> the async callable for WifiSupervisor.when_up.  node.ntp: done()'s
    # state, the `status` command's clock.ntp.
    addr = [None]  # the server's address, looked up again after a failure
    node.ntp = [None, None, None, 60, interval_s, node.config.get("time_max_step_s", 86400)]

    async def due():
        t = node.ntp
        # due: at t[2] or after -- a deadline is at most interval_s ahead, so a difference below
        # -interval_s is one gone past and wrapped (Wi-Fi down for 6.2 days; loralink.py's too)
        if t[2] is not None and -t[4] * 1000 <= _diff(_now(), t[2]) < 0:
            return
        from meternode import run
        from meternode.node import log

        try:
            got = await run("meternode.link.sntp", "sync", node.hal.clock, host, port, 3000, t[5], addr)
        except Exception as e:
            addr[0] = None
            got = e
        u = node.uplink_service
        run("meternode.link.nettime", "done", t, got, 60, node.hal.clock, "ntp " + host, u and u.event, log)

    return due
