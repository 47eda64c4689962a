# The RP2040 ADC sampler (hal/rp2040.py + hal/rp2dma.py) against the register-level
# stand-in of the chip (hil/umeter_hil/board_shim/rp2hw.py): the DMA keeps running while
# interrupts are masked for a flash erase, a FIFO overflow, stop/restart, the divider.
import asyncio

from board_standins import board, build, check_blocks

from mptest import eq, heap, raises

_DC = (1000, 2000, 3000)  # each ADC input's own level; + the set index mod 256


def _chip():
    import rp2hw

    chip = rp2hw.RP2040()
    chip.source = lambda inp, t_us: _DC[inp] + (chip.adc.conversions // 3) % 256
    chip.lock_irq = True  # the DMA IRQ handler runs with the heap locked: it must not allocate
    return chip


def _sampler(chip, b=None):
    def make():
        from meternode.hal import rp2040

        return rp2040.RP2Sampler(b or board("pico_w"))

    return build(chip, make)


async def _collect(chip, s, ms, out):
    # Run the chip `ms` in 10 ms steps, taking every block the sampler hands out.
    for _ in range(ms // 10):
        chip.run_us(10000)
        while True:
            try:
                buf = await asyncio.wait_for_ms(s.next_block(), 1)
            except asyncio.TimeoutError:
                break
            out.append((list(buf), getattr(s, "stamp_us", 0), getattr(s, "lost", 0)))


@heap("512k")
async def test_rp2040_dma_ring_survives_flash_erases_with_interrupts_masked():
    chip = _chip()
    s = _sampler(chip)
    s.start()
    blocks = []
    await _collect(chip, s, 500, blocks)
    chip.flash_erase_us(180000)  # within the ring (6 blocks of 40 ms wait): nothing lost
    await _collect(chip, s, 300, blocks)
    chip.flash_erase_us(420000)  # longer than the ring: blocks lost, counted, never corrupt
    await _collect(chip, s, 500, blocks)
    eq((chip.wild, chip.wild_at), (0, []), "DMA writes outside every buffer (heap corruption on a board)")
    eq(s.ring.canaries_ok(), True, "canaries around each block")
    sets, lost = check_blocks(blocks, 3, s.rate_actual, _DC, 256, 50)
    eq(lost > 0 and lost % 160 == 0, True, "the long erase lost whole blocks: %d sets" % lost)
    eq(len(blocks) > 25, True, "blocks delivered: %d" % len(blocks))
    eq(s.overruns, 1, "one catch-up after the long erase")
    eq(chip.irqs > 0, True, "completion IRQs ran (under heap_lock)")


@heap("512k")
async def test_rp2040_fifo_overflow_restarts_from_a_set_boundary():
    # An overflow drops one result with no channel tag: without a restart every later set
    # would be rotated (I1 in V's column).  The sampler restarts and counts the gap.
    chip = _chip()
    s = _sampler(chip)
    s.start()
    blocks = []
    await _collect(chip, s, 200, blocks)
    chip.starve = True  # the DMA gets no bus for 1 ms: the 4-deep FIFO overflows
    chip.run_us(1000)
    chip.starve = False
    await _collect(chip, s, 300, blocks)
    eq(chip.adc.fcs & 0x800, 0, "OVER cleared")
    eq(s.resyncs, 1, "restarted once")
    check_blocks(blocks, 3, s.rate_actual, _DC, 256, 200)
    eq(blocks[-1][2] > 0, True, "the gap is counted in lost")


@heap("512k")
async def test_rp2040_stop_masks_the_irq_before_the_abort_and_restart_starts_clean():
    chip = _chip()
    s = _sampler(chip)
    s.start()
    blocks = []
    await _collect(chip, s, 100, blocks)
    irqs = chip.irqs
    s.stop()
    eq(chip.spurious > 0, True, "the abort raised RP2040-E13's spurious completion")
    chip.run_us(5000)
    eq(chip.irqs, irqs, "no handler ran for it: the IRQ was disabled first and INTR cleared")
    eq(chip.intr, 0, "INTR clear")
    eq(len(chip.adc.fifo), 0, "FIFO drained")
    s.start()
    again = []
    await _collect(chip, s, 100, again)
    eq(again[0][2], 0, "lost starts at 0 after a restart")
    check_blocks(again, 3, s.rate_actual, _DC, 256, 200)


@heap("512k")
def test_rp2040_adc_is_powered_up_and_ready_before_conversions_start():
    chip = _chip()
    s = _sampler(chip)
    s.start()
    log = chip.adc.cs_log
    eq(log[0] & 0b1001, 1, "first CS write: EN alone, no START_MANY")
    eq(chip.adc.started_unready, 0, "START_MANY only after READY was seen")
    eq((log[-1] >> 16) & 0x1F, 0b111, "round robin over inputs 0-2")
    eq((log[-1] >> 12) & 7, 0, "from AINSEL 0")


@heap("512k")
def test_rp2040_divider_uses_frac_and_refuses_what_it_cannot_reach():
    from meternode.hal.rp2040 import adc_divider

    eq(adc_divider(3, 4000), (3999, 0, 4000.0), "48 MHz / 12 kS/s exactly")
    i, f, r = adc_divider(3, 3000)  # 5333.33 cycles: INT 5332, FRAC 85
    eq((i, f), (5332, 85), "fractional divider")
    eq(abs(r - 3000) < 0.02, True, "rate_actual %r" % r)
    e = raises(ValueError, adc_divider, 1, 400)  # 120000 cycles: INT above 16 bits
    eq("board.adc.rate" in str(e), True, str(e))
    e = raises(ValueError, adc_divider, 3, 200000)
    eq("500 kS/s" in str(e), True, str(e))
    chip = _chip()
    b = board("pico_w")
    b["adc"]["rate"] = 3000
    s = _sampler(chip, b)
    eq(s.note is not None and "3000.0" in s.note, True, "the note says what the divider gives: %r" % s.note)
    eq(abs(s.skew_us - 111.1107) < 0.001, True, "skew from the divider: %r" % s.skew_us)


_DC6 = (100, 700, 1300, 1900, 2500, 3100)


@heap("1m")
async def test_mcp3208_pio_sampler_runs_without_the_cpu_in_board_order_at_an_exact_rate():
    # pico_w_mcp3208: the PIO runs the SPI and paces the sets, the DMA ring drains it; a
    # flash erase (interrupts off) costs nothing, the channels come in the board's order.
    import rp2hw

    chip = rp2hw.RP2040(hz=125000000 * 256)
    chip.lock_irq = True
    b = board("pico_w_mcp3208")
    inputs = b["adc"]["inputs"]
    box = {}
    chip.source = lambda ch, t_us: _DC6[inputs.index(ch)] + int(t_us * box["rate"] / 1e6) % 256

    def make():
        from meternode.hal import mcp3208

        return mcp3208.make_sampler(b)

    s = build(chip, make)
    box["rate"] = s.rate_actual
    eq(type(s).__name__, "MCP3208PioSampler", "rp2040 boards use the PIO engine")
    eq(abs(s.rate_actual - 2400) < 0.2, True, "rate_actual %r" % s.rate_actual)
    eq(abs(s.skew_us - 42 * s.div256 / 256 / 125.0) < 1e-3, True, "skew = 42 PIO cycles: %r" % s.skew_us)
    build(chip, s.start)
    sm = chip.sms[0]
    eq(sm.errors, [], "MCP3208 timing (tCSH, clock) in the learned run")
    eq(sm.channels, inputs, "the PIO converts the board's inputs in order")
    eq(sm.offsets, [42 * (k + 1) for k in range(6)], "one conversion every 42 PIO cycles")
    eq(sm.period_cycles, s.set_cycles, "set period")
    blocks = []
    await _collect(chip, s, 300, blocks)
    chip.flash_erase_us(150000)
    await _collect(chip, s, 300, blocks)
    eq((chip.wild, s.ring.canaries_ok(), s.stalls), (0, True, 0), "no wild write, canaries, no PIO stall")
    check_blocks(blocks, 6, s.rate_actual, _DC6, 256, 50)


@heap("1m")
async def test_the_meter_measures_the_rate_and_counts_the_gaps_the_rp2040_sampler_reports():
    # The sampler side of the timebase contract (hal/__init__.py) into the real Meter: a
    # 3000/s board (FRAC divider: 3000.0125/s), a flash erase longer than the ring.
    import math

    import rp2hw

    from meternode.metrology.meter import Meter

    chip = rp2hw.RP2040()
    b = board("pico_w")
    b["adc"]["rate"] = 3000
    b["adc"]["block"] = 150
    for ch in b["channels"]:
        ch.pop("cal", None)

    def src(inp, t_us):
        a = (1400, 700, 0)[inp]
        return 2048 + int(a * math.sin(2 * math.pi * 50 * t_us / 1e6) + 0.5)

    chip.source = src
    s = _sampler(chip, b)
    b["adc"]["skew_us"] = s.skew_us
    m = Meter(b, None, {"quality": False})
    m.use_rate(s.rate_actual)
    build(chip, s.start)
    for k in range(300):  # 6 s in 20 ms steps
        if k == 150:
            chip.flash_erase_us(500000)
        chip.run_us(20000)
        while True:
            try:
                buf = await asyncio.wait_for_ms(s.next_block(), 1)
            except asyncio.TimeoutError:
                break
            m.feed(buf, s.block_sets, s.lost, s.stamp_us)
    eq(s.lost > 0, True, "the long erase lost blocks")
    eq((m.lost_sets, m.gaps), (s.lost, 1), "the meter counted the sampler's gap")
    eq(abs(m.rate / s.rate_actual - 1) < 50e-6, True, "measured %r vs %r" % (m.rate, s.rate_actual))
    snap = m.snapshot()
    v = snap["voltages"]["V1"]
    eq(abs(v / (1400 * 0.2 / math.sqrt(2)) - 1) < 0.01, True, "Vrms %r" % v)


async def test_the_board_clock_sleeps_in_asyncio_and_can_be_cancelled():
    # BoardClock.sleep_ms hands out asyncio's own awaitable (no coroutine of ours held by each
    # sleeping task; the hal/__init__.py contract: awaited where it is asked for, not made a
    # task): it must sleep as long as asked, and a task asleep in it must be cancellable.
    import time

    from meternode.hal.clock import BoardClock

    c = BoardClock()
    t0 = time.ticks_ms()
    await c.sleep_ms(30)
    eq(time.ticks_diff(time.ticks_ms(), t0) >= 30, True, "slept %d ms of 30" % time.ticks_diff(time.ticks_ms(), t0))

    async def nap():
        await c.sleep_ms(10000)

    t0 = time.ticks_ms()
    try:
        await asyncio.wait_for_ms(nap(), 20)
        cancelled = False
    except asyncio.TimeoutError:
        cancelled = True
    eq(cancelled, True, "a 10-s sleep inside a 20-ms wait_for")
    eq(time.ticks_diff(time.ticks_ms(), t0) < 5000, True, "the wait_for returned at once")
