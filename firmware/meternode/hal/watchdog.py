# The watchdog and resets, for the supervisor (supervisor.py) and the node:
#   make_watchdog(board, config) -> an object with feed(), or None (config
#                 supervisor.watchdog_ms = 0): machine.WDT on boards, the stand-in in
#                 simwdt.py on the sim board;
#   reset()       a planned reboot (machine.reset(); status 3 on the unix port);
#   reset_cause(mark) -> "power_on", "hard", "watchdog", "deepsleep", "soft" or "start".
# Kept out of __init__.py: every sim test compiles that on a small heap.
import sys

from micropython import const

_SIM_WATCHDOG_MS = const(30000)  # the sim board's default: a loaded host must not trip it


def make_watchdog(board, config):
    # The hardware watchdog the supervisor feeds (config supervisor.watchdog_ms; 0 = none):
    # machine.WDT where `machine` has one (boards, and the virtual board's stand-in), else on
    # the sim board the stand-in in simwdt.py.  Once started, a board's WDT cannot stop.
    sc = config.get("supervisor", {})
    ms = sc.get("watchdog_ms", _SIM_WATCHDOG_MS if board["hal"] == "sim" else 8000)
    if not ms:
        return None
    try:
        import machine

        wdt = getattr(machine, "WDT", None)
    except ImportError:
        wdt = None
    if wdt is not None:
        if board.get("mcu", "").startswith("rp2") and ms > 8388:
            ms = 8388  # the RP2040's longest
        return wdt(timeout=ms)
    if board["hal"] == "sim":
        from meternode.hal.simwdt import SimWatchdog

        state = sc.get("state", "supervisor.json")
        return SimWatchdog(ms, state + ".wdt", state + ".stop")
    return None


def reset_cause(mark=None):
    # Why this boot: machine.reset_cause() by the port's own constants; on the unix port the
    # sim watchdog's mark file (read once, then removed) or "start".
    try:
        import machine

        cause = machine.reset_cause()
    except (ImportError, AttributeError):
        cause = None
    if cause is not None:
        for const_name, word in (  # a constant of this function: no module global
            ("PWRON_RESET", "power_on"),
            ("HARD_RESET", "hard"),
            ("WDT_RESET", "watchdog"),
            ("DEEPSLEEP_RESET", "deepsleep"),
            ("SOFT_RESET", "soft"),
        ):
            if getattr(machine, const_name, None) == cause:
                return word
        return "cause %d" % cause
    if mark:
        import os

        try:
            os.stat(mark)
        except OSError:
            return "start"
        try:
            os.remove(mark)
        except OSError:
            pass
        return "watchdog"
    return "start"


def reset():
    # A planned reboot: machine.reset() on boards; on the unix port the process ends with
    # status 3 and whoever runs the node (umeter sim, the soak, a virtual board) starts it again.
    try:
        import machine

        r = getattr(machine, "reset", None)
    except ImportError:
        r = None
    if r is not None:
        r()
    sys.exit(3)
