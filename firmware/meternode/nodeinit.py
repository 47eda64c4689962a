# What Node() does once: check the board and the configuration, read the crash-loop state,
# make the HAL, the meter, the pulse meters and the checkpointer; and what Node.uplink()'s
# first call does (uplink()).  Loaded by Node.__init__ and by that call, forgotten after
# each (meternode.forget, meternode.run, docs/memory.md): a running node does not hold this code.
import sys

from micropython import const

from meternode import forget
from meternode.metrology.meter import Meter
from meternode.node import log

# Free heap store-and-forward needs before it loads (uplink_need, at the first uplink()): what
# its modules and its state hold once loaded, as benchmarks/memory.py measures it
# ("uplink_cost", the node's "store-and-forward on" line) on each kind of port, rounded up to
# the KB (+ up to 1 KB of run-to-run noise), plus _WORKING for what the running node allocates
# and frees again (reports, publishes, a reconnect). Objects are machine words, so a 64-bit
# port needs more than a 32-bit board; code run in place (ROMFS, frozen) needs less than .mpy
# loaded into the heap; source needs its compiler's peak on top (_COMPILE).
# KB, four per port and load: record log only, + MQTT link and outbox, + commands, + LoRaWAN
# (its modules, the modem driver and link: measured as a LoRa-only node's cost less a
# metering-only one's); in the order 64-bit .mpy, 64-bit in place, 32-bit .mpy, 32-bit in place
# (one bytes constant, not a dict of tuples: a dozen heap objects fewer)
_UPLINK_COST = b"\x11\x26\x04\x15\x0a\x16\x03\x0d\x0c\x1b\x03\x0f\x07\x0d\x01\x08"
_WORKING = const(16)  # KB
_COMPILE = const(16)  # KB: a module compiled from source needs its parse tree for a moment
_TELEMETRY_BUF = const(1024)  # bytes; the sim board's payload is ~700 (it grows for a larger board's)

_SAFE_DROP = ("policy", "fleet", "ota", "cmd_key", "lora")  # not in the safe configuration


