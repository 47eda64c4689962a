# The node's wall clock from its network.  Two sources, one step:
#   - SNTP over Wi-Fi (link/sntp.py, which calls step() here);
#   - LoRaWAN's DeviceTimeReq, through the modem (lorawan() below, for a node whose only
#     network is LoRa: without it its clock was set by nothing but a `time` command).
# Loaded for a sync and forgotten after (meternode.run), like sntp.py.
#
# step(): a time before 2020 or from 2100 on is no time (a module or server that has none:
# RUI3 reads 1970 until the network has answered); once the clock is set (after 2020) a step
# over max_step_s is refused, as a `time` command's is; a step under 2 s is not made (the
# clock is read in whole seconds).
#
# LoRaWAN through RUI3 (RAKWireless/RAK-STM32-RUI: service/mode/cli/atcmd_nwk_management.c
# At_Timereq, atcmd_class_b_mode.c At_LocalTime, service/lora/service_lora.c): AT+TIMEREQ=1
# arms a DeviceTimeReq MAC command on the next uplink (AT_NO_NETWORK_JOINED before a join);
# after that uplink's receive windows the module prints +EVT:TIMEREQ_OK (the network's
# DeviceTimeAns set its clock) or +EVT:TIMEREQ_FAILED, and disarms; AT+LTIME=? then reads
# "AT+LTIME=15h08m55s on 08/17/2026" (month/day/year, UTC: the module takes GPS time's 18 leap
# seconds off), whole seconds.  No uplink of its own: the request rides on a record's.
from micropython import const

from meternode.ticks import CLOCK_SET

_MAX_EPOCH = const(4102444800)  # 2100-01-01 (records hold u32 seconds; a `time` command's bound too)
_ANSWER_MS = const(6000)  # the TIMEREQ event after the uplink's own (class A windows end within ~3 s)
_RETRY_S = const(600)  # a failed request is asked again after 10 min, doubling up to time_s


def step(clock, now, max_step_s):
    # Sets `clock` to `now` (UNIX s); -> the step made (0: within 2 s, not made).  ValueError
    # naming why it cannot.
    if not CLOCK_SET <= now < _MAX_EPOCH:
        raise ValueError("no time: %d is not in 2020..2099" % now)
    cur = int(clock.time())
    d = now - cur
    if cur >= CLOCK_SET and (d > max_step_s or -d > max_step_s):
        raise ValueError("a step of %+d s is over the %d-s limit" % (d, max_step_s))
    if -2 < d < 2:
        return 0
    clock.set_time(now)
    return d


def ltime(text):
    # RUI3's AT+LTIME value, "15h08m55s on 08/17/2026" -> UNIX seconds; ValueError naming it.
    # The time is its last three words (a firmware that prints "+LTIME: 15h08m55s on ..." too)
    try:
        hms, on, mdy = text.split()[-3:]
        if on != "on" or len(hms) != 9 or hms[2] != "h" or hms[5] != "m" or hms[8] != "s":
            raise ValueError
        h, mi, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
        mo, d, y = (int(x) for x in mdy.split("/"))
    except (ValueError, AttributeError):
        raise ValueError("the modem's time %r is not hhhmmmsss on MM/DD/YYYY" % (text,))
    if not (0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 60 and 1 <= mo <= 12 and 1 <= d <= 31 and y >= 1970):
        raise ValueError("the modem's time %r is out of range" % (text,))
    # days from 1970-01-01 (the Gregorian calendar): years counted from March, so that the leap
    # day ends a year; 153 days for every 5 months from March
    if mo < 3:
        y -= 1
        mo += 12
    d += 365 * y + y // 4 - y // 100 + y // 400 + (153 * (mo - 3) + 2) // 5 - 719469
    return d * 86400 + h * 3600 + mi * 60 + s


async def lorawan(k, frame, confirmed):
    # One uplink of LoRaLink `k` with a DeviceTimeReq on it, and the node's clock stepped to
    # the network's time.  -> what modem.send returns; the send's errors are raised as without
    # the request (which is then asked again at the next uplink).  The outcome goes to done()
    # (k.nettime, made by loraservice.make): a failure is asked again after 10 min, doubling
    # up to time_s; a step is a TIME_SET event ("lorawan").
    from meternode.link.lorawan import ModemError

    m = k.modem
    t = k.nettime
    m._events = [e for e in m._events if not e.startswith("TIMEREQ")]  # an earlier request's
    why = None
    try:
        await m.cmd("AT+TIMEREQ=1")
    except ModemError as e:
        why = e
    ok = await m.send(k.port, frame, confirmed)
    if why is None:
        try:
            if await m.wait_event(("TIMEREQ",), _ANSWER_MS) != "TIMEREQ_OK":  # or _FAILED
                raise ValueError("the network did not answer DeviceTimeReq")
            s = step(k.clock, ltime(await m.get("LTIME")), t[5])
        except (ModemError, ValueError) as e:
            why = e
    done(t, s if why is None else why, _RETRY_S, k.clock, "lorawan", k.event, print)
    return ok


def done(t, got, first_s, clock, via, event, log):
    # After one sync from a network source (SNTP: link/wifi.py; LoRaWAN: lorawan() above).
    # t: its state, the `status` command's clock.ntp / clock.lorawan -- [the clock after the
    # last good sync (epoch s) or None, the last failure's text or None, ticks ms when the next
    # is due (None: now), the retry pause s, the interval s, time_max_step_s]; got: the step
    # made (s) or the exception that stopped it.  A failure is logged and tried again after
    # the pause, doubling up to the interval (first_s again after a good one); a step is
    # logged and a TIME_SET event (`via`: "ntp <server>", "lorawan").
    from meternode.ticks import add, ms

    if isinstance(got, Exception):
        t[1] = "%s" % got
        t[2] = add(ms(), t[3] * 1000)
        t[3] = min(t[3] * 2, t[4])
        log("%s: %s" % (via, got))
        return
    t[0] = int(clock.time())
    t[1] = None
    t[2] = add(ms(), t[4] * 1000)
    t[3] = first_s
    if got:
        log("%s: clock stepped %+d s" % (via, got))
        if event is not None:
            from meternode.store import records

            event(records.EV_TIME_SET, got, via[: records.EVENT_TEXT])
