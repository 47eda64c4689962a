# ESP32 sampler: timer-paced reads of ADC1 (ADC2 is shared with Wi-Fi and unusable while
# it runs), one set of all channels per timer tick, into ping-pong blocks.
#
# Written to MicroPython's esp32 machine.ADC / machine.Timer documentation; it cannot run on
# the unix port, so it is kept behind the HAL and imports `machine` only in the constructor.
#
# Stock MicroPython has no continuous (DMA) ADC on ESP32, so this backend reads one-shot
# conversions from a machine.Timer callback at adc.rate sets per second:
#   - coverage: every tick reads every channel, so no set is skipped while the callback
#     keeps up; a late callback shifts the instant (jitter), it does not drop a set.  A
#     block completed before the meter took the previous one is counted as an overrun.
#   - jitter: ESP32 timer callbacks run from the MicroPython scheduler (soft IRQ), so Wi-Fi
#     and garbage collection delay them by up to a few ms; at 2 kS/s the meter's
#     per-cycle DC removal and whole-cycle integration keep the energy error from jitter
#     small, but the frequency reading gets noisier (see docs/metrology.md).
#   - skew: channels of a set are read one after another, ~20-35 us apart (adc.skew_us).
#   - scaling: read_uv() uses the chip's eFuse calibration where the firmware has it
#     (adc.calibrated, default true); counts = uv * 4096 / vref_uv, else read_u16() >> 4.
#   - attenuation: adc.atten "11db" (150-2450 mV) by default, the usable linear range.
from meternode.hal.blocks import TimerSampler


class ESP32Sampler(TimerSampler):
    def __init__(self, board):
        import machine

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
        a = atten[adc.get("atten", "11db")]
        self._adcs = [machine.ADC(machine.Pin(p), atten=a) for p in pins]
        self._uv = adc.get("calibrated", True) and hasattr(self._adcs[0], "read_uv")
        self._vref_uv = int(adc.get("vref", 3.3) * 1000000)
        self._timer = machine.Timer(adc.get("timer", 0))
        self._init_blocks()

    def _read_set(self, buf, i):
        if self._uv:
            for a in self._adcs:
                buf[i] = a.read_uv() * 4096 // self._vref_uv
                i += 1
        else:
            for a in self._adcs:
                buf[i] = a.read_u16() >> 4
                i += 1
        return i


class ESP32Hal:
    def __init__(self, board, config):
        from meternode.hal.rp2040 import RP2Clock

        self.clock = RP2Clock()
        self.sampler = ESP32Sampler(board)
