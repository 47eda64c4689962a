# MCP3208 sampler: an external 12-bit, 8-channel SAR ADC on SPI (as IoTaWatt uses), for
# boards that need more inputs than the MCU has (three-phase: 3 voltages + 3 CTs).
# Written to the Microchip MCP3204/3208 datasheet (DS21298); it cannot run on the unix port,
# so it imports `machine`/`rp2` only in the constructors.
#
# Protocol (datasheet section 5 and figure 6-1), SPI mode 0,0, CS low per conversion:
# the device waits for a start bit (1), takes SGL/DIFF, D2, D1, D0 on rising SCK edges,
# samples for 1.5 clocks after D0, drives a null bit on the next falling edge and then
# B11..B0 on the following falling edges.  As three bytes (what a hardware SPI sends):
#   tx[0] = 0b00000110 | (ch >> 2)   start bit, single-ended, D2
#   tx[1] = (ch & 3) << 6            D1 D0
#   tx[2] = 0
#   result = ((rx[1] & 0x0F) << 8) | rx[2]
# Clock: at most 1 MHz at 2.7 V (2 MHz at 5 V), at least 10 kHz (the hold capacitor
# droops); CS high at least 500 ns between conversions.
#
# Two engines:
#   rp2 (PIO + DMA, board "mcu": "rp2040"): a PIO state machine runs the SPI itself, one
#     conversion per channel in the board's order, then pads to an exact set period, for
#     ever; its RX FIFO is drained by the same CPU-free DMA ring as the RP2040's own ADC
#     (rp2dma.py).  No CPU per sample: the 6 ch x 2.4 kS/s a timer IRQ could not carry
#     beside Wi-Fi and metrology (14 k conversions/s of Python, 70-100 % of core 0) costs
#     nothing, and flash erases (interrupts off) do not stop it.  Timing is exact and known:
#     a conversion takes 42 PIO cycles, the set period T cycles, the PIO clock
#     clk_sys / (T * rate) (16.8 fractional divider), so rate_actual and the slot skew
#     (42 PIO cycles) are computed, not guessed.  At most 6 channels (5 command bits each
#     in one 30-bit word).
#   timer (ESP32, or rp2 with "engine": "timer"): a machine.Timer tick converts every channel
#     through machine.SPI (blocks.TimerSampler: lost ticks counted by time).  About 25 us of
#     SPI plus MicroPython overhead per conversion: keep nch * rate low (docs/boards.md);
#     the slot skew is measured at start (skew_us).
from meternode.hal.blocks import Ring, TimerSampler, measure_skew

_CONV_CYCLES = 42  # PIO cycles per conversion (see _program)
_PAD_MAX = 264  # PIO cycles one padding loop can take (set + 32 x jmp with 7 delays)


def command(ch):
    # The three bytes that start a single-ended conversion of channel ch (0..7).
    if not 0 <= ch <= 7:
        raise ValueError("MCP3208 channel %d is outside 0..7" % ch)
    return bytes((0x06 | (ch >> 2), (ch & 3) << 6, 0))


def result(rx):
    return ((rx[1] & 0x0F) << 8) | rx[2]


def pattern(inputs):
    # The PIO's command word for one set: per channel 5 bits (start, SGL=1, D2 D1 D0),
    # first channel in the top bits (the OSR shifts left, MSB first).
    w = 0
    for ch in inputs:
        if not 0 <= ch <= 7:
            raise ValueError("MCP3208 channel %d is outside 0..7" % ch)
        w = (w << 5) | 0b11000 | ch
    return w << (32 - 5 * len(inputs))


def pads(cycles):
    # Split `cycles` of padding into three loops (set x, n [d1]; jmp x-- [d2]), each
    # (1 + d1) + (n + 1) * (1 + d2) cycles: 2..264 each.  -> [(n, d1, d2)] * 3
    if not 6 <= cycles <= 3 * _PAD_MAX:
        raise ValueError("MCP3208 set padding %d cycles is outside 6..%d" % (cycles, 3 * _PAD_MAX))
    out = []
    left = cycles
    for k in range(3):
        rest_min = 2 * (2 - k)  # what the later loops need at least
        c = min(_PAD_MAX, left - rest_min)
        if c >= 9:
            d2 = 7
            n = (c - 1) // 8 - 1
            if n > 31:
                n = 31
            d1 = c - 8 * (n + 1) - 1
            if d1 > 7:  # c - 8(n+1) - 1 <= 7 holds by construction; keep the bound explicit
                d1 = 7
        else:
            d2 = 0
            n = 0
            d1 = c - 2
        got = 1 + d1 + (n + 1) * (1 + d2)
        out.append((n, d1, d2))
        left -= got
    if left:
        raise ValueError("MCP3208 set padding %d cycles cannot be split" % cycles)
    return out


