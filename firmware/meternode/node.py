# The node: wires HAL -> meter -> telemetry -> MQTT from the board definition and the node's
# configuration, and hands every long-running task to one Supervisor (supervisor.py): a task
# that ends, raises or stops making progress is recorded and restarted with bounded backoff,
# the watchdog is fed only while every task progresses, and a task that keeps dying reboots
# the node (registers checkpointed first), into the safe configuration after
# supervisor.safe_after such reboots in a row.
#
# Safe configuration: metering (sampling, reporting, checkpoints, pulse meters) and
# store-and-forward over MQTT (record log, outbox, link, Wi-Fi) only; the policy service,
# OTA, authenticated commands and LoRaWAN are not started (config keys in _SAFE_DROP).  It
# lasts supervisor.safe_hold_s of clean running (then a planned reboot into the full
# configuration) or until the crash-loop state file is removed.
import asyncio
import gc
import sys
import time

from micropython import const

from meternode import VERSION, _nop, forget, run, ticks
from meternode.link import telemetry

_STALL_MS = const(60000)  # what a task may take beyond its own period before it counts as stalled


class Node:
    def __init__(self, board, config):
        # The checks and wiring run once (nodeinit.py): loaded for it and forgotten after
        # (meternode.run collects first: compiled from source, it needs its parse tree in one piece)
        run("meternode.nodeinit", "setup", self, board, config)

    async def sampling(self, w=None):
        beat = w.beat if w is not None else _nop  # bound once: called per block
        s = self.hal.sampler
        stamped = hasattr(s, "stamp_us")  # the sampler timebase (hal/__init__.py)
        s.start()
        try:
            while True:
                buf = await s.next_block()
                if stamped:
                    self.meter.feed(buf, s.block_sets, s.lost, s.stamp_us)
                else:
                    self.meter.feed(buf, s.block_sets)
                beat()
                if self.checkpoint is not None:
                    bo = self.brownout is not None and self.brownout.tripped
                    now = self.hal.clock.ticks_ms()
                    if bo or self._ckpt_hold is None or ticks.diff(now, self._ckpt_hold) >= 0:
                        self._save_checkpoint(now, bo)  # when due, or at once on brown-out
                    if bo:
                        self.brownout.tripped = False
        finally:
            s.stop()

    def _save_checkpoint(self, now, force):
        try:
            self.checkpoint.save(now, force)
            self._ckpt_hold = None
            return True
        except OSError as e:  # flash full or failing: keep measuring, try again in a minute
            self.ckpt_errors += 1
            self._ckpt_hold = ticks.add(now, 60000)
            if self.ckpt_errors < 8 or not self.ckpt_errors % 64:
                log("checkpoint not saved (%d): %s" % (self.ckpt_errors, e))
            return False

    @property
    def uplink_service(self):
        # The uplink service if it has started (None before, or when it could not start);
        # unlike uplink(), never starts it.
        return getattr(self, "_uplink", None) or None

    def uplink(self):
        # The uplink service (record log, profile, outbox, MQTT link, commands), made on
        # first use (nodeinit.uplink: the free-heap gate, its modules one at a time); None
        # when it cannot start (the node keeps measuring, the reason is logged).
        u = getattr(self, "_uplink", False)
        if u is False:
            u = self._uplink = run("meternode.nodeinit", "uplink", self)
        return u

    # -- the link ------------------------------------------------------------------------------
    @property
    def mqtt(self):
        # The MQTT client while a link is connected (store-and-forward or fallback), else None.
        u = self.uplink_service
        if u is not None and u.link is not None:
            return u.link.client
        return self._plain

    @property
    def link_up(self):
        c = self.mqtt
        return c is not None and c.connected

    def link(self, w=None):
        # -> the link task's coroutine: the link's own loop, not a frame of ours awaiting it
        # (each frame a task keeps waiting in is held for as long as the task runs)
        beat = w.beat if w is not None else _nop
        u = self.uplink()
        if u is None or u.link is None:  # no record log (e.g. no RAM for it): live telemetry only
            from meternode import plainlink

            return plainlink.run(self, beat)
        u.link.beat = u.outbox.beat = beat
        return u.link.run()

    # -- reporting -------------------------------------------------------------------------------
    async def reporting(self, w=None):
        while True:
            # re-read every period: a `set telemetry_s` command applies at once; the period
            # is the HAL clock's (the sim board's fast mode runs it in simulated time)
            ms = int(self.config.get("telemetry_s", 10) * 1000)
            if w is not None:
                w.stall_ms = ms + _STALL_MS
                w.beat()
            await self.hal.clock.sleep_ms(ms)
            try:
                await self._report()
            except Exception as e:  # e.g. MemoryError: skip this report, keep measuring
                log("report skipped: %r" % (e,))
                self._heap_at = None  # and collect now
            # the heap's low-water mark (the `status` command): what is free after a collection
            # at a report, at its lowest since boot. At most one every supervisor.heap_check_s
            # (30; 0: every report): a collection stops everything else for its time (an
            # ESP32's timer-paced sampler counts the sets it lost meanwhile)
            now = self.hal.clock.ticks_ms()
            if self._heap_at is None or ticks.diff(now, self._heap_at) >= self._heap_ms:
                self._heap_at = now
                gc.collect()
                f = gc.mem_free()
                if f < self.heap_low:
                    self.heap_low = f

    async def _report(self):
        snap = self.meter.snapshot()
        if snap is None:
            return
        self.seq += 1
        now = self.hal.clock.time()
        pulses = self.pulses.readings() if self.pulses is not None else None
        r = getattr(self.hal, "relay", None)  # the board's relay, when it has one
        self.last = None  # (while the buffer is rewritten)
        b = self._tbuf
        while True:
            try:
                size = telemetry.encode_into(
                    b, self.id, self.seq, now, snap, self.hal.sampler.overruns, self.mains, pulses,
                    r.on if r is not None else None,
                )  # fmt: skip
                break
            except IndexError:  # a larger board's payload: a larger buffer, kept from now on
                k = len(b) * 2
                b = self._tbuf = None
                b = self._tbuf = bytearray(k)
        payload = memoryview(b)[:size]
        self.last = payload
        u = self.uplink()
        g = self.meter.gaps
        if u is not None and g != self._gaps_seen:  # the sampler lost sets: one event a period
            from meternode.store import records

            n = (g - self._gaps_seen) & 0x3FFFFFFF
            self._gaps_seen = g
            try:
                u.event(records.EV_SAMPLING_GAP, n, "%d sets lost in all" % self.meter.lost_sets)
            except Exception as e:
                log("gap event not recorded: %s" % e)
        if u is not None:
            try:
                await u.report(now, snap, payload)
            except Exception as e:  # e.g. MemoryError or a full flash: keep measuring
                log("report failed: %s" % e)
        elif self.mqtt is not None and self.mqtt.connected:
            try:
                t = telemetry.topic(self.config["mqtt"].get("prefix", "umeter"), self.id, "telemetry")
                await self.mqtt.publish(t, payload, qos=0)
            except Exception as e:
                log("telemetry not sent: %s" % e)

    # -- supervision (tasks.py wires the tasks, loaded for that and forgotten: what runs in them
    # and what the supervisor calls back is here) -------------------------------------------------
    def task_failed(self, w, why):
        # The supervisor's on_fail: a task ended, raised or stalled (it is restarted)
        if w.fails <= 8 or not w.fails % 16:  # a task dying for good: one event per 16 restarts
            from meternode.store import records

            self.event(records.EV_TASK, w.fails, "%s %s" % (w.name, why))

    def crash_loop(self, w, why):
        # The supervisor's on_loop.  Also in the safe configuration: a task that keeps dying
        # there (metering itself, say) is better served by a reboot than by restarts at the
        # longest backoff.
        self.crashed("%s %s" % (w.name, why))
        log("crash loop %d in task %s: rebooting" % (self.boot["loops"], w.name))
        self.reboot("crash loop in %s" % w.name)

    async def pulsing(self, w):
        # The pulse meters' task: polls the inputs every poll_ms of the HAL clock
        p = self.pulses
        while True:
            await self.hal.clock.sleep_ms(p.poll_ms)
            p.poll()
            w.beat()

    def uptime(self, up):
        # The supervisor's on_up (up: the seconds it has run), crash-loop bookkeeping: after
        # stable_s of running the loop count is cleared; in the safe configuration, after
        # safe_hold_s a planned reboot returns to the full one.
        b = self.boot
        if not (self.safe or b["loops"]):
            return  # nothing to clear or to end: a healthy node, every second
        sc = self.config.get("supervisor")
        if self.safe:
            hold = sc.get("safe_hold_s", 86400) if sc else 86400
            if hold and up >= hold:
                b["loops"] = 0
                self.save_state()
                self.reboot("safe configuration held %d s" % hold)
        else:
            stable = sc.get("stable_s", 3600) if sc else 3600
            if up >= stable:
                log("stable for %d s: crash-loop count %d cleared" % (stable, b["loops"]))
                b["loops"] = 0
                self.save_state()

    def event(self, code, arg=0, text=""):
        # An event in the record log when the uplink service runs (else only the log line).
        u = self.uplink_service
        if u is not None:
            from meternode.store import records

            u.event(code, arg, text[: records.EVENT_TEXT])

    def crashed(self, why):
        # One more crash loop in a row (a task that kept dying, a fatal error, a watchdog
        # reset), persisted: after supervisor.safe_after of them the node boots safe.
        b = self.boot
        b["loops"] += 1
        b["total"] += 1
        b["why"] = why[:80]
        self.save_state()

    def save_state(self):
        try:
            write_state(self.state_path, self.boot)
        except OSError as e:
            log("crash-loop state not saved: %s" % e)

    def save(self):
        # What a planned reboot or a caught fatal error keeps: the registers (checkpoint, at
        # once), the upload cursor, the record log.  Each step on its own: one failing does
        # not stop the others.
        ok = True
        if self.checkpoint is not None:
            ok = self._save_checkpoint(self.hal.clock.ticks_ms(), True)
        u = self.uplink_service
        if u is not None:
            try:
                u.cursor.flush()
                u.log.close()
            except Exception as e:
                ok = False
                log("record log not closed: %s" % e)
        return ok

    def reboot(self, why):
        # A planned reboot: registers checkpointed first (see save()).
        log("reboot: %s" % why)
        self.save()
        self._reset()

    def fatal(self, e):
        # An error nothing contained (a bug in the supervisor, MemoryError in the event loop):
        # checkpoint, count it like a crash loop, reboot.
        try:
            log("fatal: %r" % (e,))
            sys.print_exception(e)
        except MemoryError:
            pass
        self.crashed("fatal %s" % type(e).__name__)
        self.reboot("fatal error")

    async def run(self):
        log("umeter node %s v%s on board %s" % (self.id, VERSION, self.board["name"]))
        # The uplink service first: the record log takes the tasks' events from the start,
        # and its modules load one by one while the heap is emptiest; the supervision
        # modules after it.
        self.uplink()
        sup = run("meternode.tasks", "wire", self)
        # start-up is over: config.py (its checks, the JSON reader) goes; a module that
        # imported its names keeps them, a later import loads it again
        forget("meternode.config")
        try:
            await sup.run()
        finally:
            stop = getattr(sup.wdt, "stop", None)  # the sim stand-in stops; a real WDT cannot
            if stop is not None:
                stop()

    def _gateway(self):
        # Downstream meter buses (gateway/, docs/gateway.md): loaded only when config has
        # "gateway" (RAM); nodegw.py decides and starts it, loaded for that and forgotten
        # after (a node without a gateway never interns its names).
        return run("meternode.nodegw", "start", self)


