# The node's tasks under its supervisor (supervisor.py): which tasks a node runs, how long
# each may go without progress, and what a crash loop does.  Loaded by Node.run() after the
# uplink service (its modules compile while the heap is emptiest).
#
# config "supervisor" (all optional, checked by config.check_config):
#   watchdog_ms     hardware watchdog timeout; 0 = none (8000 on boards, 30000 on the sim board)
#   state           crash-loop state file (default "supervisor.json"; node.read_state)
#   loop_fails      failures in a row, each run shorter than stable_s, that make a crash loop (5)
#   safe_after      crash loops in a row before the safe configuration (3)
#   stable_s        a task (or the node) running this long clears its count (3600)
#   safe_hold_s     the safe configuration lasts this long, then a planned reboot into the
#                   full one (86400; 0 = until the state file is removed)
#   backoff_min_ms, backoff_max_ms   restart backoff (500, 60000)
# A crash loop counts one more in the persisted state, checkpoints the registers and reboots
# (Node.reboot), in the safe configuration too (it stays safe: the count only grows); a
# watchdog reset and a caught fatal error count too (node.py).
from micropython import const

from meternode import run
from meternode.node import log
from meternode.store import records
from meternode.supervisor import Supervisor

_STALL_MS = const(60000)  # what a task may take beyond its own period before it counts as stalled


def wire(node):
    # The node's supervisor with its tasks registered (run() starts them).
    sc = node.config.get("supervisor", {})

    def failed(w, why):
        if w.fails <= 8 or not w.fails % 16:  # a task dying for good: one event per 16 restarts
            node.event(records.EV_TASK, w.fails, "%s %s" % (w.name, why))

    def crash_loop(w, why):
        # Also in the safe configuration: a task that keeps dying there (metering itself, say)
        # is better served by a reboot than by restarts at the longest backoff.
        node.crashed("%s %s" % (w.name, why))
        log("crash loop %d in task %s: rebooting" % (node.boot["loops"], w.name))
        node.reboot("crash loop in %s" % w.name)

    stable = sc.get("stable_s", 3600)
    hold = sc.get("safe_hold_s", 86400)
    sup = node.supervisor = Supervisor(
        log,
        run("meternode.hal.halinit", "make_watchdog", node.board, node.config),
        failed,
        crash_loop,
        backoff_min_ms=sc.get("backoff_min_ms", 500),
        backoff_max_ms=sc.get("backoff_max_ms", 60000),
        loop_fails=sc.get("loop_fails", 5),
        stable_ms=min(stable, 86400) * 1000,  # a task's run, measured in ticks: at most a day
    )
    c = node.config
    sup.add("sampling", node.sampling, 10000)
    sup.add("reporting", node.reporting, int(c.get("telemetry_s", 10.0) * 1000) + _STALL_MS)
    if node.pulses is not None:

        async def pulses(w):
            p = node.pulses
            while True:
                await node.hal.clock.sleep_ms(p.poll_ms)
                p.poll()
                w.beat()

        sup.add("pulses", pulses, 30000)
    if node._wifi() is not None:
        sup.add("wifi", _beating(node.wifi, node.wifi.run), 180000)
    m = c.get("mqtt")
    if m:
        sup.add("link", node.link, m.get("backoff_max_ms", 30000) + 90000)
    u = node.uplink_service
    if c.get("lora") and u is not None and u.lora is not None:
        # the modem's line reader first (the lora task's commands wait for its replies); it
        # waits for the module's bytes without a deadline: stall_ms 0 (supervisor.py)
        sup.add("lora reader", _beating(u.lora.modem, u.lora.modem.read_loop), 0)
        # the LoRaWAN task (configure the modem, then LoRaLink.run); the reader is untouched
        # when this one restarts
        sup.add("lora", _beating(u.lora, u.run_lora), 300000)
    if c.get("fleet") or c.get("policy"):
        try:  # only nodes with policies load the policy package; a bad one never stops metering
            from meternode.policy.service import PolicyService

            node.policy = PolicyService(node, log)
            sup.add("policy", _beating(node.policy, node.policy.run), 60000)
        except Exception as e:
            log("policy service not started: %s" % e)
    if c.get("gateway"):  # downstream meter buses (gateway/): loaded only when configured
        g = node._gateway()
        if g is not None:
            for name, start, stall in g.starts():
                sup.add(name, start, stall)

    async def uptime(w):
        # Crash-loop bookkeeping: after stable_s of running the loop count is cleared; in the
        # safe configuration, after safe_hold_s a planned reboot returns to the full one.
        import asyncio

        up = 0  # seconds since boot, counted (nothing here grows past a small int)
        while True:
            await asyncio.sleep_ms(1000)
            w.beat()
            up += 1
            b = node.boot
            if node.safe:
                if hold and up >= hold:
                    b["loops"] = 0
                    node.save_state()
                    node.reboot("safe configuration held %d s" % hold)
            elif b["loops"] and up >= stable:
                log("stable for %d s: crash-loop count %d cleared" % (stable, b["loops"]))
                b["loops"] = 0
                node.save_state()

    sup.add("uptime", uptime, 30000)
    if node.safe:
        b = node.boot
        log("safe configuration: %d crash loops in a row (%s)" % (b["loops"], b["why"]))
        node.event(records.EV_SAFE_MODE, b["loops"], b["why"])
    return sup


def _beating(obj, run):
    # A module's run() loop as a task: its `beat` attribute reports progress.
    async def task(w):
        obj.beat = w.beat
        await run()

    return task
