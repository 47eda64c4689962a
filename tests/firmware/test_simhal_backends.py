# The board backends (rp2040, esp32, mcp3208) cannot run here; these tests import them
# cleanly on the unix port.  Their behaviour is tested against the hardware stand-ins in
# test_board_rp2040.py (ADC + DMA ring, PIO) and test_board_timers.py (timer IRQs).
from mptest import eq, heap, raises


@heap("192k")  # every backend at once; a board loads one
def test_backends_import_cleanly_without_machine():
    from meternode.hal import esp32, mcp3208, pulsein, rp2dma, rp2040

    eq(mcp3208.command(5), bytes((0x07, 0x40, 0x00)), "MCP3208 start/single-ended/channel 5")
    eq(mcp3208.result(bytes((0xFF, 0xEA, 0xBC))), 0xABC, "12-bit result, high bits masked")
    raises(ValueError, mcp3208.command, 8)
    eq(
        hasattr(esp32, "ESP32Sampler")
        and hasattr(rp2040, "RP2Sampler")
        and hasattr(pulsein, "make")
        and hasattr(rp2dma, "DmaRing"),
        True,
        "classes",
    )


def test_hal_make_names_unknown_backends():
    from meternode.hal import halinit

    e = raises(ValueError, halinit.make, {"hal": "stm32"}, {})
    eq("stm32" in str(e) and "mcp3208" in str(e), True, str(e))
