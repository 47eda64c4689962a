# What authenticated commands do on the node (Commands calls these): read now, configuration
# keys, relay, time, reboot, a gateway meter's valve.  Loaded only on nodes with a command key.
import json
import sys

from meternode.link import telemetry


class Actions:
    def __init__(self, service):
        self.s = service
        self.node = service.node

    def read_now(self):
        snap = self.node.meter.snapshot()
        if snap is None:
            return json.loads(self.node.last) if self.node.last else {}
        r = getattr(self.node.hal, "relay", None)
        return json.loads(
            telemetry.encode(
                self.node.id,
                0,
                self.s.clock.time(),
                snap,
                0,
                getattr(self.node, "mains", None),
                relay=r.on if r is not None else None,
            )
        )

    def _where(self, key):
        d = self.node.config
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        return d, parts[-1]

    def get_config(self, key):
        # The value in force: config.json's, else the default the node runs with.
        from meternode.link.commands import SETTABLE

        d, k = self._where(key)
        return d.get(k, SETTABLE[key][3] if key in SETTABLE else None)

    def set_config(self, key, value):
        if key == "profile_s" and 86400 % value:
            raise ValueError("profile_s = %d does not divide a day" % value)
        d, k = self._where(key)
        d[k] = value
        if key == "mqtt.backlog_rate" and self.s.outbox is not None:
            self.s.outbox.rate = value
        if key == "profile_s":
            self.s.profile.period_s = value

    def relay(self, on):
        # The operator's switch of the node's one relay (RelayControl: an off latches, an on
        # overrides policy sheds for config relay.override_s); False when there is none.
        # Commands records the event with the command's id.
        if getattr(self.node.hal, "relay", None) is None:
            return False
        from meternode.hal.relay import relay_control  # only nodes with a relay load it

        relay_control(self.node).command(on)
        return True

    def valve_refusal(self, meter_id, close):
        g = getattr(self.node, "gateway", None)
        if g is None:
            return "this node reads no meters (config.gateway)"
        return g.valve_refusal(meter_id, close)

    def valve(self, meter_id, close, msg_id):
        # Queued on the meter's bus; the gateway records the valve event and hands the
        # result to the uplink service when the meter answered.
        self.node.gateway.valve(meter_id, close, msg_id, self.s.command_result)

    def set_time(self, epoch):
        self.s.clock.set_time(epoch)

    def reboot(self):
        r = getattr(self.node, "reboot", None)
        if r is not None:  # the node's planned reboot: registers checkpointed first
            r("command")
            return
        self.s.cursor.flush()
        self.s.log.close()
        try:
            import machine

            machine.reset()
        except ImportError:
            sys.exit(3)  # unix port: the host (umeter sim) restarts the process
