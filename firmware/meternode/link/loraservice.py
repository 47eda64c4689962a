# LoRaWAN wiring for the uplink service: config check, modem + governor + LoRaLink from
# config.lora, the task that configures the modem and drains records, and the routing of
# downlinks by fport to the services registered in UplinkService.lora_ports.
import asyncio

from meternode.config import ConfigError, need
from meternode.store.log import Cursor
from meternode.ticks import sleep_ms as _sleep_ms


def check(c):
    lo = need(c, "lora", dict, "config", default={})
    if lo:
        w = "config.lora"
        need(lo, "port", str, w, default="")
        for k, n in (("deveui", 16), ("appeui", 16), ("appkey", 32)):
            v = need(lo, k, str, w)
            if len(v) != n:
                raise ConfigError("%s.%s must be %d hex digits" % (w, k, n))
        need(lo, "region", str, w, default="EU868")
        need(lo, "dr", int, w, default=0, lo=0, hi=5)
        need(lo, "fport", int, w, default=2, lo=1, hi=223)
        need(lo, "confirmed", bool, w, default=True)
        need(lo, "daily_budget_ms", int, w, default=30000, lo=1000, hi=86400000)
        pf = need(lo, "policy_fport", int, w, default=10, lo=1, hi=223)
        if pf == lo.get("fport", 2):
            raise ConfigError("config.lora.policy_fport must differ from config.lora.fport (%d)" % pf)
        if need(lo, "mode", str, w, default="fallback") not in ("fallback", "always"):
            raise ConfigError("config.lora.mode must be fallback or always, not %r" % lo["mode"])
        need(lo, "fallback_s", int, w, default=60, lo=0, hi=86400)
        # the network's time (DeviceTimeReq, link/nettime.py): each request costs a downlink; a
        # deadline in ticks holds up to 6.2 days
        t = need(lo, "time_s", int, w, default=86400, lo=0, hi=518400)
        if 0 < t < 3600:
            raise ConfigError("config.lora.time_s must be 0 (never) or 3600..518400, not %d (a downlink each)" % t)
    return lo


def make(s, lo, path):
    # A LoRaLink for the uplink service `s` (its log, clock, MQTT link for fallback mode).
    # (`s`, not `svc`: a parameter's name is interned, and `s` is one MicroPython has)
    check({"lora": lo})
    from meternode.link.airtime import Governor
    from meternode.link.loralink import LoRaLink
    from meternode.link.lorawan import LoRaModem

    uart = getattr(s.node.hal, "lora_uart", None)
    if uart is not None:  # boards: the HAL's UART as a stream (a meter bus on the same UART:
        f = uart(lo)  # the gateway is refused, nodegw.uart_free)
    elif lo.get("port"):  # unix port: a pty or tty device
        f = open(lo["port"], "r+b")
    else:
        raise ConfigError("config.lora.port is missing and this HAL has no LoRa UART")
    modem = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}))
    try:
        gov = Governor(lo.get("region", "EU868"), lo.get("dr", 0), lo.get("daily_budget_ms", 30000))
    except ValueError as e:
        raise ConfigError(str(e))
    modem.on_downlink = lambda port, data: downlink(s, port, data)
    ll = LoRaLink(modem, s.log, Cursor(path + ".lora"), gov, s.clock, lo.get("fport", 2), lo.get("confirmed", True))
    ll.event = s.event  # records skipped as unreadable are events
    ts = lo.get("time_s", 86400)
    if ts:  # the network's time on an uplink now and every time_s (link/nettime.py)
        ll.nettime = [None, None, None, 600, ts, s.node.config.get("time_max_step_s", 86400)]
    if lo.get("mode", "fallback") == "fallback" and s.link is not None:
        ll.floor = lambda: s.cursor.acked  # skip what MQTT delivered
        ll.active = lambda: not s.link.up  # and only speak while MQTT is down,
        ll.grace_ms = lo.get("fallback_s", 60) * 1000  # and has been for fallback_s
    return ll


def downlink(s, port, data):
    # A downlink from the network: to the service registered for its fport (s.lora_ports),
    # e.g. the policy service's small frames; others are logged and dropped.
    cb = s.lora_ports.get(port)
    if cb is None:
        print("lora downlink on port %d ignored (%d bytes)" % (port, len(data)))
        return
    try:
        cb(data)
    except Exception as e:  # a handler's bug must not stop the modem's reader
        print("lora downlink on port %d failed: %r" % (port, e))


async def run(s):
    # The LoRaWAN task: configure the modem (idempotent: nothing is written to the module's
    # NVM when it already holds the settings, and AT+NWM only when the mode differs, since
    # RUI3 reboots on it), then drain records (LoRaLink retries forever).  A module that
    # keeps failing gets its reset line pulsed (board "lora": {"reset": pin}) every third try.
    # The modem's line reader is a task of the node's supervisor of its own ("lora reader",
    # tasks.py): restarting this task never starts a second reader, nor stops the one running.
    lo = s.node.config["lora"]
    m = s.lora.modem
    reset = getattr(s.node.hal, "modem_reset", None)
    fails = 0
    while True:
        try:
            await m.configure(lo["deveui"], lo["appeui"], lo["appkey"], lo.get("region", "EU868"), lo.get("dr", 0))
            break
        except Exception as e:
            fails += 1
            print("lora modem not configured (%d): %s" % (fails, e))
            if reset is not None and fails % 3 == 0:
                try:
                    reset()
                except Exception as e2:
                    print("lora modem reset failed: %r" % (e2,))
            await _sleep_ms(min(5000 * fails, 60000))
    import sys

    sys.modules.pop("meternode.link.loraconf", None)  # configured: its code is not needed again
    await s.lora.run()
