# Heap-saving lazy loads (docs/memory.md), on MicroPython with the real Node (sim board):
# a node without MQTT runs its record log and profile without ever loading the MQTT client,
# link and outbox; a node with MQTT loads and wires them as before.
import gc
import json
import sys

from heapcut import fragment as _fragment
from heapcut import plug as _plug

from meternode.node import Node
from mptest import eq, heap, host_value, needs, scratch_dir, timeout

_MQTT = ("meternode.link.mqtt", "meternode.link.uplink", "meternode.link.outbox")


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
    rare = ("meternode.plainlink", "meternode.nodegw", "meternode.hal.hw")
    eq([m for m in rare if m in sys.modules], [], "no fallback link, gateway gate or board HAL code")


# -- what a node loads when (docs/memory.md): OTA code at boot only with a slot to select,
# Home Assistant discovery only while it is published, the policy check only while a policy
# loads, LoRa-sized policy frames only from the first one


def _forgotten(prefix):
    return [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]


@heap("256k")  # the module imports the node (from source: with its supervision, more than 128k)
def test_boot_without_an_ota_slot_loads_no_ota_code_and_forgets_the_package():
    import os

    d = scratch_dir() + "/boot1"
    os.mkdir(d)
    here = os.getcwd()
    os.chdir(d)
    try:
        from meternode import start

        start.ota()  # no fw/boot.json: the factory firmware
        eq(_forgotten("meternode"), [], "no meternode module left for main.py's import")
        os.mkdir("fw")
        with open("fw/boot.json", "w") as f:
            f.write('{"active": null, "pending": null, "tries": 0, "boots": 3, "versions": {}, "last": ""}')
        from meternode import start

        start.ota()  # an OTA state without a slot (all rolled back): nothing to select
        eq(_forgotten("meternode"), [], "nothing loaded")
        with open("fw/boot.json") as f:
            eq('"boots": 3' in f.read(), True, "the pointer was not even rewritten")
    finally:
        os.chdir(here)


@heap("512k")  # the OTA code compiled from source (a board loads it as .mpy)
def test_boot_with_a_pending_slot_runs_the_ota_selection():
    import json
    import os

    d = scratch_dir() + "/boot2"
    os.mkdir(d)
    os.mkdir(d + "/fw")
    os.mkdir(d + "/fw/a")
    with open(d + "/fw/boot.json", "w") as f:
        f.write(json.dumps({"active": None, "pending": "a", "tries": 0, "boots": 0, "versions": {"a": 2}, "last": ""}))
    here = os.getcwd()
    path = list(sys.path)
    os.chdir(d)
    try:
        from meternode import start

        start.ota()
        with open("fw/boot.json") as f:
            st = json.load(f)
        eq((st["pending"], st["tries"], st["boots"]), ("a", 1, 1), "a trial boot of slot a counted")
        eq(sys.path[:2], ["./fw/a", "./fw/a/lib"], "the slot comes first on sys.path")
        eq(_forgotten("meternode"), [], "the OTA code and the factory package forgotten")
    finally:
        os.chdir(here)
        sys.path[:] = path


@heap("512k")
def test_policy_check_is_forgotten_once_the_policy_is_loaded_and_loads_again_for_the_next():
    from policy_fixture import compact

    from meternode import forget
    from meternode.policy.engine import Engine

    pol = compact()
    e = Engine(pol)
    forget("meternode.policy.schema")  # as PolicyService.load() does
    eq("meternode.policy.schema" in sys.modules, False, "forgotten")
    e2 = Engine(pol)  # the next policy is checked again: the check loads again
    eq(e2.name, e.name, "second engine")
    bad = dict(pol)
    bad["t"] = "not a list"
    try:
        Engine(bad)
        raise AssertionError("a bad policy passed the check")
    except ValueError:
        pass


@heap("512k")
def test_the_fleet_agents_policy_store_checks_each_policy_and_keeps_none_of_the_schema():
    # The fleet agent keeps policy/apply.py; its check of a stored or a new policy loads the
    # schema for the call (its tables are several KB) and forgets it.
    from policy_fixture import compact

    from meternode.policy.apply import PolicyStore

    st = PolicyStore(scratch_dir() + "/pstore")
    pol = compact()
    st.apply(3, "m", "s", pol)
    eq("meternode.policy.schema" in sys.modules, False, "not kept after an apply")
    eq((st.load() or {}).get("version"), 3, "the checked policy stored and read back")
    eq("meternode.policy.schema" in sys.modules, False, "nor after a load")
    bad = dict(pol)
    bad["t"] = "not a list"
    try:
        st.apply(4, "m", "s", bad)
        raise AssertionError("a bad policy was stored")
    except ValueError as e:
        eq(str(e), "policy.t must be a list, not 'not a list'", "the error names what is wrong")
    eq((st.load() or {}).get("version"), 3, "the good one stays active")
    eq("meternode.policy.schema" in sys.modules, False, "and nothing kept after a refusal")


