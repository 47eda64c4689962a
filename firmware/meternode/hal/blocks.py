# Ping-pong sample blocks shared by the board samplers (rp2, esp32, mcp3208).
#
# Two array('H') blocks of nch * block_sets samples.  The producer (DMA IRQ or timer
# callback) fills one while the consumer processes the other; done(k) marks block k full
# and wakes next_block().  When a block completes before the consumer took the previous
# one, the older one is dropped and counted in `overruns` (telemetry reports it): every
# block the meter sees is complete, and a gap is always counted, never silent.
import array

_MASK = 0x3FFFFFFF


class Blocks:
    def __init__(self, nch, block_sets):
        import asyncio

        n = nch * block_sets
        self.bufs = (array.array("H", bytes(2 * n)), array.array("H", bytes(2 * n)))
        self.n = n
        self.flag = asyncio.ThreadSafeFlag()
        self._st = array.array("i", [0, 0])  # [blocks completed, blocks taken]
        self.overruns = 0

    def done(self):
        # Producer side (IRQ-safe: no allocation): one more block is complete.
        self._st[0] = (self._st[0] + 1) & _MASK
        self.flag.set()

    def filling(self):
        # Index of the block the producer writes now.
        return self._st[0] & 1

    async def next_block(self):
        while True:
            done = self._st[0]
            taken = self._st[1]
            lag = (done - taken) & _MASK
            if lag >= 1:
                if lag > 1:
                    self.overruns += lag - 1  # the consumer fell behind: count the gap
                self._st[1] = done
                return self.bufs[(done - 1) & 1]
            await self.flag.wait()


class TimerSampler:
    # One sample set per machine.Timer tick into ping-pong Blocks (the ESP32 ADC1 and the
    # MCP3208 backends).  A subclass sets nch, rate, block_sets, bits and _timer, calls
    # _init_blocks(), and reads one set in _read_set(buf, i) -> the index after it.
    def _init_blocks(self):
        self.blocks = Blocks(self.nch, self.block_sets)
        self._pos = 0
        self._tick = self._on_tick  # bind once: the timer callback must not allocate
        self.running = False

    @property
    def overruns(self):
        return self.blocks.overruns

    def _on_tick(self, t):
        blocks = self.blocks
        i = self._read_set(blocks.bufs[blocks.filling()], self._pos)
        if i >= blocks.n:
            i = 0
            blocks.done()
        self._pos = i

    def start(self):
        import machine

        self._pos = 0
        self._timer.init(mode=machine.Timer.PERIODIC, freq=self.rate, callback=self._tick)
        self.running = True

    def stop(self):
        self._timer.deinit()
        self.running = False

    async def next_block(self):
        return await self.blocks.next_block()