def timing(nch, rate, clk_sys, baudrate):
    # -> (T cycles per set, PIO divider x256, rate_actual, slot_us, pad loops).
    if not 1 <= nch <= 6:
        raise ValueError("board.channels: the MCP3208 PIO engine converts 1..6 channels, not %d" % nch)
    fixed = 1 + nch * _CONV_CYCLES
    t = (2 * baudrate) // rate  # SCK = PIO clock / 2 at most `baudrate`
    if t > fixed + 3 * _PAD_MAX:
        t = fixed + 3 * _PAD_MAX
    if t < fixed + 6:
        raise ValueError(
            "board.adc.rate %d x %d channels needs SCK above adc.spi.baudrate %d (at most %d sets/s)"
            % (rate, nch, baudrate, (2 * baudrate) // (fixed + 6))
        )
    div256 = (clk_sys * 256 + rate * t // 2) // (rate * t)
    if div256 < 256 or div256 >= 65536 * 256:
        raise ValueError("board.adc.rate %d is outside what the PIO clock divider reaches" % rate)
    rate_actual = clk_sys * 256.0 / (div256 * t)
    slot_us = _CONV_CYCLES * div256 / 256.0 / clk_sys * 1e6
    return t, div256, rate_actual, slot_us, pads(t - fixed)


def _program(rp2, nch, pad_loops):
    # The PIO program (assembled by rp2.asm_pio; pin roles: side-set bit 0 = CS, bit 1 = SCK
    # (CS and SCK on consecutive GPIOs, CS first), out = MOSI, in = MISO).  Cycle count per
    # conversion: set 1, command 5 x 2, sample 2, null + 12 bits 1 + 13 x 2, push 1, jmp 1 = 42.
    p0, p1, p2 = pad_loops
    n0, a0, b0 = p0
    n1, a1, b1 = p1
    n2, a2, b2 = p2

    @rp2.asm_pio(
        out_init=rp2.PIO.OUT_LOW,
        sideset_init=(rp2.PIO.OUT_HIGH, rp2.PIO.OUT_LOW),
        out_shiftdir=rp2.PIO.SHIFT_LEFT,
        in_shiftdir=rp2.PIO.SHIFT_LEFT,
        pull_thresh=5 * nch,
    )
    def prog():
        pull(block).side(1)  # once: the set's command word (the CPU's put())
        mov(y, osr).side(1)  # kept in Y for ever
        wrap_target()
        mov(osr, y).side(1)  # a new set: the commands again (output shift count to 0)
        label("conv")
        set(x, 4).side(1)  # CS high (3 cycles with push/jmp: >= 500 ns up to 6 MHz)
        label("cmd")
        out(pins, 1).side(0)  # SCK low, CS low, MOSI = start/SGL/D2/D1/D0
        jmp(x_dec, "cmd").side(2)  # SCK high: the MCP3208 latches the bit
        nop().side(0)  # sixth clock: the sample-and-hold completes
        set(x, 12).side(2)
        nop().side(0)  # falling edge: the null bit comes out
        label("bit")
        in_(pins, 1).side(2)  # SCK high: read null, then B11..B0
        jmp(x_dec, "bit").side(0)  # SCK low: the next bit comes out
        push(block).side(1)  # CS high; the result to the RX FIFO (stalls if it is full)
        jmp(not_osre, "conv").side(1)  # the next channel of the set
        set(x, n0).side(1)[a0]  # pad the set to exactly T cycles
        label("pad0")
        jmp(x_dec, "pad0").side(1)[b0]
        set(x, n1).side(1)[a1]
        label("pad1")
        jmp(x_dec, "pad1").side(1)[b1]
        set(x, n2).side(1)[a2]
        label("pad2")
        jmp(x_dec, "pad2").side(1)[b2]
        wrap()

    return prog


_PIO_BASE = (0x50200000, 0x50300000)
_RXF0 = 0x20
_SM0_CLKDIV = 0xC8
_SM_STRIDE = 0x18
_FDEBUG = 0x08


class MCP3208PioSampler:
    def __init__(self, board):
        import machine
        import rp2

        adc = board["adc"]
        spi = adc["spi"]
        self.nch = len(board["channels"])
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        self.bits = 12
        self.inputs = adc.get("inputs", list(range(self.nch)))
        if len(self.inputs) != self.nch:
            raise ValueError("board.adc.inputs must list one MCP3208 channel per board channel")
        self._pattern = pattern(self.inputs)
        if spi["sck"] != spi["cs"] + 1:
            raise ValueError("board.adc.spi: the PIO engine needs sck on the GPIO after cs (side-set pins)")
        clk = machine.freq()
        self.clk_sys = clk
        t, div256, self.rate_actual, self.skew_us, loops = timing(
            self.nch, self.rate, clk, spi.get("baudrate", 1000000)
        )
        self.set_cycles = t
        self.div256 = div256
        self.note = None
        if abs(self.rate_actual - self.rate) > 0.0005:
            self.note = "adc.rate %d/s: the PIO paces %.4f sets/s (the meter measures it)" % (
                self.rate,
                self.rate_actual,
            )
        smid = adc.get("pio_sm", 0)
        if not 0 <= smid <= 7:
            raise ValueError("board.adc.pio_sm = %r must be 0..7" % smid)
        self._smid = smid
        pio = smid >> 2
        sm = smid & 3
        self._clkdiv = _PIO_BASE[pio] + _SM0_CLKDIV + _SM_STRIDE * sm
        self._fdebug = _PIO_BASE[pio] + _FDEBUG
        self._stall_bit = 1 << sm  # FDEBUG.RXSTALL (bits 3:0): a push waited on a full FIFO
        self._mem = machine.mem32
        self._prog = _program(rp2, self.nch, loops)
        self._pins = (
            machine.Pin(spi["cs"], machine.Pin.OUT, value=1),
            machine.Pin(spi["mosi"], machine.Pin.OUT, value=0),
            machine.Pin(spi["miso"], machine.Pin.IN),
        )
        self._sm = None
        self._rp2 = rp2
        from meternode.hal.rp2dma import DmaRing

        self.ring = Ring(self.nch, self.block_sets, adc.get("ring", 8))
        self.bufs = self.ring.bufs
        treq = (4 if pio == 0 else 12) + sm  # DREQ_PIOx_RX0 + sm
        # times in 1/256 system clocks
        upus = clk * 256 // 1000000
        self.dma = DmaRing(self.ring, _PIO_BASE[pio] + _RXF0 + 4 * sm, treq, _CONV_CYCLES * div256, t * div256, upus)
        self.stalls = 0
        self.stamp_us = 0
        self.lost = 0
        self.running = False

    @property
    def overruns(self):
        return self.dma.overruns

    def start(self):
        import time

        rp2 = self._rp2
        cs, mosi, miso = self._pins
        sm = rp2.StateMachine(self._smid, self._prog, sideset_base=cs, out_base=mosi, in_base=miso)
        self._sm = sm
        # the exact divider (16.8), written where StateMachine(freq=) would round it
        self._mem[self._clkdiv] = (self.div256 >> 8) << 16 | (self.div256 & 0xFF) << 8
        self._mem[self._fdebug] = self._stall_bit  # clear RXSTALL (write 1)
        sm.put(self._pattern)
        self.dma.arm()
        t = time.ticks_us()
        sm.active(1)
        self.dma.started(t)
        self.running = True

    def stop(self):
        if self._sm is not None:
            self._sm.active(0)
        self.dma.disarm()
        if self._sm is not None:
            while self._sm.rx_fifo():
                self._sm.get()
        self.running = False

    async def next_block(self):
        d = self.dma
        d.release()
        while True:
            if self._mem[self._fdebug] & self._stall_bit:
                self.stalls += 1  # the DMA fell 4 results behind: the PIO waited (timing, not order)
                self._mem[self._fdebug] = self._stall_bit
            buf = d.take()
            if buf is not None:
                self.stamp_us = d.stamp_us
                self.lost = d.lost
                return buf
            await self.ring.flag.wait()


class MCP3208Sampler(TimerSampler):
    def __init__(self, board):
        import machine

        adc = board["adc"]
        spi = adc["spi"]
        self.nch = len(board["channels"])
        self.rate = adc["rate"]
        self.block_sets = adc["block"]
        self.bits = 12
        inputs = adc.get("inputs", list(range(self.nch)))
        if len(inputs) != self.nch:
            raise ValueError("board.adc.inputs must list one MCP3208 channel per board channel")
        self._tx = [command(c) for c in inputs]
        self._rx = bytearray(3)
        self._spi = machine.SPI(
            spi.get("id", 0),
            baudrate=spi.get("baudrate", 1000000),
            polarity=0,
            phase=0,
            sck=machine.Pin(spi["sck"]),
            mosi=machine.Pin(spi["mosi"]),
            miso=machine.Pin(spi["miso"]),
        )
        self._cs = machine.Pin(spi["cs"], machine.Pin.OUT, value=1)
        self._timer = machine.Timer(-1) if adc.get("timer") is None else machine.Timer(adc["timer"])
        self._init_ring(adc)
        self.skew_us = measure_skew(self)

    def _read_set(self, buf, i):
        rx = self._rx
        cs = self._cs
        spi = self._spi
        for tx in self._tx:
            cs(0)
            spi.write_readinto(tx, rx)
            cs(1)
            buf[i] = ((rx[1] & 0x0F) << 8) | rx[2]
            i += 1
        return i


def make_sampler(board):
    # The PIO engine on RP2040 boards, the timer engine elsewhere (or on request).
    engine = board["adc"].get("engine")
    if engine is None:
        engine = "pio" if board.get("mcu") == "rp2040" else "timer"
    if engine == "pio":
        return MCP3208PioSampler(board)
    if engine == "timer":
        return MCP3208Sampler(board)
    raise ValueError("board.adc.engine must be pio or timer, not %r" % engine)


class MCP3208Hal:
    def __init__(self, board, config):
        from meternode.hal.rp2040 import RP2Clock

        self.clock = RP2Clock()
        self.sampler = make_sampler(board)
        # the meter's phase correction uses the slot spacing this sampler really has
        board["adc"]["skew_us"] = self.sampler.skew_us
        from meternode.hal import modem

        modem.attach(self, board)  # board "lora": the modem's UART and reset line
