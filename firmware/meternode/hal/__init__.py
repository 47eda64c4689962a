# Hardware abstraction.  Only modules in this package import machine, rp2, esp32 or network.
# halinit.make(board, config) returns the backend named by board["hal"]: an object with
#   .clock    the one clock of the node (boards: hal/clock.py; sim: SimClock):
#             ticks_ms(), ticks_us()   30-bit ticks that wrap at 2**30, like a board's
#             ticks_diff(a, b), ticks_add(t, d)   the only arithmetic allowed on ticks
#             time()                   UTC epoch seconds, an int
#             set_time(epoch), sleep_ms(ms) -> an awaitable (the sim's: asyncio's own,
#             no coroutine of its own held by each sleeping task)
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
# The makers and the watchdog (the node's set-up and the supervisor's wiring, each called
# once) are in halinit.py, loaded for the call and forgotten after (meternode.run,
# docs/memory.md): a running node does not hold their code.
#   make(board, config)        the backend named by board["hal"] (above)
#   make_wlan(board, config), make_brownout(board)   see there
#   make_watchdog(board, config) -> an object with feed(), or None (config
#                 supervisor.watchdog_ms = 0): machine.WDT on boards, the stand-in
#                 sim.SimWatchdog on the sim board;
#   reset_cause(mark) -> "power_on", "hard", "watchdog", "deepsleep", "soft" or "start".
# Here: reset() (a planned reboot; kept loaded: it must work when the heap is exhausted) and
# make_pulse_inputs() (pulses.py's).  What only a board backend, pulse inputs, Wi-Fi or a
# brown-out pin needs is in hw.py, loaded only then: a module's names are interned for ever
# once it loads, so the sim node's usual path does not load it.


def make_pulse_inputs(board, config, clock=None):
    # One pulse input per board "pulses" entry (hw.py): [] without any.
    if not board.get("pulses"):
        return []
    from meternode.hal import hw

    return hw.make_pulse_inputs(board, config, clock)


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
