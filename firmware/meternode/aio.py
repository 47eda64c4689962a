# Millisecond time and asyncio waits, the same names on MicroPython and CPython, so the pure
# link modules (MQTT, LoRaWAN, outbox) also run on the host (fleet simulator, tests).
import asyncio

from meternode import ticks as _t

try:
    from asyncio import sleep_ms, wait_for_ms
except ImportError:  # CPython

    def wait_for_ms(aw, ms):
        return asyncio.wait_for(aw, ms / 1000)

    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


# Ticks for the link layer: the board's wall ticks (ticks.py), 30-bit and wrapping on every
# port (the sim HAL starts them a few seconds before a wrap), with the board's arithmetic.
# The ticks module's own functions, not wrappers (a function object each): they read its
# offsets at every call, so ticks.rebase() still applies.
ticks_ms = _t.ms
ticks_us = _t.us
ticks_diff = _t.diff
ticks_add = _t.add
