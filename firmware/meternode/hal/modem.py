# The board's LoRaWAN modem (board "lora": {"module", "uart", "tx", "rx", "baud", "reset"}),
# for the board HALs: its UART as the stream link/loraservice.py wraps in asyncio, and its
# reset line.  Pins are checked with the others at start (hal/pins.py).
#
# RAK3172 (RAK3172 datasheet, pin "RST": reset, active low, pulled up inside the module):
# UART2 of the module (its AT port, 115200 8N1) on the MCU's UART `uart` (RP2040 UART1 on
# GPIO4/5, ESP32 UART2 on GPIO17/16 in the shipped boards); `reset` is driven low for
# `reset_ms` and then released (input), never driven high: the module's pull-up brings it
# back, and a module powered from elsewhere is never back-fed.
from meternode.config import ConfigError, need


def check(spec, where="board.lora"):
    if not isinstance(spec, dict):
        raise ConfigError("%s must be an object with uart, tx, rx" % where)
    need(spec, "uart", int, where, lo=0, hi=2)
    need(spec, "tx", int, where, lo=0, hi=48)
    need(spec, "rx", int, where, lo=0, hi=48)
    need(spec, "baud", int, where, default=115200, lo=1200, hi=1000000)
    need(spec, "reset", int, where, default=-1, lo=-1, hi=48)
    return spec


class ModemPort:
    def __init__(self, spec):
        self.spec = check(spec)
        self.resets = 0

    def uart(self, lo=None):
        # The modem's UART as a stream (machine.UART speaks the stream protocol asyncio needs).
        import machine

        s = self.spec
        return machine.UART(
            s["uart"], baudrate=s.get("baud", 115200), tx=machine.Pin(s["tx"]), rx=machine.Pin(s["rx"]), rxbuf=1024
        )

    def reset(self, reset_ms=20):
        # Pulses the module's reset line; False when the board has none.
        n = self.spec.get("reset", -1)
        if n < 0:
            return False
        import time

        import machine

        p = machine.Pin(n, machine.Pin.OUT, value=0)
        time.sleep_ms(reset_ms)
        p.init(machine.Pin.IN)  # released: the module's pull-up ends the reset
        self.resets += 1
        return True


def attach(h, board):
    # Gives a board HAL lora_uart(lo) and modem_reset() when the board has a modem.
    spec = board.get("lora")
    if spec:
        m = ModemPort(spec)
        h.modem = m
        h.lora_uart = m.uart
        h.modem_reset = m.reset
