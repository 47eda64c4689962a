# The board backends (rp2040, esp32, mcp3208) cannot run here; these tests import them
# cleanly on the unix port and drive them through stand-in machine/rp2 modules to pin the
# register values, the SPI protocol and the ping-pong/overrun accounting.
import asyncio
import sys

from metrology_rig import board

from mptest import eq, heap, raises


class _Mem(dict):
    def __getitem__(self, k):
        return self.get(k, 0)


class _Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, n, *a, **kw):
        self.n = n
        self.v = kw.get("value", 0)

    def __call__(self, v):
        self.v = v


class _ADC:
    ATTN_0DB = 0
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def read_u16(self):
        return 0x8000 + 16 * self.pin.n

    def read_uv(self):
        return 1650000


class _Timer:
    PERIODIC = 1

    def __init__(self, n):
        self.cb = None

    def init(self, mode=None, freq=None, callback=None):
        self.freq = freq
        self.cb = callback

    def deinit(self):
        self.cb = None


class _SPI:
    def __init__(self, *a, **kw):
        self.sent = []

    def write_readinto(self, tx, rx):
        if len(self.sent) < 12:
            self.sent.append(bytes(tx))
        ch = ((tx[0] & 1) << 2) | (tx[1] >> 6)
        val = 100 * ch + 7
        rx[0] = 0xFF
        rx[1] = 0xE0 | (val >> 8)  # high bits undefined in the reply: must be masked
        rx[2] = val & 0xFF


class _Machine:
    Pin = _Pin
    ADC = _ADC
    Timer = _Timer
    SPI = _SPI
    mem32 = _Mem()


class _DMA:
    n = 0

    def __init__(self):
        self.channel = _DMA.n
        _DMA.n += 1

    def pack_ctrl(self, **kw):
        return kw

    def config(self, **kw):
        self.cfg = kw

    def irq(self, handler, hard=False):
        self.handler = handler

    def active(self, v=None):
        self.on = v


class _Rp2:
    DMA = _DMA


def _with_fakes(fn):
    sys.modules["machine"] = _Machine
    sys.modules["rp2"] = _Rp2
    try:
        return fn()
    finally:
        del sys.modules["machine"]
        del sys.modules["rp2"]


@heap("192k")  # every backend at once; a board loads one
def test_backends_import_cleanly_without_machine():
    from meternode.hal import esp32, mcp3208, pulsein, rp2040

    eq(mcp3208.command(5), bytes((0x07, 0x40, 0x00)), "MCP3208 start/single-ended/channel 5")
    eq(mcp3208.result(bytes((0xFF, 0xEA, 0xBC))), 0xABC, "12-bit result, high bits masked")
    raises(ValueError, mcp3208.command, 8)
    eq(hasattr(esp32, "ESP32Sampler") and hasattr(rp2040, "RP2Sampler") and hasattr(pulsein, "make"), True, "classes")


@heap("192k")
def test_rp2040_sampler_programs_round_robin_div_and_chained_dma():
    from meternode.hal import rp2040

    b = board("pico_w")
    s = _with_fakes(lambda: rp2040.RP2Sampler(b))
    _Machine.mem32.clear()
    s.start()
    m = _Machine.mem32
    base = 0x4004C000
    eq(m[base + 0x10], (48000000 // (3 * 4000) - 1) << 8, "DIV for 3 inputs at 4 kS/s")
    cs = m[base]
    eq(cs & 1, 1, "ADC enabled")
    eq((cs >> 3) & 1, 1, "START_MANY")
    eq((cs >> 16) & 0x1F, 0b111, "round robin over inputs 0-2")
    eq(m[base + 8] & 0b1001, 0b1001, "FIFO enabled with DREQ")
    ca = s._a.cfg["ctrl"]
    eq((ca["size"], ca["inc_read"], ca["treq_sel"], ca["chain_to"]), (1, False, 36, s._b.channel), "DMA A ctrl")
    eq(s._b.cfg["ctrl"]["chain_to"], s._a.channel, "B chains back to A")
    eq(s._a.cfg["count"], 3 * 160, "block length in halfwords")
    eq(s._a.cfg["read"], base + 0x0C, "reads the FIFO")
    e = raises(ValueError, _with_fakes, lambda: rp2040.RP2Sampler(dict(b, adc=dict(b["adc"], rate=200000))))
    eq("500 kS/s" in str(e), True, str(e))


@heap("192k")
async def test_ping_pong_blocks_count_an_overrun_when_the_consumer_is_late():
    from meternode.hal import esp32

    b = board("esp32_devkitc")
    s = _with_fakes(lambda: esp32.ESP32Sampler(b))
    _with_fakes(s.start)
    for _ in range(b["adc"]["block"]):
        s._on_tick(None)
    blk = await s.next_block()
    eq(blk is s.blocks.bufs[0], True, "first block")
    eq(s.overruns, 0, "no overrun")
    eq(blk[0], 1650000 * 4096 // 3300000, "eFuse-calibrated microvolts to counts")
    for _ in range(3 * b["adc"]["block"]):  # three blocks before the consumer comes back
        s._on_tick(None)
    await s.next_block()
    eq(s.overruns, 2, "two blocks dropped and counted")
    e = raises(ValueError, _with_fakes, lambda: esp32.ESP32Sampler(dict(b, adc=dict(b["adc"], pins=[36, 39, 34, 4]))))
    eq("GPIO4" in str(e), True, str(e))


@heap("192k")
async def test_mcp3208_sampler_reads_each_channel_per_tick_in_board_order():
    from meternode.hal import mcp3208

    b = board("pico_w_mcp3208")
    s = _with_fakes(lambda: mcp3208.MCP3208Sampler(b))
    for _ in range(b["adc"]["block"]):
        s._on_tick(None)
    blk = await asyncio.wait_for(s.next_block(), 1)
    eq(list(blk[:6]), [100 * c + 7 for c in range(6)], "one set")
    eq(s._spi.sent[:2], [bytes((6, 0, 0)), bytes((6, 64, 0))], "commands")
    eq(s._cs.v, 1, "CS released")


def test_hal_make_names_unknown_backends():
    from meternode import hal

    e = raises(ValueError, hal.make, {"hal": "stm32"}, {})
    eq("stm32" in str(e) and "mcp3208" in str(e), True, str(e))
