# Hardware abstraction.  Only modules in this package import machine, rp2, esp32 or network.
# make(board, config) returns the backend named by board["hal"]: an object with
#   .clock    the one clock of the node (boards: hal/clock.py; sim: SimClock):
#             ticks_ms(), ticks_us()   30-bit ticks that wrap at 2**30, like a board's
#             ticks_diff(a, b), ticks_add(t, d)   the only arithmetic allowed on ticks
#             time()                   UTC epoch seconds, an int
#             set_time(epoch), async sleep_ms(ms)
#   .sampler  see "Sampler contract" below.
#
# Sampler contract (every backend; the meter relies on it, docs/metrology.md):
#   nch, bits, block_sets     channels per set, ADC bits, sets per block
#   rate          the board's nominal rate, sets/s (int, board.adc.rate)
#   rate_actual   the rate the hardware timer / divider really produces from its clock
#                 (float): rate itself when it divides exactly, else e.g. 2403.846 for a
#                 416-us integer timer period asked for 2400.  The meter starts from it
#                 (the node logs the correction and why).
#   overruns      blocks the consumer was too late for (dropped, counted)
#   start(), stop()
#   async next_block() -> array('H') of nch * block_sets interleaved raw counts (set k =
#                 [ch0, ch1, ...]), valid until the following call.  After it returns:
#   stamp_us      ticks_us (the clock's, wrapping at 2**30) when the block's last set was
#                 converted: the IRQ / DMA completion time, the sim clock's on the sim HAL.
#                 A constant latency is harmless; a late stamp (IRQs masked by a flash
#                 erase) is tolerated, the meter fits the early envelope of the stamps.
#   lost          sample sets known lost since start() -- missed timer ticks, FIFO / DMA
#                 overruns, dropped blocks (overruns * block_sets) -- wrapping below 2**30.
#                 Sets lost are never silent: the meter counts each increase as a gap.
# From consecutive (sets delivered + lost, stamp_us) the meter measures the real rate with
# wrap-safe integer accumulation (metrology/timebase.py) and uses it for energy and
# frequency, so neither a timer that cannot divide the rate nor a crystal's ppm error nor a
# dropped tick reaches the registers.  A backend without stamp_us / lost (older code) makes
# the meter fall back to rate_actual (or rate).
# Backends: sim (sim.py, the unix port), rp2 (rp2040.py: ADC round robin into a DMA ring,
# rp2dma.py), esp32 (esp32.py: timer-paced ADC1), mcp3208 (mcp3208.py: PIO + DMA ring on
# RP2040, timer-paced elsewhere); docs/boards.md.
# Pulse inputs: pulsein.py (IRQ ring, polled in the sampler tick on ESP32, machine.Counter),
# sim_pulses.py (sim trains).
#   .relay    the board's load relay (board "relay": {"pin", "active_low", "default"}) or None:
#             set(on) and `on` (True = load connected).  The sim HAL makes its own (it cuts
#             the simulated load); on boards relay.attach() (called by the node) adds a
#             relay.PinRelay.  Kept out of make(): every sim test compiles this module.
# The node's functions never drive .relay directly: relay.relay_control() gives the one
# RelayControl that arbitrates between the operator's commands and the policy engine.
# Watchdog and resets (the supervisor's and the node's), at the end of this module:
#   make_watchdog(board, config) -> an object with feed(), or None (config
#                 supervisor.watchdog_ms = 0): machine.WDT on boards, the stand-in
#                 sim.SimWatchdog on the sim board;
#   reset()       a planned reboot (machine.reset(); status 3 on the unix port);
#   reset_cause(mark) -> "power_on", "hard", "watchdog", "deepsleep", "soft" or "start".
# Here, not a module of their own: every node uses them (a module costs its object, globals
# and names, docs/memory.md).
# The makers below are the node's entry points; what only a board backend, pulse inputs,
# Wi-Fi or a brown-out pin needs is in hw.py, loaded only then: a module's names are
# interned for ever once it loads, so the sim node's usual path does not load it.
from micropython import const


def make_pulse_inputs(board, config, clock=None):
    # One pulse input per board "pulses" entry (hw.py): [] without any.
    if not board.get("pulses"):
        return []
    from meternode.hal import hw

    return hw.make_pulse_inputs(board, config, clock)


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


def make(board, config):
    if board["hal"] == "sim":
        from meternode.hal import sim

        return sim.SimHal(board, config.get("sim", {}))
    from meternode.hal import hw  # a board backend (or an error naming the ones there are)

    return hw.make(board, config)


_SIM_WATCHDOG_MS = const(30000)  # the sim board's default: a loaded host must not trip it


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
    import sys

    sys.exit(3)