@heap("512k")
def test_policy_service_forgets_its_check_and_makes_small_frames_only_when_one_comes():
    from policy_fixture import compact

    c = _config(scratch_dir() + "/ps", True)
    c["policy"] = compact()
    c["cmd_key"] = "5a" * 16
    n = Node(_board(), c)
    from meternode.policy.service import PolicyService

    s = PolicyService(n)
    eq(s.engine is not None, True, "policy loaded")
    eq("meternode.policy.schema" in sys.modules, False, "the policy check is not kept")
    eq(("meternode.policy.small" in sys.modules, s.small), (False, None), "no small-frame handler yet")
    r = s.small_frame(b"\x00garbage")
    eq(r["ok"], False, "a bad frame is rejected: %r" % (r,))
    eq(s.small is not None and "meternode.policy.small" in sys.modules, True, "made at the first frame")


@needs("host:mosquitto")
@heap("256k")
@timeout(30)
async def test_discovery_is_published_at_each_connect_and_forgotten_in_between():
    import asyncio

    from meternode.link.mqtt import MQTTClient
    from meternode.link.uplink import MqttLink

    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    m = {"host": h, "port": p, "prefix": "memt"}
    link = MqttLink("memnode", m, describe=lambda: {"version": "t", "model": "m", "sensors": None})
    t = asyncio.create_task(link.run())
    for _ in range(200):
        if link.up:
            break
        await asyncio.sleep_ms(20)
    eq(link.up, True, "link up")
    eq("meternode.link.discovery" in sys.modules, False, "discovery forgotten once published")
    got = []
    c = MQTTClient("memt-watch", h, p)
    c.on_message = lambda tp, msg, r: got.append(tp)
    await c.connect()
    await c.subscribe("homeassistant/sensor/memnode/+/config", 1)
    for _ in range(100):
        if len(got) >= 5:
            break
        await asyncio.sleep_ms(20)
    eq(len(got) >= 5, True, "the retained discovery configs are on the broker: %r" % (got,))
    await c.disconnect()
    link.client.drop("test: drop the link")  # the next connect publishes them again
    for _ in range(300):
        if link.ups == 2 and link.up:
            break
        await asyncio.sleep_ms(20)
    eq((link.ups, "meternode.link.discovery" in sys.modules), (2, False), "reconnected, forgotten again")
    t.cancel()


@needs("host:mosquitto")
@heap("256k")
@timeout(30)
async def test_a_link_comes_up_when_discovery_finds_no_heap():
    # A reconnect in a heap cut up by a long run may have no room for the discovery configs:
    # the link comes up without them (the next connect tries again) instead of staying down.
    import asyncio

    import meternode.link as pkg
    from meternode.link.uplink import MqttLink

    class _NoHeap:
        def announce(self, *args):
            raise MemoryError("memory allocation failed, allocating 536 bytes")

    fake = _NoHeap()
    sys.modules["meternode.link.discovery"] = fake
    pkg.discovery = fake
    said = []
    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    m = {"host": h, "port": p, "prefix": "memt"}
    link = MqttLink("memnode2", m, describe=lambda: {"version": "t", "model": "m", "sensors": None}, log=said.append)
    t = asyncio.create_task(link.run())
    try:
        for _ in range(250):
            if link.up:
                break
            await asyncio.sleep_ms(20)
        eq(link.up, True, "link up without discovery: %r" % (said,))
        eq([x for x in said if x.startswith("discovery not published")] != [], True, "said why: %r" % (said,))
        eq("meternode.link.discovery" in sys.modules, False, "forgotten: the next connect loads it again")
    finally:
        t.cancel()
        if link.client is not None:
            link.client.drop("test: done")


# -- the telemetry payload is written into a buffer the node keeps (node._tbuf): a report
# needs no free run of the payload's size, which a heap that has run for a day may not have


