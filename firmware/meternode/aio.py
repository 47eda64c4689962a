# Millisecond time and asyncio waits, the same names on MicroPython and CPython, so the pure
# link modules (MQTT, LoRaWAN, outbox) also run on the host (fleet simulator, tests).
import asyncio
import time

try:
    from asyncio import sleep_ms, wait_for_ms
except ImportError:  # CPython

    def wait_for_ms(aw, ms):
        return asyncio.wait_for(aw, ms / 1000)

    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


try:
    ticks_ms = time.ticks_ms
    ticks_us = time.ticks_us
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
except AttributeError:  # CPython

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_us():
        return int(time.monotonic() * 1000000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b