def setup(node, board, config):
    # A collection after every eighth of the heap allocated (gc.threshold), not only when the
    # heap is full: start-up loads modules and forgets them, and a heap first collected when
    # full has their garbage and the long-lived objects made meanwhile interleaved from end to
    # end.  Measured (docs/memory.md): a +fleet node in what it holds + 32 KB had 20 KB free
    # in no piece over 640 bytes at its first connect, and discovery and reports failed.
    import gc

    if hasattr(gc, "threshold"):  # not on CircuitPython
        gc.threshold((gc.mem_free() + gc.mem_alloc()) >> 3)
    # the board's and the config's checks, loaded for them and forgotten after (collected
    # first: compiled from source, a module needs its parse tree in one piece)
    gc.collect()
    from meternode import checks

    node.board = checks.check_board(board)
    checks.check_config(config)
    checks = None
    forget("meternode.checks")
    # midnight, the month and the profile's and demand's periods in local standard time
    from meternode import ticks

    ticks.LOCAL_S = config.get("utc_offset_min", 0) * 60
    from meternode.hal import halinit  # the makers: forgotten at the end

    sc = _check_supervisor(config)
    # crash-loop state (persisted, tasks.py) and why we booted: a watchdog reset is a loop
    node.state_path = sc.get("state", "supervisor.json")
    node.boot = read_state(node.state_path)
    node.reset_cause = halinit.reset_cause(node.state_path + ".wdt")
    if node.reset_cause == "watchdog":
        node.crashed("watchdog reset")
    node.safe = node.boot["loops"] >= sc.get("safe_after", 3)
    node._heap_ms = sc.get("heap_check_s", 30) * 1000  # the low-water mark's collections (Node.reporting)
    if node.safe:
        config = dict(config)
        for k in _SAFE_DROP:
            config.pop(k, None)
    node.config = config
    node.id = config["node_id"]
    node.hal = halinit.make(board, config)
    if board.get("relay"):  # the load relay: entry checked, a GPIO relay on boards, and
        from meternode.hal.relay import relay_control

        halinit.attach(node.hal, board)
        relay_control(node)  # an operator's remote disconnect held across the reboot
    node.meter = Meter(board, config.get("calibration"), config.get("metrology"))
    node.meter.energy.clock = node.hal.clock
    _timebase(node.meter, node.hal.sampler)
    node._gaps_seen = 0  # meter gaps already recorded as events
    node.pulses = None  # water/gas/S0 pulse meters (pulses.py), when the board has inputs
    if board.get("pulses"):
        from meternode.pulses import PulseService

        node.pulses = PulseService(board, config, node.hal.clock)
    node.checkpoint = _checkpointer(node.meter, config.get("checkpoint", {}), node.pulses)
    node.brownout = halinit.make_brownout(board)  # board brown-out pin: checkpoint at once
    node.seq = 0
    node._plain = None  # the fallback link's connected client (no store-and-forward)
    node.last = None  # the last telemetry payload (a memoryview of _tbuf, until the next)
    # the telemetry payload's buffer, made once (telemetry.encode_into; docs/memory.md)
    node._tbuf = bytearray(_TELEMETRY_BUF)
    node.ckpt_errors = 0  # checkpoint writes that failed (flash full)
    node.heap_low = 0x3FFFFFFF  # the least free heap after a report's collection (Node.reporting)
    node._heap_at = None  # ticks_ms of that collection (None: the next report makes one)
    node._ckpt_hold = None  # after a failed write: ticks_ms before which none is tried
    node.supervisor = None
    from meternode.hal import reset

    node._reset = reset  # how a planned reboot resets (tests replace it)
    # elements on the grid connection: telemetry totals add these only
    node.mains = [c["name"] for c in board["channels"][1:] if c.get("role", "main") == "main"]
    # node.board without what no code reads once the node is made: the board's documentation
    # and the host's sizing, what the HAL, the meter, the pulse meters and the brown-out pin
    # were made from above, and the buses unless the gateway or the LoRa modem's UART check
    # will read them (measured on the sim board, 32-bit ROMFS: 2.2 KB of strings, floats and
    # dicts held for the node's life)
    unread = ("description", "heap_note", "capabilities", "heap", "arch")  # documentation, sizing
    unread += ("adc", "channels", "metrology", "pulses", "brownout")  # what the objects above came from
    if not (config.get("gateway") or config.get("lora")):
        unread += ("buses",)
    node.board = {k: v for k, v in board.items() if k not in unread}
    forget("meternode.hal.halinit")


def read_state(path):
    # The crash-loop state file (node.write_state): {"loops": in a row, "total": ever, "why":
    # the last one}; a missing, torn or foreign file is a clean state.
    import json

    d = {"loops": 0, "total": 0, "why": ""}
    try:
        with open(path) as f:
            got = json.load(f)
        for k in d:
            if isinstance(got.get(k), type(d[k])):
                d[k] = got[k]
    except (OSError, ValueError, AttributeError):
        pass
    return d


def _timebase(meter, s):
    # The rate the sampler really produces: the meter starts from it, and a board whose
    # timer cannot make board.adc.rate exactly is corrected here, with the reason logged.
    ra = getattr(s, "rate_actual", s.rate)
    if ra != s.rate:
        log(
            "sampler: board.adc.rate %d S/s runs at %.3f S/s (the timer cannot divide it exactly, "
            "%+.0f ppm): metering uses %.3f and measures it from then on" % (s.rate, ra, (ra / s.rate - 1) * 1e6, ra)
        )
    meter.use_rate(ra)


_SUPERVISOR = (  # config.supervisor: int keys and their ranges (tasks.py says what they do)
    ("watchdog_ms", 0, 3600000),
    ("loop_fails", 2, 1000),
    ("safe_after", 1, 1000),
    ("stable_s", 1, 30 * 86400),
    ("safe_hold_s", 0, 365 * 86400),
    ("backoff_min_ms", 1, 3600000),
    ("backoff_max_ms", 1, 3600000),
    ("heap_check_s", 0, 86400),
)


def _check_supervisor(c):
    from meternode.config import ConfigError, need

    w = "config.supervisor"
    s = need(c, "supervisor", dict, "config", default={})
    need(s, "state", str, w, default="")
    for k, lo, hi in _SUPERVISOR:
        need(s, k, int, w, default=lo, lo=lo, hi=hi)
    if 0 < s.get("watchdog_ms", 0) < 1000:
        raise ConfigError("config.supervisor.watchdog_ms must be 0 (none) or at least 1000")
    if s.get("backoff_max_ms", 60000) < s.get("backoff_min_ms", 1):
        raise ConfigError("config.supervisor.backoff_max_ms is below backoff_min_ms")
    return s


