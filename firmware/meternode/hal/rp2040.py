# RP2040 sampler: the ADC in free-running round robin over the board's inputs, its FIFO
# drained by a DMA ring (rp2dma.py) that runs without the CPU, hardware-paced.
#
# Written to the RP2040 datasheet, section 4.9 (ADC), and MicroPython's rp2.DMA; it cannot
# run on the unix port (tests drive it through the register-level stand-in in
# hil/umeter_hil/board_shim/rp2hw.py), so `machine`/`rp2` are imported in the constructor.
#
# ADC registers (ADC_BASE 0x4004C000):
#   CS   +0x00  EN (0), START_MANY (3), READY (8), ERR_STICKY (10, write 1 to clear),
#               AINSEL (14:12), RROBIN (20:16)
#   FCS  +0x08  EN (0), SHIFT (1), ERR (2), DREQ_EN (3), UNDER (10) and OVER (11) (write 1
#               to clear), LEVEL (19:16), THRESH (27:24)
#   FIFO +0x0C  12-bit result (11:0)
#   DIV  +0x10  INT (23:8), FRAC (7:0): with START_MANY a conversion starts every
#               1 + INT + FRAC/256 cycles of the 48 MHz ADC clock (96 at least: 500 kS/s)
# DREQ_ADC is 36.  With nch inputs at `rate` sets/s the ADC converts nch * rate per second:
# the divider is 48e6 / (nch * rate) in 16.8 fixed point (FRAC gets the rates that do not
# divide 48 MHz exactly; rate_actual is what the programmed divider gives, 48e6 * 256 /
# (nch * (256 * (1 + INT) + FRAC))).  Consecutive inputs of a set are one conversion apart
# (83.33 us for 3 inputs at 4 kS/s): board adc.skew_us must say so; the meter corrects it
# with its phase interpolation.  Round robin converts the enabled inputs in ascending
# order starting at AINSEL, so the board lists its channels in input order.
#
# Start: EN first, then wait for READY (the ADC needs its clock running before a
# conversion), drain the FIFO, program FCS/DIV, arm the DMA ring, then START_MANY with AINSEL
# at the first input.  A FIFO overflow (FCS.OVER: the DMA fell 4 results behind, which the
# ring design leaves only to bus starvation) drops a result without a channel tag, so the
# columns would stay rotated: the sampler stops, drains and restarts the ADC and the ring
# from a set boundary, and counts the sets of the gap in `lost` (by time).
from micropython import const

from meternode.hal.blocks import _MASK, Ring
from meternode.hal.clock import BoardClock

_ADC_BASE = const(0x4004C000)
_CS = const(0x00)
_FCS = const(0x08)
_FIFO = const(0x0C)
_DIV = const(0x10)
_DREQ_ADC = const(36)
_ADC_CLK = const(48000000)
_CS_EN = const(1)
_CS_START_MANY = const(1 << 3)
_CS_READY = const(1 << 8)
_FCS_UNDER = const(1 << 10)
_FCS_OVER = const(1 << 11)
_SPIN = const(100000)