@heap("256k")
async def test_a_report_needs_no_free_run_the_size_of_its_payload():
    n = Node(_board(), _config(scratch_dir(), False))
    n._uplink = None  # live telemetry only: the report is the payload
    n.hal.sampler.run(n.meter, 2.0)
    await n._report()  # the first report sizes the node's buffer
    size = len(n.last)
    eq(size > 600, True, "a payload of %d bytes" % size)
    buf = n._tbuf
    n.hal.sampler.run(n.meter, 2.0)  # the second report's data (the meter's own allocations done)
    first = n.last  # kept: no run left of a payload's length, not even the one before's
    plugs = [None] * 64  # made before the cut (_plug)
    hold = _fragment(20)  # free runs of 320 to 624 bytes: a payload's dicts fit, the payload not
    # what the collector could not free yet (a stale pointer on the C stack keeps an object
    # alive for a collection or two) may leave a longer run: fill every one of 640 bytes
    plugs = _plug(64, 640, plugs)
    try:
        await n._report()  # building the text anew every period: MemoryError here
        eq(n._tbuf is buf, True, "the same buffer")
        d = json.loads(n.last)
        eq((d["seq"], len(n.last) > 600), (2, True), "the second report in that heap: %d bytes" % len(n.last))
    finally:
        del hold, plugs, first  # the heap back for what follows
    # the node's buffer takes the same text as a fresh one twice its size
    from meternode.link import telemetry

    n.hal.sampler.run(n.meter, 2.0)
    snap = n.meter.snapshot()
    big = bytearray(2 * len(n._tbuf))
    t = telemetry.encode_into(big, "m1", 3, 1800000000, snap, 0, n.mains, None, True)
    k = telemetry.encode_into(n._tbuf, "m1", 3, 1800000000, snap, 0, n.mains, None, True)
    eq(n._tbuf[:k], big[:t], "the same text in either buffer")
    eq(json.loads(big[:t])["relay"], True, "valid JSON")


@needs("host:mosquitto")
@heap("256k")
@timeout(30)
async def test_without_store_and_forward_the_plain_link_publishes_state_and_telemetry():
    # The fallback link (plainlink.py) when the uplink service could not start: loaded only
    # then (a node whose uplink runs never loads it), it publishes the retained "online" state
    # and each report's telemetry at QoS 0, and drops its connection when cancelled.
    import asyncio

    from meternode.link.mqtt import MQTTClient

    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    d = scratch_dir()
    c = _config(d, True)
    c["mqtt"] = {"host": h, "port": p, "prefix": "memp"}
    n = Node(_board(), c)
    n._uplink = None  # store-and-forward did not start (as when the heap has no room for it)
    eq("meternode.plainlink" in sys.modules, False, "not loaded before it is needed")
    got = []
    w = MQTTClient("memp-watch", h, p)
    w.on_message = lambda tp, msg, r: got.append((tp, bytes(msg)))
    await w.connect()
    await w.subscribe("memp/m1/#", 0)
    t = asyncio.create_task(n.link())
    for _ in range(200):
        if n.link_up:
            break
        await asyncio.sleep_ms(20)
    eq((n.link_up, "meternode.plainlink" in sys.modules), (True, True), "the plain link is up")
    n.hal.sampler.run(n.meter, 2.0)
    await n._report()
    for _ in range(100):
        if len(got) >= 2:
            break
        await asyncio.sleep_ms(20)
    tops = [tp for tp, _ in got]
    eq(("memp/m1/state", b"online") in got and "memp/m1/telemetry" in tops, True, "state and telemetry: %r" % tops)
    client = n.mqtt
    t.cancel()
    await asyncio.sleep_ms(50)
    eq((n.mqtt, client.connected), (None, False), "cancelled: the connection goes too")
    await w.disconnect()


@needs("host:mosquitto")
@heap("256k")
@timeout(30)
async def test_a_reconnect_in_a_fragmented_heap_loads_the_connect_path_again_and_forgets_it():
    # The connect path (link/mqttconn.py) is loaded per connection and forgotten after; the
    # link loads it once at start, so its names are interned then.  A reconnect after a long
    # run, in a heap cut up into free runs of 2-4 KB (no room for a new qstr pool: 9 KB on
    # 32-bit, 14 on 64), loads it again and comes up.  Runs of 2 KB, not 1: the tests load
    # the firmware from source, and compiling the module needs a 2-KB run (from .mpy a heap
    # cut into runs of 1.1-2.2 KB reconnects too, both ports, checked by hand).
    import asyncio

    from meternode.link.uplink import MqttLink

    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    m = {"host": h, "port": p, "prefix": "memt", "backoff_min_ms": 10, "backoff_max_ms": 20}
    said = []
    link = MqttLink("memnode3", m, log=said.append)
    eq("meternode.link.mqttconn" in sys.modules, False, "loaded at start and forgotten")
    t = asyncio.create_task(link.run())
    hold = plugs = None
    try:
        for _ in range(250):
            if link.up:
                break
            await asyncio.sleep_ms(20)
        eq((link.up, "meternode.link.mqttconn" in sys.modules), (True, False), "up, connect path forgotten")
        hold = _fragment(140)  # free runs of 2240 to 4464 bytes
        plugs = _plug(16, 8192)
        link.client.drop("test: the broker went away")
        for _ in range(250):
            if link.ups == 2 and link.up:
                break
            await asyncio.sleep_ms(20)
        up = (link.ups, link.up, "meternode.link.mqttconn" in sys.modules)
    finally:
        del hold, plugs
        t.cancel()
        await asyncio.sleep_ms(5)
    eq(up, (2, True, False), "reconnected in the fragmented heap, forgotten again: %r" % (said,))
