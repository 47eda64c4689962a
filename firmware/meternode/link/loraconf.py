# Configuring a RUI3 modem (link/lorawan.py's LoRaModem), loaded only while it runs: the
# node configures at every start, so it must write nothing when the module already holds
# the settings.  RUI3 (RAKWireless/RAK-STM32-RUI) rewrites its NVM config block on every
# AT+<key>=<value> set, and AT+NWM=<n> answers "OK" with no CR/LF and reboots the module on
# every set, even to the mode it is in (service/mode/cli/atcmd_p2p.c).  So each value is read
# with AT+<key>=? first and written only when it differs, and AT+NWM only when the module is
# not in LoRaWAN mode, after which the module is given time to come back.
from meternode.link.lorawan import ModemError
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms


async def wait(m, timeout_ms=None):
    # AT probes until the module answers OK (after a reset, power-up or AT+NWM).
    t0 = _now()
    left = timeout_ms or m.boot_ms
    while True:
        try:
            await m.cmd("AT", 500)
            return
        except ModemError:
            pass
        if _diff(_now(), t0) >= left:
            raise ModemError("modem not answering for %d ms" % left, "timeout")
        await _sleep_ms(250)


async def configure(m, deveui, appeui, appkey, band="EU868", dr=0):
    bands = {"EU868": 4, "CN470": 1}  # RUI3's AT+BAND numbers
    if band not in bands:
        raise ModemError("lora.band = %r must be one of %s" % (band, ", ".join(sorted(bands))), "config")
    await wait(m)
    if await m.get("NWM") != "1":
        # "OK" without CR/LF, then a reboot: no ordinary reply to wait for
        while m.lock:  # a command in progress (LoRaModem.cmd)
            await _sleep_ms(5)
        m.lock = True
        try:
            await m.write("AT+NWM=1")
        finally:
            m.lock = False
        m.sets += 1
        await _sleep_ms(300)
        await wait(m)
        if await m.get("NWM") != "1":
            raise ModemError("modem stays out of LoRaWAN mode (AT+NWM)", "config")
    for key, value in (
        ("BAND", "%d" % bands[band]),
        ("NJM", "1"),
        ("CLASS", "A"),
        ("DEVEUI", deveui),
        ("APPEUI", appeui),
        ("APPKEY", appkey),
        ("ADR", "0"),
        ("DR", "%d" % dr),
    ):
        # set only if the module has something else (each set is an NVM write)
        have = await m.get(key)
        if have is None or have.upper() != value.upper():
            await m.cmd("AT+%s=%s" % (key, value))
            m.sets += 1
