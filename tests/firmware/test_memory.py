# Heap-saving lazy loads (docs/memory.md), on MicroPython with the real Node (sim board):
# a node without MQTT runs its record log and profile without ever loading the MQTT client,
# link and outbox; a node with MQTT loads and wires them as before.
import gc
import json
import sys

from meternode.node import Node
from mptest import eq, heap, scratch_dir

_MQTT = ("meternode.link.mqttpkt", "meternode.link.mqtt", "meternode.link.uplink", "meternode.link.outbox")


def _board():
    with open(__file__.rsplit("/", 3)[0] + "/boards/sim.json") as f:
        return json.load(f)


def _config(d, mqtt):
    c = {
        "node_id": "m1",
        "store": {"path": d + "/st"},
        "checkpoint": {"dir": ""},
        "profile_s": 60,
        "sim": {"seed": 3, "epoch": 1800000000},
    }
    if mqtt:
        c["mqtt"] = {"host": "127.0.0.1", "port": 1}  # never connected: run() is not started
    return c


@heap("256k")
async def test_a_node_without_mqtt_keeps_its_record_log_without_loading_the_mqtt_link():
    n = Node(_board(), _config(scratch_dir(), False))
    u = n.uplink()
    eq(u is not None, True, "store-and-forward started")
    eq((u.link, u.outbox), (None, None), "no MQTT link or outbox")
    eq([m for m in _MQTT if m in sys.modules], [], "MQTT modules never loaded")
    for k in range(3):  # three profile periods of signal, reported each period
        n.hal.sampler.run(n.meter, 60.0)
        await u.report(int(n.hal.clock.time()), n.meter.snapshot(), b"{}")
    r = u.log.reader()
    r.seek(1)
    kinds = []
    while r.next():
        kinds.append(r.kind)
    from meternode.store import records

    eq(kinds.count(records.PROFILE) >= 2, True, "profile records in the log: %r" % (kinds,))
    eq([m for m in _MQTT if m in sys.modules], [], "still not loaded after reporting")


@heap("256k")
def test_a_node_with_mqtt_loads_and_wires_the_link_and_outbox():
    gc.collect()
    n = Node(_board(), _config(scratch_dir(), True))
    u = n.uplink()
    eq(u is not None, True, "store-and-forward started")
    eq((u.link is not None, u.outbox is not None), (True, True), "MQTT link and outbox made")
    eq([m for m in _MQTT if m not in sys.modules], [], "MQTT modules loaded")
    eq(u.link.outbox is u.outbox, True, "the link drains the outbox")
