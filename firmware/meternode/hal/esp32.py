# ESP32 sampler: timer-paced reads of ADC1 (ADC2 is shared with Wi-Fi and unusable while it
# runs), one set of all channels per timer tick, into a blocks.Ring.
#
# Written to MicroPython's esp32 machine.ADC / machine.Timer sources (ports/esp32/
# machine_timer.c, machine_adc.c); it cannot run on the unix port, so it imports `machine`
# only in the constructor (tests drive it through hil/umeter_hil/board_shim/softirq.py).
#
# Stock MicroPython has no continuous (DMA) ADC on ESP32, so this backend reads one-shot
# conversions from a machine.Timer callback at adc.rate sets per second:
#   - ticks are soft IRQs: machine_timer_handler() calls mp_sched_schedule(), whose queue
#     holds 8 (MICROPY_SCHEDULER_DEPTH) and drops the rest; hard timers raise "hard Timers
#     are not implemented".  A VM stall longer than ~8 periods (GC, a flash erase, a TLS
#     handshake, getaddrinfo) loses sets.  blocks.TimerSampler places every tick on the
#     timer's grid by ticks_us: queued ticks that run back to back read nothing twice,
#     missed slots are counted in `lost` and the block restarts after the gap, so the
#     meter's measured rate and energy stay right (docs/metrology.md, timebase).
#   - rate: period = round(1e6 / rate) us (an exact count of the timer's 10 MHz clock);
#     rate_actual = 1e6 / period.
#   - skew: the channels of a set are read one after another; the per-slot delay is
#     measured at start in this very read path (blocks.measure_skew) and handed to the
#     meter (board adc.skew_us), since it depends on the build and the calibration path.
#   - scaling: read_uv() (eFuse calibration) gives counts = uv * 4096 / vref_uv, computed
#     as (uv << 8) // (vref_uv >> 4) so no intermediate reaches 2**30 (a boxed int would
#     allocate 8000 times a second); read_uv() is tried once here, a failure falls back to
#     read_u16() >> 4 and says so in `note`.
#   - pulse inputs: ESP32 pin IRQs are soft too (machine_pin_isr_handler ->
#     mp_sched_schedule) and would share the 8-deep queue with the tick, a bouncing reed
#     filling it; so pulse pins are polled in the tick instead (pulsein.PolledPulseInput,
#     one level read per pin per tick, edges time-stamped to 1/rate).
#   - attenuation: adc.atten "11db" (150-2450 mV) by default, the usable linear range.
from meternode.hal.blocks import TimerSampler, measure_skew

_UV_MAX = 4000000  # clamp before << 8: 4e6 * 256 < 2**30


class ESP32Sampler(TimerSampler):
    def __init__(self, board):
        import time

        import machine

        from meternode.hal import pulsein

        adc = board["adc"]
        self.nch = len(board["channels"])
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        self.bits = 12
        pins = adc.get("pins")
        if not pins or len(pins) != self.nch:
            raise ValueError("board.adc.pins must list one ADC1 pin per channel")
        for p in pins:
            if not 32 <= p <= 39:
                raise ValueError("board.adc.pins: GPIO%d is not on ADC1 (GPIO32-39)" % p)
        atten = {"0db": machine.ADC.ATTN_0DB, "6db": machine.ADC.ATTN_6DB, "11db": machine.ADC.ATTN_11DB}
        name = adc.get("atten", "11db")
        if name not in atten:
            raise ValueError("board.adc.atten must be one of %s, not %r" % ("/".join(sorted(atten)), name))
        self._adcs = [machine.ADC(machine.Pin(p), atten=atten[name]) for p in pins]
        self._k = int(adc.get("vref", 3.3) * 1000000) >> 4
        self._timer = machine.Timer(adc.get("timer", 0))
        self._init_ring(adc)
        self._uv = False
        if adc.get("calibrated", True):
            try:
                self._adcs[0].read_uv()
                self._uv = True
            except (AttributeError, OSError, ValueError) as e:
                self.note = "ADC1 calibration unavailable (%s): raw read_u16() counts" % e
        # bound once: the tick calls them 8000 times a second
        self._reads = [a.read_uv if self._uv else a.read_u16 for a in self._adcs]
        self._polled = pulsein.POLLED
        self._ms = time.ticks_ms
        self.skew_us = measure_skew(self)

    def _read_set(self, buf, i):
        if self._uv:
            k = self._k
            for r in self._reads:
                uv = r()
                if uv > _UV_MAX:
                    uv = _UV_MAX
                c = (uv << 8) // k
                buf[i] = c if c < 4096 else 4095
                i += 1
        else:
            for r in self._reads:
                buf[i] = r() >> 4
                i += 1
        return i

    def _poll(self, now):
        if self._polled:
            t = self._ms()
            for p in self._polled:
                p.sample(t)


class ESP32Hal:
    def __init__(self, board, config):
        from meternode.hal.rp2040 import RP2Clock

        self.clock = RP2Clock()
        self.sampler = ESP32Sampler(board)
        board["adc"]["skew_us"] = self.sampler.skew_us  # measured in the read path
        from meternode.hal import modem

        modem.attach(self, board)  # board "lora": the modem's UART and reset line