def adc_divider(nch, rate):
    # -> (INT, FRAC, rate_actual) for nch inputs at `rate` sets/s; ValueError naming the key.
    conv256 = (_ADC_CLK * 256 + (nch * rate) // 2) // (nch * rate)  # cycles per conversion, x256
    if conv256 < 96 * 256:
        raise ValueError("board.adc.rate %d x %d inputs is above the ADC's 500 kS/s" % (rate, nch))
    ip = conv256 >> 8  # 1 + INT
    if ip - 1 > 0xFFFF:
        raise ValueError("board.adc.rate %d x %d inputs is below what the ADC divider reaches" % (rate, nch))
    return ip - 1, conv256 & 0xFF, _ADC_CLK * 256.0 / (nch * conv256)


class RP2Sampler:
    def __init__(self, board):
        import machine

        adc = board["adc"]
        self.nch = len(board["channels"])
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        self.bits = 12
        inputs = adc.get("inputs", list(range(self.nch)))
        if len(inputs) != self.nch or sorted(inputs) != inputs or len(set(inputs)) != len(inputs):
            raise ValueError("board.adc.inputs must list one ascending ADC input per channel")
        if inputs and not 0 <= inputs[-1] <= 4 or inputs and inputs[0] < 0:
            raise ValueError("board.adc.inputs: the RP2040 ADC has inputs 0..4")
        for pin in adc.get("pins", []):
            machine.ADC(machine.Pin(pin))  # puts the pad in analogue mode
        self._mem = machine.mem32
        self._inputs = inputs
        self._div_int, self._div_frac, self.rate_actual = adc_divider(self.nch, self.rate)
        self.note = None
        if abs(self.rate_actual - self.rate) > 0.0005:
            self.note = "adc.rate %d/s: the ADC divider gives %.4f sets/s (the meter measures it)" % (
                self.rate,
                self.rate_actual,
            )
        from meternode.hal.rp2dma import DmaRing

        self.ring = Ring(self.nch, self.block_sets, adc.get("ring", 8))
        self.bufs = self.ring.bufs
        conv = 256 * (self._div_int + 1) + self._div_frac
        self.skew_us = conv / 256.0 / 48.0  # consecutive inputs of a set are one conversion apart
        self.dma = DmaRing(self.ring, _ADC_BASE + _FIFO, _DREQ_ADC, conv, self.nch * conv, 48 * 256)
        import time

        self._us = time.ticks_us
        self._diff = time.ticks_diff
        self.resyncs = 0  # restarts after a FIFO overflow
        self._gap_from = None  # stamp of the last block before a restart
        self.stamp_us = 0
        self.lost = 0
        self.running = False

    @property
    def overruns(self):
        return self.dma.overruns

    @property
    def torn(self):
        return self.dma.torn

    def _wait(self, reg, bit, what):
        m = self._mem
        for _ in range(_SPIN):
            if m[_ADC_BASE + reg] & bit:
                return
        raise OSError("RP2040 ADC: %s" % what)

    def _drain(self):
        m = self._mem
        for _ in range(8):
            if not (m[_ADC_BASE + _FCS] >> 16) & 0xF:
                break
            m[_ADC_BASE + _FIFO]

    def start(self):
        m = self._mem
        base = _ADC_BASE
        m[base + _CS] = _CS_EN  # power up; nothing converts yet
        self._wait(_CS, _CS_READY, "not READY after power-up")
        m[base + _FCS] = 0
        self._drain()
        # FIFO on, DREQ on, DREQ at 1 result; clear UNDER/OVER (write 1)
        m[base + _FCS] = 1 | (1 << 3) | (1 << 24) | _FCS_OVER | _FCS_UNDER
        m[base + _DIV] = (self._div_int << 8) | self._div_frac
        self.dma.arm()
        mask = 0
        for i in self._inputs:
            mask |= 1 << i
        rr = mask if self.nch > 1 else 0
        t = self._us()
        m[base + _CS] = _CS_EN | _CS_START_MANY | (self._inputs[0] << 12) | (rr << 16)
        self.dma.started(t)
        self.running = True

    def stop(self):
        m = self._mem
        m[_ADC_BASE + _CS] = _CS_EN  # START_MANY off: the conversion in progress finishes
        self._wait(_CS, _CS_READY, "conversion did not finish")
        self.dma.disarm()
        self._drain()
        m[_ADC_BASE + _FCS] = _FCS_OVER | _FCS_UNDER
        m[_ADC_BASE + _CS] = 0
        self.running = False

    def _resync(self):
        # A FIFO overflow rotated the columns: restart from a set boundary.
        lost = self.lost
        self._gap_from = self.stamp_us
        self.stop()
        self.start()
        self.dma.lost = lost  # arm() reset it; keep counting from where we were
        self.resyncs += 1

    async def next_block(self):
        d = self.dma
        d.release()
        while True:
            if self._mem[_ADC_BASE + _FCS] & _FCS_OVER:
                self._resync()
            buf = d.take()
            if buf is not None:
                if self._gap_from is not None:
                    # sets between the last block before the restart and this one, by time
                    gap = self._diff(d.stamp_us, self._gap_from) * self.rate_actual / 1e6
                    d.lost = (d.lost + max(0, int(gap + 0.5) - self.block_sets)) & _MASK
                    self._gap_from = None
                self.stamp_us = d.stamp_us
                self.lost = d.lost
                return buf
            await self.ring.flag.wait()


# The board clock (ticks, RTC epoch) is shared by every board HAL: hal/clock.py.
RP2Clock = BoardClock


class RP2Hal:
    def __init__(self, board, config):
        self.clock = RP2Clock()
        self.sampler = RP2Sampler(board)
        board["adc"]["skew_us"] = self.sampler.skew_us  # what the divider really gives
        from meternode.hal import modem

        modem.attach(self, board)  # board "lora": the modem's UART and reset line
