# The node's tasks under its supervisor (supervisor.py): which tasks a node runs, how long
# each may go without progress, and what a crash loop does.  Loaded by Node.run() after the
# uplink service (its modules compile while the heap is emptiest), for wire() only, and
# forgotten after (meternode.run, docs/memory.md): the tasks' own loops and the supervisor's
# callbacks are the Node's methods (node.py), so a running node does not hold this code.
#
# config "supervisor" (all optional, checked at start by nodeinit._check_supervisor):
#   watchdog_ms     hardware watchdog timeout; 0 = none (8000 on boards, 30000 on the sim board)
#   state           crash-loop state file (default "supervisor.json"; nodeinit.read_state)
#   loop_fails      failures in a row, each run shorter than stable_s, that make a crash loop (5)
#   safe_after      crash loops in a row before the safe configuration (3)
#   stable_s        a task (or the node) running this long clears its count (3600)
#   safe_hold_s     the safe configuration lasts this long, then a planned reboot into the
#                   full one (86400; 0 = until the state file is removed)
#   backoff_min_ms, backoff_max_ms   restart backoff (500, 60000)
#   heap_check_s    the reporting task collects after a report at most this often and keeps
#                   the least free heap it saw, for the `status` command (30; 0 = every report)
# A crash loop counts one more in the persisted state, checkpoints the registers and reboots
# (Node.reboot), in the safe configuration too (it stays safe: the count only grows); a
# watchdog reset and a caught fatal error count too (node.py).
from micropython import const

from meternode import run
from meternode.node import beating, log
from meternode.store import records
from meternode.supervisor import Supervisor

_STALL_MS = const(60000)  # what a task may take beyond its own period before it counts as stalled


def wire(node):
    # The node's supervisor with its tasks registered (run() starts them).
    sc = node.config.get("supervisor", {})
    sup = node.supervisor = Supervisor(
        log,
        run("meternode.hal.halinit", "make_watchdog", node.board, node.config),
        node.task_failed,
        node.crash_loop,
        backoff_min_ms=sc.get("backoff_min_ms", 500),
        backoff_max_ms=sc.get("backoff_max_ms", 60000),
        loop_fails=sc.get("loop_fails", 5),
        # a task's run, measured in ticks: at most a day
        stable_ms=min(sc.get("stable_s", 3600), 86400) * 1000,
        on_up=node.uptime,  # crash-loop bookkeeping (Node.uptime)
    )
    c = node.config
    sup.add("sampling", node.sampling, 10000)
    sup.add("reporting", node.reporting, int(c.get("telemetry_s", 10.0) * 1000) + _STALL_MS)
    if node.pulses is not None:
        sup.add("pulses", node.pulsing, 30000)
    if wifi(node) is not None:
        sup.add("wifi", beating(node.wifi, node.wifi.run), 180000)
    m = c.get("mqtt")
    if m:
        sup.add("link", node.link, m.get("backoff_max_ms", 30000) + 90000)
    u = node.uplink_service
    if c.get("lora") and u is not None and u.lora is not None:
        # the modem's line reader first (the lora task's commands wait for its replies); it
        # waits for the module's bytes without a deadline: stall_ms 0 (supervisor.py)
        sup.add("lora reader", beating(u.lora.modem, u.lora.modem.read_loop), 0)
        # the LoRaWAN task (configure the modem, then LoRaLink.run); the reader is untouched
        # when this one restarts
        sup.add("lora", beating(u.lora, u.run_lora), 300000)
    if c.get("fleet") or c.get("policy"):
        try:  # only nodes with policies load the policy package; a bad one never stops metering
            from meternode.policy.service import PolicyService

            node.policy = PolicyService(node, log)
            sup.add("policy", node.policy.run, 60000)  # run(w) points its beat at the watch itself
        except Exception as e:
            log("policy service not started: %s" % e)
    if c.get("gateway"):  # downstream meter buses (gateway/): loaded only when configured
        g = node._gateway()
        if g is not None:
            for name, start, stall in g.starts():
                sup.add(name, start, stall)
    if node.safe:
        b = node.boot
        log("safe configuration: %d crash loops in a row (%s)" % (b["loops"], b["why"]))
        node.event(records.EV_SAFE_MODE, b["loops"], b["why"])
    return sup


def wifi(node):
    # Wi-Fi supervision on boards (config "wifi"), wired by link/wifi.py: loaded only where
    # the board has a radio.  -> node.wifi, or None.
    wlan = run("meternode.hal.halinit", "make_wlan", node.board, node.config)
    if wlan is None:
        return None
    from meternode.link.wifi import supervise

    node.wifi = supervise(node, wlan)
    return node.wifi
