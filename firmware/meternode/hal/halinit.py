# The HAL's makers and the watchdog (hal/__init__.py says what each gives), each called once:
# by the node's set-up (nodeinit.py) and the supervisor's wiring (tasks.py); the load relay's
# entry check, attach() and the node's RelayControl (hal/relay.py).
# Loaded for the call and forgotten after (meternode.run, docs/memory.md): a running node
# does not hold this code.
from micropython import const

from meternode.config import ConfigError, need
from meternode.hal.relay import RelayControl

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


def check_relay(spec, where="board.relay"):
    # The board's relay entry: {"pin": n, "active_low": false, "default": true}; ConfigError
    # naming the key.  `default` is the state at boot (True = load connected).
    if not isinstance(spec, dict):
        raise ConfigError("%s must be an object with pin, active_low, default" % where)
    need(spec, "pin", int, where, lo=0, hi=255)
    need(spec, "active_low", bool, where, default=False)
    need(spec, "default", bool, where, default=True)
    return spec


def attach(h, board):
    # After halinit.make(): checks the board's relay entry and gives a board backend its
    # hw.PinRelay (the sim HAL has made its own); h.relay is None without a relay entry.  The
    # pin is not driven here: relay_control() drives it once, to the persisted state.
    spec = board.get("relay")
    if spec:
        check_relay(spec)
        if getattr(h, "relay", None) is None:
            from meternode.hal import hw

            h.relay = hw.PinRelay(spec, None, True)  # deferred
    elif not hasattr(h, "relay"):
        h.relay = None


def relay(self, relay, clock, override_s, path):
    # RelayControl.__init__ (hal/relay.py)
    self.relay = relay
    self.clock = clock
    self.override_s = override_s
    self.path = path
    self.engine_on = True  # what the policy engine wants
    self.latched = False  # the operator opened the relay
    self.until = 0  # the operator's override (closed) holds until this epoch second
    self.on_change = None
    self.switches = 0
    self.held_off = 0  # engine requests an operator latch/override kept from the relay
    if path:
        try:
            with open(path) as f:
                w = f.read().split()
            self.latched = w[0] == "1"
            self.until = int(w[1])
        except (OSError, ValueError, IndexError):
            pass  # none yet (or torn: the write is atomic, so only a foreign file)
    if relay.on is None:  # not driven yet (a deferred PinRelay): its first level is the right one
        relay.set(False if self.latched else True if self.until else getattr(relay, "default", True))
    elif self.latched and relay.on:
        relay.set(False)  # the remote disconnect from before the reboot
    elif self.until and not relay.on:
        relay.set(True)


def relay_control(node):
    # relay.relay_control()'s first call: the node's RelayControl, kept on the HAL.
    # node.config["relay"]: {"override_s": 3600} (how long an operator's on beats policy
    # sheds); the operator's hold persists beside the record log (<store.path>.relay).
    h = node.hal
    c = need(node.config, "relay", dict, "config", default={})
    o = need(c, "override_s", int, "config.relay", default=3600, lo=0, hi=604800)
    path = node.config.get("store", {}).get("path", "store") + ".relay"
    h.relay_ctl = ctl = RelayControl(h.relay, h.clock, o, path)
    return ctl
