# The board's load relay: the entry check and RelayControl, the one relay as the node's
# functions see it (the operator's `relay` command and the policy engine both drive it
# through here; docs/policy.md, "One relay").  The GPIO backend (RP2040 and ESP32 alike) is
# hw.PinRelay, loaded on boards only; the sim HAL's relay (hal/sim.py SimHal.set) cuts the
# simulated load instead of a pin.
from meternode.config import ConfigError, need


def check_relay(spec, where="board.relay"):
    # The board's relay entry: {"pin": n, "active_low": false, "default": true}; ConfigError
    # naming the key.  `default` is the state at boot (True = load connected).
    if not isinstance(spec, dict):
        raise ConfigError("%s must be an object with pin, active_low, default" % where)
    need(spec, "pin", int, where, lo=0, hi=255)
    need(spec, "active_low", bool, where, default=False)
    need(spec, "default", bool, where, default=True)
    return spec


class RelayControl:
    # The one relay as the node sees it, with two drivers (see docs/policy.md, "One relay"):
    #   command(on)        the operator (an authenticated `relay` command, MQTT):
    #                      off opens and latches open until an operator on (a remote
    #                      disconnect is never undone by the policy); on closes and holds
    #                      the relay closed against policy sheds for override_s seconds
    #                      (0: the policy's next shed applies at once);
    #   engine(on, why)    the policy engine (limits, demand response): applies whenever no
    #                      operator latch or override holds; its wish is kept, so it applies
    #                      when an override ends (tick()).
    # on_change(on, reason) runs after every switch the engine or an override's end made;
    # operator switches are recorded by the command handler with the command's id.
    # The operator's latch and override persist in `path` (written on each command, atomically),
    # so a remote disconnect holds across a reboot or a power cut.
    def __init__(self, relay, clock, override_s=3600, path=None):
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

    def _save(self):
        if not self.path:
            return
        import os

        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write("%d %d" % (self.latched, self.until))
            os.rename(tmp, self.path)
        except OSError:
            pass  # flash full or gone: the switch itself matters more than remembering it

    @property
    def on(self):
        return self.relay.on

    def command(self, on):
        # -> the relay's state now (an operator on with override_s 0 leaves a policy shed be).
        if on:
            self.latched = False
            self.until = int(self.clock.time()) + self.override_s if self.override_s else 0
            target = True if self.until else self.engine_on
        else:
            self.latched = True
            self.until = 0
            target = False
        self._save()
        self._switch(target, None)
        return target

    def engine(self, on, why):
        self.engine_on = bool(on)
        if not self._apply(why):
            if self.relay.on != self.engine_on:
                self.held_off += 1

    def tick(self):
        # Every second or so: an expired operator override hands the relay back to the engine.
        if self.latched or not self.until or int(self.clock.time()) < self.until:
            return False  # (no allocation on the way: this runs every second)
        return self._apply("override ended, policy %s" % ("restore" if self.engine_on else "shed"))

    def _apply(self, why):
        if self.latched:
            return False
        if self.until:
            if int(self.clock.time()) < self.until:
                return False
            self.until = 0
        return self._switch(self.engine_on, why)

    def _switch(self, on, why):
        if on == self.relay.on:
            return False
        self.relay.set(on)
        self.switches += 1
        if why is not None and self.on_change is not None:
            self.on_change(on, why)
        return True


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


def relay_control(node):
    # The node's RelayControl (made on first use, kept on the HAL), or None without a relay.
    # node.config["relay"]: {"override_s": 3600} (how long an operator's on beats policy
    # sheds); the operator's hold persists beside the record log (<store.path>.relay).
    h = node.hal
    ctl = getattr(h, "relay_ctl", None)
    if ctl is None and getattr(h, "relay", None) is not None:
        c = need(node.config, "relay", dict, "config", default={})
        o = need(c, "override_s", int, "config.relay", default=3600, lo=0, hi=604800)
        path = node.config.get("store", {}).get("path", "store") + ".relay"
        ctl = RelayControl(h.relay, h.clock, o, path)
        h.relay_ctl = ctl
    return ctl
