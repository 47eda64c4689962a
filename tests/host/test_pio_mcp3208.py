"""The MCP3208 PIO program (firmware/meternode/hal/mcp3208.py) at PIO-cycle level on CPython:
the stand-in assembler's encodings against the RP2040 datasheet's tables (section 3.4), the
MCP3208 model against the datasheet's byte-level SPI protocol, then the program itself
against the model for several clocks, rates and channel counts: every conversion in board
order, exact set period, SPI timing inside the device's limits."""

from __future__ import annotations

from itertools import pairwise

import pytest

from meternode.hal import mcp3208
from umeter_hil.board_shim import rp2hw

RP2 = rp2hw._Rp2(None)


def _assemble(body, **kw):
    return RP2.asm_pio(**kw)(body).words


def test_assembler_encodings_match_the_datasheet():
    # RP2040 datasheet 3.4: NOP is MOV Y, Y; PULL/PUSH block bit 5; MOV dst 7:5 src 2:0; SET
    # dst 7:5 data 4:0; OUT/IN dst/src 7:5 count 4:0; JMP cond 7:5 address 4:0.
    def body():
        label("top")  # noqa: F821
        nop()  # noqa: F821
        pull(block)  # noqa: F821
        push(block)  # noqa: F821
        mov(y, osr)  # noqa: F821
        mov(osr, y)  # noqa: F821
        set(x, 4)  # noqa: F821
        out(pins, 1)  # noqa: F821
        in_(pins, 1)  # noqa: F821
        jmp(x_dec, "top")  # noqa: F821
        jmp(not_osre, "top")  # noqa: F821

    assert _assemble(body) == [0xA042, 0x80A0, 0x8020, 0xA047, 0xA0E2, 0xE024, 0x6001, 0x4001, 0x0040, 0x00E0]

    def sided():
        nop().side(1)[7]  # noqa: F821
        nop().side(2)  # noqa: F821

    # two side-set bits, not optional: value in 12:11, delay in 10:8 (at most 7)
    assert _assemble(sided, sideset_init=(rp2hw.PIO.OUT_HIGH, rp2hw.PIO.OUT_LOW)) == [0xAF42, 0xB042]


def _spi_byte_transfer(dev, pins, cs, sck, mosi, miso, tx, t0, half_ns):
    # SPI mode 0,0 as a hardware SPI sends bytes: CS low, per bit MOSI then SCK up (sample
    # MISO), SCK down.  Returns the received bytes.
    t = t0
    pins[cs] = 0
    dev(t / dev.ns)
    rx = []
    for byte in tx:
        r = 0
        for bit in range(7, -1, -1):
            pins[mosi] = (byte >> bit) & 1
            t += half_ns
            pins[sck] = 1
            dev(t / dev.ns)
            r = (r << 1) | pins[miso]
            t += half_ns
            pins[sck] = 0
            dev(t / dev.ns)
        rx.append(r)
    pins[cs] = 1
    dev((t + half_ns) / dev.ns)
    return bytes(rx), t + 10 * half_ns


def test_mcp3208_model_answers_the_datasheet_byte_protocol():
    pins = {17: 1, 18: 0, 19: 0}
    dev = rp2hw.Mcp3208(pins, 17, 18, 19, 16, lambda ch, t: 0x100 * ch + 0x2A, ns_per_cycle=1)
    t = 1000
    for ch in range(8):
        rx, t = _spi_byte_transfer(dev, pins, 17, 18, 19, 16, mcp3208.command(ch), t, 500)
        assert mcp3208.result(rx) == 0x100 * ch + 0x2A, ch
    assert dev.errors == []
    assert [c for c, _ in dev.conversions] == list(range(8))


@pytest.mark.parametrize(
    ("clk", "rate", "inputs"),
    [
        (125_000_000, 2400, [0, 3, 1, 4, 2, 5]),  # pico_w_mcp3208 at the default clock
        (133_000_000, 2400, [0, 3, 1, 4, 2, 5]),
        (125_000_000, 2000, [0, 1, 2]),
        (150_000_000, 1000, [7, 6, 5, 4, 3, 2]),
    ],
)
def test_pio_program_converts_each_channel_in_order_at_the_exact_set_period(clk, rate, inputs):
    nch = len(inputs)
    t_cycles, div256, rate_actual, slot_us, loops = mcp3208.timing(nch, rate, clk, 1_000_000)
    assert abs(rate_actual / rate - 1) < 100e-6
    assert rate_actual == pytest.approx(clk * 256 / (div256 * t_cycles))
    prog = mcp3208._program(RP2, nch, loops)
    assert len(prog.words) <= 32
    pins: dict[int, int] = {}
    ns = div256 / 256 / clk * 1e9
    dev = rp2hw.Mcp3208(pins, 17, 18, 19, 16, lambda ch, t: 37 + 500 * ch, ns, fmax=1_000_000 * 1.0001)
    sm = rp2hw.Sm(prog, pins, in_base=16, out_base=19, sideset_base=17, on_pins=dev)
    sm.tx = [mcp3208.pattern(inputs)]
    while len(sm.wraps) < 4:
        sm.step()
        sm.rx.clear()
    assert dev.errors == []
    periods = {b - a for a, b in pairwise(sm.wraps)}
    assert periods == {t_cycles}, "every set takes exactly T PIO cycles"
    values = [v for _, v in sm.pushes]
    assert values[: 3 * nch] == [37 + 500 * ch for ch in inputs] * 3, "13-bit results: null bit 0, B11..B0"
    cycles = [c for c, _ in sm.pushes]
    for s in range(3):
        conv = cycles[s * nch : (s + 1) * nch]
        assert [b - a for a, b in pairwise(conv)] == [42] * (nch - 1)
    assert slot_us == pytest.approx(42 * ns / 1000)


def test_timing_refuses_what_the_spi_clock_cannot_carry():
    with pytest.raises(ValueError, match=r"board\.adc\.rate 8000 x 6 channels needs SCK above"):
        mcp3208.timing(6, 8000, 125_000_000, 1_000_000)
    with pytest.raises(ValueError, match=r"board\.channels: the MCP3208 PIO engine converts 1\.\.6"):
        mcp3208.timing(7, 1000, 125_000_000, 1_000_000)
    for cycles in (6, 7, 100, 264, 265, 500, 792):
        loops = mcp3208.pads(cycles)
        assert sum(1 + d1 + (n + 1) * (1 + d2) for n, d1, d2 in loops) == cycles
        assert all(0 <= n <= 31 and 0 <= d1 <= 7 and 0 <= d2 <= 7 for n, d1, d2 in loops)