def beating(obj, loop):
    # A module's run() loop as a task (tasks.py): its `beat` attribute reports progress.  The
    # start function returns the loop's coroutine (no frame of its own that only awaits it).
    def task(w):
        obj.beat = w.beat
        return loop()

    return task


def write_state(path, d):
    # The crash-loop state file, read at start by nodeinit.read_state
    import json
    import os

    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(d))
    os.rename(path + ".tmp", path)


def log(msg):
    print("[%d] %s" % (time.ticks_ms() if hasattr(time, "ticks_ms") else 0, msg))


def main(root="."):
    from meternode.config import load_json

    config = load_json(root + "/config.json")
    # the board's dict is not kept here: the node holds what it reads of it (nodeinit.setup)
    node = Node(load_json(root + "/board.json"), config)
    load_json = None  # while the node runs, nothing of config.py is held (Node.run forgets it)
    try:
        asyncio.run(node.run())
    except KeyboardInterrupt:
        # Stopped by the host (Ctrl-C from a tool taking the REPL, `umeter sim` ending): keep
        # the registers, so the next start continues them instead of losing what moved since
        # the last periodic checkpoint.
        #
        # The unix port raises KeyboardInterrupt straight from its SIGINT handler
        # (MICROPY_ASYNC_KBD_INTR), possibly inside the garbage collector, which then stays
        # marked as collecting: every allocation fails with "heap is locked" (measured: 3 of
        # 45 sim-node stops under load, 0 of 90 with this collection). A collection ends that
        # state; on a board Ctrl-C arrives between bytecodes and this is only a collection.
        gc.collect()
        if node.checkpoint is not None:
            try:
                node.checkpoint.save(node.hal.clock.ticks_ms(), True)
                log("registers saved")
            except Exception as e:
                log("registers not saved: %s" % e)
        log("stopped")
        sys.exit(0)
    except Exception as e:  # SystemExit (a planned reset on the unix port) passes
        node.fatal(e)
