# The node under its supervisor, on MicroPython with the real Node (sim board): a task that
# dies is recorded in the record log and restarted while metering goes on; a task that keeps
# dying checkpoints the registers and reboots, and after supervisor.safe_after such reboots
# the node boots into the safe configuration; a planned reboot and a caught fatal error
# checkpoint the registers; a MemoryError making the MQTT client does not end the link; the
# LoRa modem's reader is a supervised task of its own.
import asyncio
import json

from metrology_rig import energy_j

from meternode.metrology.meter import Meter
from meternode.node import Node, write_state
from meternode.nodeinit import read_state
from meternode.store import records
from meternode.store.checkpoint import CheckpointStore
from mptest import eq, heap, host_value, needs, scratch_dir, timeout

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


class _Reset(BaseException):
    # What hal.reset() does on a board (never returns): here it unwinds to the test.
    pass


def _board():
    with open(__file__.rsplit("/", 3)[0] + "/boards/sim.json") as f:
        return json.load(f)


def _config(d, **extra):
    c = {
        "node_id": "s1",
        "telemetry_s": 0.1,
        "store": {"path": d + "/st"},
        "checkpoint": {"dir": d + "/ck", "min_interval_s": 0},
        "sim": {"currents": [{"rms": 10.0}], "epoch": 1800000000},
        "supervisor": {
            "state": d + "/sup.json",
            "watchdog_ms": 0,
            "backoff_min_ms": 5,
            "backoff_max_ms": 20,
            "loop_fails": 3,
            "safe_after": 2,
        },
    }
    c.update(extra)
    return c


def _events(node):
    u = node.uplink_service
    r = u.log.reader()
    r.seek(1)
    out = []
    while r.next():
        if r.kind == records.EVENT:
            d = r.record()
            out.append((d["event"], d["text"]))
    return out


def _policy():
    # compile_policy({"name": "flat", "tariffs": ["flat"], "seasons": [{"start": "01-01",
    # "weekday": [["00:00", "flat"]]}]}), compiled on the host: the node gets it compiled
    return {
        "s": [[101, [0, 0], [0, 0], [0, 0]]],
        "f": 1,
        "h": [],
        "p": [-1.0],
        "d": [],
        "tz": 0,
        "t": ["flat"],
        "rt": 3600,
        "l": [],
        "n": "flat",
    }


def _raise_reset():
    raise _Reset()


def _run_to_reset(n):
    # Runs the node until it reboots (hal.reset, which unwinds to here): -> True when it did.
    n._reset = _raise_reset
    try:
        asyncio.run(n.run())
    except _Reset:
        return True
    return False


def _checkpointed(d):
    # The energy register the node's last checkpoint in d holds (J, element 0, import).
    m = Meter(_board())
    m.registers.restore(CheckpointStore(d + "/ck").restore()["registers"])
    return energy_j(m.registers, 0, 0)


def _fail_block(n, k):
    # The node's sampler raises at its k-th block (a DMA error), once; the others come as made.
    s = n.hal.sampler
    real = s.next_block
    calls = [0]

    async def flaky():
        calls[0] += 1
        if calls[0] == k:
            raise OSError("DMA stalled")
        return await real()

    s.next_block = flaky


