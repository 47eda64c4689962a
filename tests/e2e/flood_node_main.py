# main.py of the node in the flood test (tests/e2e/test_flood.py): the node as firmware/main.py
# runs it, plus a monitor task that prints one "MON {json}" line every 500 ms: free heap after
# a collection, measured seconds, sim clock lag behind the wall clock, link state.
import asyncio
import gc
import json
import time

from meternode.config import load_json
from meternode.node import Node

node = Node(load_json("board.json"), load_json("config.json"))


async def monitor():
    while True:
        await asyncio.sleep_ms(500)
        gc.collect()
        m = node.meter
        d = {
            "wall": time.time(),
            "free": gc.mem_free(),
            "sec": m.seconds.closed,
            "lag": time.time() - node.hal.clock.time(),
            "link": node.link_up,
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
