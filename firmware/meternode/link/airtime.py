# Airtime governor for LoRaWAN: time on air per spreading factor and bandwidth (Semtech
# formula), the regional duty cycle (EU868: 1 % on the default channels' sub-band, so after
# an uplink of T ms the band rests T * 99 ms), and a daily airtime budget (TTN fair use:
# 30 s per 24 h).  The link asks `wait_ms()` before each uplink and waits (or merges live
# telemetry) instead of breaking the rules.  now_ms is a ticks_ms value (30-bit, wrapping):
# the rest is measured from the last uplink with ticks.diff, so an uplink just before a wrap
# does not silence the link until reboot.
import math

from meternode.ticks import diff

# region -> (duty cycle as 1/x, LoRaWAN MAC overhead bytes)
REGIONS = {
    "EU868": (100, 13),  # 1 % per sub-band (g1: 868.0-868.6 MHz, the three default channels)
    "CN470": (1, 13),  # no duty cycle in the regional parameters; the daily budget still holds
}
# data rate -> (spreading factor, bandwidth kHz, largest application payload), the same for
# EU868 and CN470 DR0-DR5
RATES = {0: (12, 125, 51), 1: (11, 125, 51), 2: (10, 125, 51), 3: (9, 125, 115), 4: (8, 125, 222), 5: (7, 125, 222)}


def time_on_air_us(payload, sf, bw=125, overhead=13):
    # Microseconds on air for `payload` application bytes (+ `overhead` MAC bytes) at spreading
    # factor sf and bandwidth bw kHz, as a LoRaWAN uplink is sent: coding rate 4/5, an 8-symbol
    # preamble, explicit header, payload CRC on (Semtech AN1200.13; no other parameters, so a
    # node interns no names for them)
    tsym = (1 << sf) * 1000.0 / bw  # us
    de = 1 if (sf >= 11 and bw == 125) else 0  # low data rate optimisation
    num = 8 * (payload + overhead) - 4 * sf + 28 + 16
    n = 8 + max(math.ceil(num / (4.0 * (sf - 2 * de))) * 5, 0)
    return int(12.25 * tsym + n * tsym + 0.5)


class Governor:
    def __init__(self, region="EU868", dr=0, daily_budget_ms=30000):
        if region not in REGIONS:
            raise ValueError("lora.region = %r must be one of %s" % (region, ", ".join(sorted(REGIONS))))
        if dr not in RATES:
            raise ValueError("lora.dr = %r must be 0..5" % (dr,))
        self.region = region
        self.dr = dr
        self.duty_x, self.overhead = REGIONS[region]
        self.daily_budget_ms = daily_budget_ms
        self.last = None  # (ticks ms of the last uplink, ms the sub-band rests after it); None: free
        self.day = None
        self.used_ms = 0  # airtime spent today
        self.sent = 0

    def wait_ms(self, payload, now_ms, now):
        # 0 when an uplink of `payload` bytes may go now; else how long to wait (ms);
        # -1 when today's budget cannot take it (wait for the next UTC day).
        most = RATES[self.dr][2]
        if payload > most:
            raise ValueError("payload of %d bytes is over DR%d's %d" % (payload, self.dr, most))
        day = int(now) // 86400  # now: the wall clock, epoch s
        if day != self.day:
            self.day = day
            self.used_ms = 0
        sf, bw, _ = RATES[self.dr]
        if self.used_ms + (time_on_air_us(payload, sf, bw, self.overhead) + 999) // 1000 > self.daily_budget_ms:
            return -1
        if self.last is not None:
            # the rest since the last uplink, bounded by it: a silence longer than the
            # ticks' half period (6.2 days) reads negative and cannot become a long wait
            at, rest = self.last
            gone = diff(now_ms, at)
            if 0 <= gone < rest:
                return rest - gone
            self.last = None  # passed: forget it before the ticks come round again
        return 0

    def sent_now(self, payload, now_ms):
        sf, bw, _ = RATES[self.dr]
        t = (time_on_air_us(payload, sf, bw, self.overhead) + 999) // 1000  # ms on air
        self.used_ms += t
        self.last = (now_ms, t * self.duty_x)  # T on air + T * (x - 1) off
        self.sent += 1
        return t