async def _until(cond, ms=5000):
    for _ in range(ms // 5):
        if cond():
            return True
        await asyncio.sleep_ms(5)
    return False


@heap("256k")
@timeout(60)
async def test_a_dead_sampling_task_is_recorded_and_restarted_and_metering_goes_on():
    n = Node(_board(), _config(scratch_dir()))
    _fail_block(n, 40)  # a sampler error in the middle of a run
    t = asyncio.create_task(n.run())
    ok = await _until(lambda: n.supervisor is not None and n.supervisor.restarts >= 1)
    eq(ok, True, "the failure was seen")
    e0 = energy_j(n.meter.registers, 0, 0)
    ok = await _until(lambda: energy_j(n.meter.registers, 0, 0) > e0 + 100)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(ok, True, "energy registered after the restart")
    w = n.supervisor.watch("sampling")
    eq((w.restarts, w.error), (1, "OSError: DMA stalled"), "the sampling task, once")
    ev = [e for e in _events(n) if e[0] == "task"]
    eq(ev, [("task", "sampling OSError: DMA stalled")], "recorded in the record log")
    eq(n.supervisor.watch("reporting").restarts, 0, "the others untouched")
    n.uplink_service.log.close()


@heap("256k")
@timeout(60)
async def test_the_status_command_reports_the_heap_the_tasks_and_the_uplink_as_they_are():
    # What an operator of a node nobody visits asks first: the `status` command answers with
    # the heap (free after a collection, the low-water mark of the reports' collections), the
    # supervisor's restarts (a sampling task that died once), the meter's gaps and the record
    # log's counters; the module that builds it is forgotten after the command.
    import gc
    import sys
    from binascii import unhexlify

    from meternode.link.actions import make_command

    c = _config(scratch_dir(), cmd_key=KEY)
    c["supervisor"]["heap_check_s"] = 0  # a collection at every report (0.1 s)
    c["utc_offset_min"] = -300  # billing in New York's standard time
    n = Node(_board(), c)
    _fail_block(n, 20)
    t = asyncio.create_task(n.run())
    ok = await _until(lambda: n.supervisor is not None and n.supervisor.restarts >= 1 and n.seq >= 3)
    eq(ok, True, "a restart and three reports")
    epoch = int(n.hal.clock.time())
    cmd = make_command(unhexlify(KEY), "s1", "status", None, 1, epoch + 60, "st1")
    r = n.uplink_service.commands.handle(cmd)
    gc.collect()
    total = gc.mem_free() + gc.mem_alloc()
    # 24 KB more held by someone: the next reports' collections find that much less free
    ballast = bytearray(24 * 1024)
    seq = n.seq
    ok = await _until(lambda: n.seq >= seq + 2)
    r2 = n.uplink_service.commands.handle(make_command(unhexlify(KEY), "s1", "status", None, 2, epoch + 60, "st2"))
    t.cancel()
    await asyncio.sleep_ms(5)
    eq((ok, r["ok"], r["id"], r["status"]), (True, True, "st1", "done"), "answered: %r" % r)
    d = r["result"]
    import meternode

    eq((d["version"], d["safe"], d["reset"]), (meternode.VERSION, False, n.reset_cause), "who and how it started")
    h, h2 = d["heap"], r2["result"]["heap"]
    eq(0 < h["low"] <= h["free"] < total and h["alloc"] > 0, True, "a low-water mark and the heap: %r" % h)
    eq(h2["low"] <= h["low"] - 24 * 1024 < h2["low"] + 8192, True, "the mark follows the heap: %r -> %r" % (h, h2))
    eq(h2["free"] <= h["free"] - 24 * 1024 + 2048, True, "so does free: %r -> %r" % (h, h2))
    eq(len(ballast), 24 * 1024, "(held until here)")
    eq((d["restarts"], d["tasks"]["sampling"]), (1, [1, 0, "OSError: DMA stalled"]), "the restart, by task")
    eq(d["tasks"]["reporting"][:2], [0, 0], "the others untouched")
    eq(d["up_s"] >= 0 and d["starved"] >= 0, True, "the supervisor's counters")
    eq(sorted(d["meter"]), ["gaps", "lost_sets", "overruns"], "the meter's")
    eq((d["clock"]["utc_offset_min"], 0 <= epoch + 60 - d["clock"]["epoch"] <= 60), (-300, True), "%r" % d["clock"])
    eq(sorted(d["clock"]), ["epoch", "utc_offset_min"], "no network sets this one's clock: no ntp, no lorawan")
    lg = d["uplink"]["log"]
    eq(lg["records"] > 0 and lg["last_seq"] >= lg["first_seq"], True, "the record log's: %r" % lg)
    eq(d["uplink"]["commands"]["accepted"], 0, "counted once the action returns: this one is not in it")
    eq("meternode.link.stats" in sys.modules, False, "stats.py forgotten after the command")
    eq(json.loads(json.dumps(d)) == d, True, "the result is JSON")
    n.uplink_service.log.close()


@heap("256k")
@timeout(60)
async def test_the_low_water_mark_collects_at_most_every_heap_check_s():
    # A collection stops the event loop for its time: the reporting task makes one after a
    # report only every supervisor.heap_check_s (30 s by default), by the HAL's clock.
    n = Node(_board(), _config(scratch_dir()))
    t = asyncio.create_task(n.run())
    ok = await _until(lambda: n.heap_low < 0x3FFFFFFF)  # (its value before the first reading)
    low = n.heap_low
    ballast = bytearray(24 * 1024)
    seq = n.seq
    ok = ok and await _until(lambda: n.seq >= seq + 5)
    eq((ok, n.heap_low), (True, low), "five reports later, within 30 s: no collection, the mark stays")
    n.hal.clock.advance(31 * 1000000)
    seq = n.seq
    ok = await _until(lambda: n.seq >= seq + 2)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(ok and n.heap_low <= low - 24 * 1024, True, "31 s on: collected, the ballast seen: %d -> %d" % (low, n.heap_low))
    eq(len(ballast), 24 * 1024, "(held until here)")
    n.uplink_service.log.close()


@heap("256k")
@timeout(60)
async def test_a_started_node_keeps_nothing_of_config_py_and_one_config_error():
    # config.py's checks run at start-up: once the node runs, the module is forgotten (RAM,
    # docs/memory.md), and ConfigError, which a running node still raises, is one class
    import sys

    import meternode

    n = Node(_board(), _config(scratch_dir()))
    t = asyncio.create_task(n.run())
    ok = await _until(lambda: n.supervisor is not None)
    await asyncio.sleep_ms(50)
    eq((ok, "meternode.config" in sys.modules), (True, False), "forgotten once the node runs")
    try:
        n.meter.set_calibration("no such channel", {"gain": 1.0})
        raised = None
    except meternode.ConfigError as e:
        raised = str(e)
    eq(raised, "calibration.no such channel names no channel", "the package's ConfigError")
    from meternode import config

    eq(config.ConfigError is meternode.ConfigError, True, "config.py loaded again re-exports the one class")
    t.cancel()
    await asyncio.sleep_ms(5)
    n.uplink_service.log.close()


_LORA = {"deveui": "70B3D57ED0000001", "appeui": "0000000000000000", "appkey": "00112233445566778899AABBCCDDEEFF"}


@heap("288k")  # the sim board's heap: a LoRa node from source is near 256k
@timeout(60)
async def test_a_dying_lora_modem_reader_is_recorded_and_restarted_and_a_lora_task_restart_leaves_it_alone():
    # The modem's line reader is a supervised task of its own ("lora reader"): a bug that
    # kills it (here: the first byte it handles raises) is a TASK event and a restart, and the
    # module's later lines are read again; the lora task stalling (its configure waits on a
    # module that never answers) restarts that task only -- never a second reader.
    d = scratch_dir()
    port = d + "/modem"
    with open(port, "wb") as f:  # what the module prints: a noise line, then a downlink
        f.write(b"X\r\n+EVT:RX_1:-80:7:UNICAST:3:0102\r\n")
    lo = dict(_LORA, port=port)
    n = Node(_board(), _config(d, lora=lo))
    u = n.uplink()
    m = u.lora.modem
    m.w = asyncio.StreamWriter(open("/dev/null", "wb"), {})  # commands go nowhere: no answer
    real = m.feed
    calls = [0]

    def feed(raw):
        calls[0] += 1
        if calls[0] == 1:
            raise ValueError("reader bug")
        real(raw)

    m.feed = feed
    t = asyncio.create_task(n.run())
    ok = await _until(lambda: n.supervisor is not None)
    sup = n.supervisor
    sup.watch("lora").stall_ms = 300  # configure() waits 3 s per command: a stall from here
    ok = await _until(lambda: len(m.downlinks) == 1 and sup.watch("lora").restarts >= 1, 10000)
    eq(ok, True, "downlink read after the reader's restart, lora task restarted: %r" % (sup.stats(),))
    with open(port, "ab") as f:  # the module speaks again, after the lora task's restart
        f.write(b"+EVT:RX_1:-81:6:UNICAST:4:03\r\n")
    ok = await _until(lambda: len(m.downlinks) == 2, 5000)
    t.cancel()
    await asyncio.sleep_ms(5)
    eq(ok, True, "the reader reads on")
    eq(m.downlinks, [(3, b"\x01\x02", -80, 7), (4, b"\x03", -81, 6)], "every line after the failure handled once")
    r = sup.watch("lora reader")
    eq((r.restarts, r.stalls, r.error), (1, 0, "ValueError: reader bug"), "the reader: one restart, never stalled")
    eq(m.task, None, "no reader outside the supervisor")
    eq(sup.watch("lora").stalls >= 1, True, "the lora task stalled and was restarted")
    ev = [x[1] for x in _events(n) if x[0] == "task"]
    eq(ev[0], "lora reader ValueError: reader bug", "recorded in the record log: %r" % ev)
    eq(sum(1 for e in ev if e.startswith("lora reader")), 1, "once: %r" % ev)
    eq(sum(1 for e in ev if e.startswith("lora stalled")) >= 1, True, "the lora stall too: %r" % ev)
    eq(sup.watch("sampling").restarts, 0, "metering untouched")
    u.log.close()


async def _dies(w):
    w.beat()
    await asyncio.sleep_ms(20)
    raise ValueError("poison record")


@heap("288k")  # from source the uplink compiles beside the supervision code: at 256k it did not start
@timeout(60)
def test_a_crash_loop_is_counted_on_flash_and_reboots_with_the_registers_checkpointed():
    d = scratch_dir()
    write_state(d + "/sup.json", {"loops": 1, "total": 0, "why": ""})  # the previous boot looped too
    n = Node(_board(), _config(d, cmd_key=KEY, policy=_policy(), policy_dir=d))
    eq(n.safe, False, "one crash loop: still the full configuration (safe_after 2)")
    n.reporting = _dies  # a task that keeps dying
    eq(_run_to_reset(n), True, "the node rebooted")
    b = read_state(d + "/sup.json")
    eq(b, {"loops": 2, "total": 1, "why": "reporting ValueError: poison record"}, "the crash loop persisted")
    # the registers went to the checkpoint before the reboot, exactly
    eq(_checkpointed(d), energy_j(n.meter.registers, 0, 0), "registers checkpointed at the reboot")
    eq(energy_j(n.meter.registers, 0, 0) > 0, True, "energy was measured")
    ev = [x[1] for x in _events(n) if x[0] == "task"]
    eq(ev, ["reporting ValueError: poison record"] * 3, "each failure recorded")
    eq(n.supervisor.watch("sampling").restarts, 0, "metering was not touched")


@heap("256k")
@timeout(60)
def test_after_safe_after_crash_loops_the_node_boots_safe_and_a_crash_loop_there_reboots_it_safe():
    d = scratch_dir()
    # what two crash loops in a row leave
    write_state(d + "/sup.json", {"loops": 2, "total": 2, "why": "reporting ValueError: poison record"})
    n = Node(_board(), _config(d, cmd_key=KEY, policy=_policy(), policy_dir=d))
    eq(n.safe, True, "safe configuration")
    for k in ("cmd_key", "policy"):
        eq(k in n.config, False, "safe configuration without %s" % k)
    n.reporting = _dies
    eq(_run_to_reset(n), True, "a crash loop in the safe configuration reboots too")
    eq(n.supervisor.watch("policy"), None, "no policy task")
    eq(n.uplink_service.commands, None, "no authenticated commands")
    eq(n.supervisor.watch("sampling").restarts, 0, "metering ran")
    eq(n.meter.cycles > 10, True, "and measured")
    ev = [x for x in _events(n) if x[0] in ("safe_mode", "task")]
    eq(ev[0], ("safe_mode", "reporting ValueError: poison record"), "the safe boot is an event with the cause")
    eq(len(ev), 4, "then the three failures: %r" % ev)
    eq(read_state(d + "/sup.json")["loops"], 3, "still counting: the next boot is safe again")


@heap("256k")
@timeout(60)
async def test_a_node_that_runs_stable_s_clears_the_crash_loop_count_it_booted_with():
    # One crash loop before this boot (safe_after 2: the full configuration).  A node that
    # then runs stable_s without one starts counting from nothing again, on flash: the next
    # crash loop, days later, is not the one that sends it into the safe configuration.
    d = scratch_dir()
    write_state(d + "/sup.json", {"loops": 1, "total": 4, "why": "reporting ValueError: poison record"})
    c = _config(d)
    c["supervisor"]["stable_s"] = 1
    n = Node(_board(), c)
    eq(n.safe, False, "full configuration")
    t = asyncio.create_task(n.run())
    try:
        ok = await _until(lambda: read_state(d + "/sup.json")["loops"] == 0, 8000)
        eq(ok, True, "count cleared after stable_s: %r" % read_state(d + "/sup.json"))
        eq(read_state(d + "/sup.json")["total"], 4, "the total is kept")
        eq(t.done(), False, "and the node runs on")
    finally:
        t.cancel()


@heap("256k")
@timeout(60)
def test_the_safe_configuration_ends_after_safe_hold_s_in_a_planned_reboot_into_the_full_one():
    # A node that crash-looped into the safe configuration must not stay there for ever when
    # nobody visits: after safe_hold_s of running safe, it clears the count and reboots
    # (registers checkpointed), and the next boot is the full configuration.
    d = scratch_dir()
    write_state(d + "/sup.json", {"loops": 2, "total": 2, "why": "reporting ValueError: poison record"})
    c = _config(d, cmd_key=KEY, policy=_policy(), policy_dir=d)
    c["supervisor"]["safe_hold_s"] = 1
    n = Node(_board(), c)
    eq(n.safe, True, "safe configuration")
    eq(_run_to_reset(n), True, "a planned reboot")
    eq(n.supervisor.restarts, 0, "no task failed on the way")
    eq(read_state(d + "/sup.json")["loops"], 0, "count cleared")
    eq(_checkpointed(d), energy_j(n.meter.registers, 0, 0), "registers checkpointed at the reboot")
    again = Node(_board(), _config(d, cmd_key=KEY, policy=_policy(), policy_dir=d))
    eq((again.safe, "cmd_key" in again.config), (False, True), "the next boot is the full configuration")


@heap("256k")
@timeout(120)
async def test_a_checkpoint_the_flash_refuses_is_tried_again_a_minute_later_and_metering_goes_on():
    # The flash refuses the checkpoint (full, or failing): the sampling task must neither
    # stop nor try again at every block (a write per block wears a failing flash and fills
    # the console); it measures on and tries once a minute of board time until a write
    # succeeds, then goes back to the checkpointer's own schedule.
    from meternode import ticks

    b = _board()
    b["adc"]["rate"] = 1000  # one-second blocks: minutes of board time in a few seconds
    b["adc"]["block"] = 1000
    n = Node(b, _config(scratch_dir()))
    tries = []
    broken = [True]

    def save(now, force):
        tries.append(now)
        if broken[0]:
            raise OSError(28)  # ENOSPC

    n.checkpoint.save = save
    t = asyncio.create_task(n.sampling())
    try:
        ok = await _until(lambda: len(tries) >= 3, 60000)
        eq(ok, True, "tried 3 times: %r" % tries)
        e = energy_j(n.meter.registers, 0, 0)
        broken[0] = False
        ok = await _until(lambda: len(tries) >= 6, 60000)
        eq(ok, True, "tried again after the flash came back: %r" % tries)
    finally:
        t.cancel()
    gaps = [ticks.diff(tries[k + 1], tries[k]) for k in range(4)]
    for g in gaps[:3]:
        eq(60000 <= g < 61000, True, "a minute of board time between tries while it fails: %r" % gaps)
    eq(gaps[3] <= 1000, True, "after a write succeeded, the next block tries again: %r" % gaps)
    eq(n.ckpt_errors, 3, "the refusals counted")
    eq(energy_j(n.meter.registers, 0, 0) > e > 0, True, "metering went on throughout")


@heap("256k")
def test_planned_reboot_and_fatal_error_checkpoint_the_registers():
    d = scratch_dir()
    n = Node(_board(), _config(d))
    n._reset = lambda: None
    st = n.checkpoint.store
    n.hal.sampler.run(n.meter, 3.0)
    seq = st.seq
    n.reboot("test")
    eq(st.seq, seq + 1, "a checkpoint at the planned reboot")
    m = Meter(_board())
    m.registers.restore(st.restore()["registers"])
    eq(energy_j(m.registers, 0, 0), energy_j(n.meter.registers, 0, 0), "with the registers as they were")
    n.hal.sampler.run(n.meter, 2.0)
    n.fatal(MemoryError())
    eq(st.seq, seq + 2, "and one on a caught fatal error")
    m.registers.restore(st.restore()["registers"])
    eq(energy_j(m.registers, 0, 0), energy_j(n.meter.registers, 0, 0), "the newest registers")
    eq(read_state(d + "/sup.json")["loops"], 1, "a fatal error counts as a crash loop")


@heap("256k")
@timeout(30)
async def test_a_memory_error_making_the_mqtt_client_does_not_end_the_link():
    from meternode.link import mqtt
    from meternode.link.uplink import MqttLink

    logged = []
    m = {"host": "127.0.0.1", "port": 9, "backoff_min_ms": 10, "backoff_max_ms": 20}
    link = MqttLink("m1", m, log=logged.append)
    real = mqtt.MQTTClient
    made = [0]

    def client(*a, **kw):
        made[0] += 1
        if made[0] <= 2:
            raise MemoryError("memory allocation failed, allocating 1024 bytes")
        return real(*a, **kw)  # port 9: refused, an ordinary link error

    # the link makes its client in link/mqttconn.py, loaded per connection: it takes this one
    mqtt.MQTTClient = client
    beats = [0]

    def beat():
        beats[0] += 1

    link.beat = beat
    t = asyncio.create_task(link.run())
    try:
        ok = await _until(lambda: made[0] >= 4, 3000)
        done = t.done()
        t.cancel()
        await asyncio.sleep_ms(5)
    finally:
        mqtt.MQTTClient = real
    eq(done, False, "the link task is still running")
    eq(ok, True, "it retried after the MemoryErrors (%d attempts)" % made[0])
    eq(sum(1 for m in logged if "memory allocation failed" in m), 2, "each logged: %r" % logged)
    eq(isinstance(link.last_error, OSError), True, "then the ordinary error: %r" % (link.last_error,))
    eq(beats[0] >= 4, True, "progress reported once per attempt")


@needs("host:mosquitto")
@heap("256k")
@timeout(30)
async def test_a_link_task_cancelled_by_the_supervisor_takes_its_connection_and_reader_with_it():
    # The supervisor cancels a stalled task and starts it again: the MQTT connection it held
    # must not live on beside the new one (its reader task, its socket).
    from meternode.link.uplink import MqttLink

    h, p = host_value("mosquitto_host"), int(host_value("mosquitto_port"))
    link = MqttLink("sv-cancel", {"host": h, "port": p, "discovery": False}, log=lambda m: None)
    t = asyncio.create_task(link.run())
    ok = await _until(lambda: link.up, 10000)
    eq(ok, True, "connected: %r" % (link.last_error,))
    c = link.client
    reader = c._reader_task
    eq(reader is None, False, "a connection runs a reader task")
    t.cancel()  # what Supervisor.check() does to a stalled task
    await asyncio.sleep_ms(20)
    eq(t.done(), True, "the link task ended")
    eq(c.connected, False, "its connection closed")
    eq(reader.done(), True, "its reader ended with it")
    eq((link.client, link.up, link.downs), (None, False, 1), "the link says down")


@heap("256k")
def test_crash_loop_state_persists_and_a_torn_file_is_a_clean_state():
    d = scratch_dir()
    p = d + "/sup.json"
    eq(read_state(p), {"loops": 0, "total": 0, "why": ""}, "missing file: clean")
    write_state(p, {"loops": 2, "total": 5, "why": "link MemoryError"})
    eq(read_state(p), {"loops": 2, "total": 5, "why": "link MemoryError"}, "read back")
    with open(p, "w") as f:
        f.write('{"loops": 2, "tot')  # torn write
    eq(read_state(p)["loops"], 0, "torn: clean state, no exception")
    with open(p, "w") as f:
        f.write('{"loops": "many", "total": 3}')
    eq(read_state(p), {"loops": 0, "total": 3, "why": ""}, "a field of the wrong type is ignored")
