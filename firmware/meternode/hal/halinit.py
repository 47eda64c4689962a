# The HAL's makers and the watchdog (hal/__init__.py says what each gives), each called once:
# by the node's set-up (nodeinit.py) and the supervisor's wiring (tasks.py).
# Loaded for the call and forgotten after (meternode.run, docs/memory.md): a running node
# does not hold this code.
from micropython import const

_SIM_WATCHDOG_MS = const(30000)  # the sim board's default: a loaded host must not trip it


def make(board, config):
    if board["hal"] == "sim":
        from meternode.hal import sim

        return sim.SimHal(board, config.get("sim", {}))
    from meternode.hal import hw  # a board backend (or an error naming the ones there are)

    return hw.make(board, config)


def make_wlan(board, config):
    # The station interface the node keeps connected (link/wifi.py) when config["wifi"] names
    # a network; None on the unix port (host networking) or where there is no `network`.
    if not config.get("wifi") or board["hal"] == "sim" and not board.get("wifi"):
        return None
    from meternode.hal import hw

    return hw.make_wlan(board, config)


def make_brownout(board):
    # The board's brown-out warning input (hw.Brownout), or None.
    if not board.get("brownout") or board["hal"] == "sim":
        return None
    from meternode.hal import hw

    return hw.make_brownout(board)


def make_watchdog(board, config):
    # The hardware watchdog the supervisor feeds (config supervisor.watchdog_ms; 0 = none):
    # machine.WDT where `machine` has one (boards, and the virtual board's stand-in), else on
    # the sim board the stand-in sim.SimWatchdog.  Once started, a board's WDT cannot stop.
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
        from meternode.hal.sim import SimWatchdog

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
