# RP2040 sampler: the ADC in free-running round robin over the board's inputs, its FIFO
# drained by two chained rp2.DMA channels into ping-pong blocks, hardware-paced.
#
# Written to the RP2040 datasheet (section 4.9, ADC; 2.5, DMA) and MicroPython's rp2.DMA
# documentation; it cannot run on the unix port, so it is kept behind the HAL and imports
# `machine`/`rp2` only in the constructor.
#
# ADC registers (ADC_BASE 0x4004C000):
#   CS   +0x00  EN (0), START_MANY (3), AINSEL (14:12), RROBIN (20:16)
#   FCS  +0x08  EN (0), SHIFT (1), ERR (2), DREQ_EN (3), OVER (11, write 1 to clear),
#               UNDER (10), THRESH (27:24)
#   FIFO +0x0C  12-bit result (11:0), ERR (15)
#   DIV  +0x10  INT (23:8), FRAC (7:0): a conversion starts every 1 + INT + FRAC/256 cycles
#               of the 48 MHz ADC clock (at least 96, the conversion time).
# DREQ_ADC is 36.  With nch inputs at `rate` sets/s the ADC converts nch * rate per second,
# so DIV = 48e6 / (nch * rate) - 1 and consecutive inputs of a set are 1 / (nch * rate)
# apart: the board's adc.skew_us must say so (83.3 us for 3 inputs at 4 kS/s); the meter
# corrects it with the phase interpolation.  Round robin converts the enabled inputs in
# ascending order starting at AINSEL, so the board lists its channels in input order.
#
# DMA: channel A writes block 0 (nch * block halfwords, 16-bit reads of FIFO, fixed read
# address, incrementing write, DREQ-paced) and chains to B, which writes block 1 and chains
# back to A.  Each completion raises the channel's IRQ (irq_quiet=False); the hard IRQ
# handler re-arms the finished channel's write address and count for its next turn and
# marks the block complete.  The ADC never stops: no gaps by design.  FIFO overflow (the
# DMA starved) sets FCS.OVER, which is counted as an overrun and cleared.
from micropython import const

from meternode.hal.blocks import Blocks
from meternode.hal.clock import BoardClock

_ADC_BASE = const(0x4004C000)
_CS = const(0x00)
_FCS = const(0x08)
_FIFO = const(0x0C)
_DIV = const(0x10)
_DREQ_ADC = const(36)
_ADC_CLK = const(48000000)


class RP2Sampler:
    def __init__(self, board):
        import machine
        import rp2

        adc = board["adc"]
        self.nch = len(board["channels"])
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        self.bits = 12
        inputs = adc.get("inputs", list(range(self.nch)))
        if len(inputs) != self.nch or sorted(inputs) != inputs:
            raise ValueError("board.adc.inputs must list one ascending ADC input per channel")
        for pin in adc.get("pins", []):
            machine.ADC(machine.Pin(pin))  # puts the pad in analogue mode
        self._mem = machine.mem32
        self._inputs = inputs
        div = _ADC_CLK // (self.nch * self.rate) - 1
        if div < 96:
            raise ValueError("board.adc.rate %d x %d inputs is above the ADC's 500 kS/s" % (self.rate, self.nch))
        self._div = div
        self.blocks = Blocks(self.nch, self.block_sets)
        self._a = rp2.DMA()
        self._b = rp2.DMA()
        self._irq_a = self._done_a  # bind once
        self._irq_b = self._done_b
        self.running = False

    @property
    def overruns(self):
        return self.blocks.overruns

    def _ctrl(self, dma, other):
        return dma.pack_ctrl(
            size=1, inc_read=False, inc_write=True, treq_sel=_DREQ_ADC, chain_to=other.channel, irq_quiet=False
        )

    def start(self):
        m = self._mem
        base = _ADC_BASE
        n = self.blocks.n
        bufs = self.blocks.bufs
        m[base + _CS] = 0  # stop, then configure
        m[base + _FCS] = 1 | (1 << 3) | (1 << 24) | (1 << 11) | (1 << 10)  # EN, DREQ_EN, THRESH=1, clear flags
        m[base + _DIV] = self._div << 8
        self._a.config(read=base + _FIFO, write=bufs[0], count=n, ctrl=self._ctrl(self._a, self._b))
        self._b.config(read=base + _FIFO, write=bufs[1], count=n, ctrl=self._ctrl(self._b, self._a))
        self._a.irq(self._irq_a, hard=True)
        self._b.irq(self._irq_b, hard=True)
        self._a.active(1)
        mask = 0
        for i in self._inputs:
            mask |= 1 << i
        rr = mask if self.nch > 1 else 0
        m[base + _CS] = 1 | (1 << 3) | (self._inputs[0] << 12) | (rr << 16)  # EN, START_MANY
        self.running = True

    def _check_fifo(self):
        m = self._mem
        fcs = m[_ADC_BASE + _FCS]
        if fcs & (1 << 11):
            self.blocks.overruns += 1
            m[_ADC_BASE + _FCS] = fcs | (1 << 11)

    def _done_a(self, dma):
        self._a.write = self.blocks.bufs[0]
        self._a.count = self.blocks.n
        self._check_fifo()
        self.blocks.done()

    def _done_b(self, dma):
        self._b.write = self.blocks.bufs[1]
        self._b.count = self.blocks.n
        self._check_fifo()
        self.blocks.done()

    def stop(self):
        self._mem[_ADC_BASE + _CS] = 0
        self._a.active(0)
        self._b.active(0)
        self.running = False

    async def next_block(self):
        return await self.blocks.next_block()


# The board clock (ticks, RTC epoch) is shared by every board HAL: hal/clock.py.
RP2Clock = BoardClock


class RP2Hal:
    def __init__(self, board, config):
        self.clock = RP2Clock()
        self.sampler = RP2Sampler(board)
