# main.py of the node in the flood test (tests/e2e/test_flood.py): the node as firmware/main.py
# runs it, plus a monitor task that prints one "MON {json}" line every 500 ms: free heap after
# a collection, measured seconds, sim clock lag behind the wall clock, link state.
# The heap is read while no telemetry report is in flight: the report task, suspended in the
# link's publish, holds its snapshot, pulses and record (~4 KB on the 64-bit port); the
# monitor's 500-ms ticks land on every other report, before it or inside it depending on how
# the loop schedules two timers due at once, and a loaded machine moved the reading by that
# much. "busy" says how many milliseconds the reading waited for a report to end.
import asyncio
import gc
import json
import time

from meternode.config import load_json
from meternode.node import Node

node = Node(load_json("board.json"), load_json("config.json"))
reporting = [0]
_report = node._report


async def report():
    reporting[0] += 1
    try:
        await _report()
    finally:
        reporting[0] -= 1


node._report = report  # the reporting task calls self._report(): this one counts it in flight


async def monitor():
    while True:
        await asyncio.sleep_ms(500)
        t = time.ticks_ms()
        while reporting[0] and time.ticks_diff(time.ticks_ms(), t) < 5000:
            await asyncio.sleep_ms(2)
        busy = time.ticks_diff(time.ticks_ms(), t)
        gc.collect()
        m = node.meter
        d = {
            "wall": time.time(),
            "free": gc.mem_free(),
            "sec": m.seconds.closed,
            "lag": time.time() - node.hal.clock.time(),
            "link": node.link_up,
            "busy": busy,
            "quiet": not reporting[0],
        }
        u = node.uplink_service
        if u is not None and u.commands is not None:
            d["cmds"] = u.commands.accepted + u.commands.rejected
        p = getattr(node, "policy", None)
        if p is not None and p.small is not None:
            d["frames"] = p.small._ctr.writes
        print("MON " + json.dumps(d))


async def main():
    mon = asyncio.create_task(monitor())
    try:
        await node.run()
    finally:
        mon.cancel()


asyncio.run(main())
