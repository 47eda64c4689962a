# The board's load relay: RelayControl, the one relay as the node's
# functions see it (the operator's `relay` command and the policy engine both drive it
# through here; docs/policy.md, "One relay").  The GPIO backend (RP2040 and ESP32 alike) is
# hw.PinRelay, loaded on boards only; the sim HAL's relay (hal/sim.py SimHal.set) cuts the
# simulated load instead of a pin.  The entry check, attach() and making the RelayControl are
# set-up, in hal/halinit.py.
from meternode import run


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
        # the state, the persisted hold read back and the relay driven to it:
        # hal/halinit.py relay(), loaded for the call
        run("meternode.hal.halinit", "relay", self, relay, clock, override_s, path)

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


def relay_control(node):
    # The node's RelayControl (made on first use by halinit.relay_control, kept on the HAL), or
    # None without a relay.
    h = node.hal
    ctl = getattr(h, "relay_ctl", None)
    if ctl is None and getattr(h, "relay", None) is not None:
        ctl = run("meternode.hal.halinit", "relay_control", node)
    return ctl
