# MCP3208 sampler: an external 12-bit, 8-channel SAR ADC on SPI (as IoTaWatt uses), for
# boards that need more inputs than the MCU has (three-phase: 3 voltages + 3 CTs), on
# RP2040 or ESP32.  Written to the Microchip MCP3204/3208 datasheet; it cannot run on the
# unix port, so it imports `machine` only in the constructor.
#
# Protocol (datasheet section 6, "Using the MCP3204/3208 with microcontroller SPI ports"),
# SPI mode 0,0, three bytes per conversion with CS low:
#   tx[0] = 0b00000110 | (ch >> 2)   start bit, single-ended, D2
#   tx[1] = (ch & 3) << 6            D1 D0
#   tx[2] = 0
#   result = ((rx[1] & 0x0F) << 8) | rx[2]
# Clock: at most 1 MHz at 2.7 V (2 MHz at 5 V); 24 clocks per conversion.  Sampling is
# paced by a machine.Timer at adc.rate sets/s; each tick converts every channel in the
# board's order, so consecutive channels are one conversion (+ call overhead) apart, which
# adc.skew_us states for the meter's phase correction.  CPU load: about 25 us per
# conversion at 1 MHz plus MicroPython overhead; 6 channels at 2.4 kS/s is ~14 k
# conversions/s, most of one RP2040 core (documented in docs/metrology.md).
from meternode.hal.blocks import TimerSampler


def command(ch):
    # The three bytes that start a single-ended conversion of channel ch (0..7).
    if not 0 <= ch <= 7:
        raise ValueError("MCP3208 channel %d is outside 0..7" % ch)
    return bytes((0x06 | (ch >> 2), (ch & 3) << 6, 0))


def result(rx):
    return ((rx[1] & 0x0F) << 8) | rx[2]


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
        self._init_blocks()

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


class MCP3208Hal:
    def __init__(self, board, config):
        from meternode.hal.rp2040 import RP2Clock

        self.clock = RP2Clock()
        self.sampler = MCP3208Sampler(board)