def _checkpointer(meter, c, pulses=None):
    # Power-fail-safe registers (store/checkpoint.py): restore the newest good checkpoint,
    # then save on energy delta / period.  config.checkpoint: dir, delta_mwh, period_s,
    # min_interval_s; {"dir": ""} turns it off.
    d = c.get("dir", "ckpt")
    if not d:
        return None
    from meternode.store.checkpoint import Checkpointer, CheckpointStore

    ck = Checkpointer(
        CheckpointStore(d),
        meter,
        c.get("delta_mwh", 50000),
        c.get("period_s", 3600),
        c.get("min_interval_s", 60),
        pulses.state if pulses is not None else None,
    )
    p = ck.restore()
    if p is not None:
        if pulses is not None:
            pulses.restore(p.get("extra"))
        log("registers restored from checkpoint %d" % ck.store.seq)
    elif ck.rejected:
        log(ck.rejected)
    return ck


def _loaded():
    # How this module was loaded: 0 compiled from source, 1 a .mpy file read into the heap,
    # 2 run in place: from a ROMFS image at /rom, or frozen into the firmware (its __file__ is
    # relative to ".frozen", "meternode/nodeinit.py", and names no file; the same path that names
    # a file was imported from the working directory, "" being before ".frozen" on sys.path).
    # Frozen code takes the ROMFS costs: it holds less (no qstr pools for its names,
    # docs/memory.md), so the gate errs on the side of room.
    f = globals().get("__file__", "")
    if f.startswith("/rom/"):
        return 2
    if f and f[0] != "/":
        import os

        try:
            os.stat(f)
        except OSError:
            return 2
    return 0 if f.endswith(".py") else 1


def uplink_need(config):
    # Bytes of free heap store-and-forward needs on this port, loaded as this module is (_UPLINK_COST).
    load = _loaded()
    i = (0 if sys.maxsize >> 32 else 8) + (4 if load == 2 else 0)
    c = _UPLINK_COST
    kb = c[i + 1 if config.get("mqtt") else i] + (c[i + 2] if config.get("cmd_key") else 0) + _WORKING
    if config.get("lora"):
        kb += c[i + 3]
    return (kb + (_COMPILE if load == 0 else 0)) * 1024


def uplink(node):
    # Node.uplink()'s first call: decide from the free heap whether store-and-forward fits,
    # load its modules one at a time, make the service; -> it, or None (the reason logged).
    import gc

    gc.collect()
    free = gc.mem_free() if hasattr(gc, "mem_free") else 1 << 30
    u = None
    need = uplink_need(node.config)
    if free < need:
        # A failed import would still leave its interned names behind: decide first.
        log("store-and-forward off: %d bytes free, it needs %d (raise the heap)" % (free, need))
    else:
        try:
            # one module at a time with a collection between: on a source-loaded heap
            # each compile then finds room (importing service.py alone pulls them all)
            extra = ("meternode.link.commands", "meternode.link.actions") if node.config.get("cmd_key") else ()
            if node.config.get("mqtt"):  # ~16 KB a metering-only or LoRa-only node saves
                extra += (
                    "meternode.link.mqtt",
                    "meternode.link.uplink",
                    "meternode.link.outbox",
                )
            for name in extra + (
                "meternode.store.records",
                "meternode.store.log",
                "meternode.store.profile",
                "meternode.link.service",
            ):
                __import__(name)
                gc.collect()
            m = node.config.get("mqtt")
            if m and m.get("discovery", True):
                # Discovery for the first connect, loaded now while the heap is emptiest
                # (the link forgets it once published, link/uplink.py): its names may
                # start a new qstr pool, one block of several KB, which the heap may not
                # have in one piece once every task runs (docs/memory.md)
                __import__("meternode.link.discovery")
                gc.collect()
            from meternode.link.service import UplinkService

            u = UplinkService(node, node.reset_cause)
            gc.collect()
            log("store-and-forward on: %d bytes free before, %d after" % (free, gc.mem_free()))
        except Exception as e:
            log("uplink not started: %s" % e)
    return u
