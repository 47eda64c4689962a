# Tick arithmetic of a board, the same on every port: ticks_ms / ticks_us values are
# small ints in 0 .. 2**30 - 1 that wrap (every 12.4 days / 17.9 minutes), differences
# and deadlines go only through diff() and add().  A difference is meaningful within half
# the period (+-2**29: 6.2 days in ms, 8.9 minutes in us); a caller that may wait longer
# treats a negative difference as "longer than that" (see pulses.py, checkpoint.py).
#
# ESP32 and RP2040 builds (and a 32-bit unix port) wrap at 2**30 already: diff/add are
# then the C functions time.ticks_diff / time.ticks_add.  The 64-bit unix port wraps at
# 2**62 and CPython not at all, so there the same arithmetic is done here, and ms()/us()
# (the wall ticks the link layer uses: 30-bit and wrapping on every port) are masked to 30
# bits: code tested on the unix port meets the wrap it will meet on a board.
#
# rebase(ms, us): the wall ticks read `ms` / `us` now (the sim HAL starts them a few
# seconds before a wrap, so every test and virtual node crosses one).
#
# Billing time: the node's local standard time, LOCAL_S seconds east of UTC, set from
# config.utc_offset_min at start (nodeinit.py; 0, UTC, until then). floor(ts, x): the last
# boundary of x seconds of local time at or before epoch second ts (x divides a day: the
# load profile's periods, the demand periods, local midnight); month(ts): the local month of
# ts, year * 12 + month - 1. The billing quantities use these (metrology/registers.py,
# store/profile.py, gateway/service.py); timestamps stay UTC. No DST rules: a utility's
# billing clock is standard time.
#
# sleep_ms(ms): asyncio's wait in milliseconds, the same name on MicroPython and CPython, so
# the pure link modules (LoRaWAN, the outbox) also run on the host (tests).  Nothing waits
# with a timeout through asyncio's wait_for (its funcs module): the MQTT reader and the
# LoRaWAN driver poll instead (link/mqtt.py, link/lorawan.py).  Here, not a module of its own:
# every node uses sleep_ms (a module costs its object, globals and names, docs/memory.md).
# asyncio is looked up when a module imports it (__getattr__ below), not when this module
# loads: what reads only the tick arithmetic (pulses, checkpoints, the firmware tests'
# harness) does not load asyncio.
import time

from micropython import const

MASK = const(0x3FFFFFFF)  # the ticks wrap at 2**30 (a period of MASK + 1)
_HALF = const(0x20000000)

try:
    _native = time.ticks_add(0, -1) == MASK
    _raw_ms = time.ticks_ms
    _raw_us = time.ticks_us
except AttributeError:  # CPython
    _native = False

    def _raw_ms():
        return time.monotonic_ns() // 1000000

    def _raw_us():
        return time.monotonic_ns() // 1000


if _native:
    diff = time.ticks_diff
    add = time.ticks_add
else:

    def diff(a, b):
        # a - b for 30-bit ticks: -2**29 .. 2**29 - 1
        d = (a - b) & MASK
        return d - MASK - 1 if d >= _HALF else d  # (not - 2**30: a heap int on a board)

    def add(t, d):
        return (t + d) & MASK


_off_ms = 0
_off_us = 0


def ms():
    return add(_raw_ms() & MASK, _off_ms)


def us():
    return add(_raw_us() & MASK, _off_us)


def rebase(at_ms, at_us):
    # From now on ms() / us() read at_ms / at_us and run on from there.
    global _off_ms, _off_us
    _off_ms = diff(at_ms & MASK, _raw_ms() & MASK)
    _off_us = diff(at_us & MASK, _raw_us() & MASK)


CLOCK_SET = const(1577836800)  # 2020-01-01: a wall clock before it was never set (an RTC after a power cut)
LOCAL_S = 0  # seconds east of UTC (a module global: no setter function to keep loaded)


def floor(ts, x):
    return ts - (ts + LOCAL_S) % x


def month(ts):
    t = time.gmtime(int(ts) + LOCAL_S)
    return t[0] * 12 + t[1] - 1


def __getattr__(name):
    # sleep_ms (see the top): asyncio's own on MicroPython, seconds-based on CPython
    import asyncio

    if name == "sleep_ms":
        if hasattr(asyncio, "sleep_ms"):
            return asyncio.sleep_ms
        return lambda ms: asyncio.sleep(ms / 1000)
    raise AttributeError(name)
