# The node's uplink service: wires the record log, the profile recorder, the outbox, the MQTT
# link and the command handler from the node's configuration.  node.py calls `run()` (the
# link task) and `report()` (every telemetry period).
#
# config keys (all optional beside mqtt.host):
#   store: {path: "store", segment_bytes: 16384, max_bytes: 262144}
#   profile_s: 900            load-profile period
#   cmd_key: "<hex>"          node key for command HMACs (commands are off without it)
#   mqtt: see link/linkinit.py check_mqtt
#   lora: {port, deveui, appeui, appkey, region: EU868, dr: 0, fport: 2, confirmed: true,
#          daily_budget_ms: 30000, mode: "fallback" | "always", policy_fport: 10}
#         (see loraservice.check); downlinks go to `lora_ports[fport]` (the policy service
#         registers its small-frame handler there)
#   relay: {override_s: 3600}  how long an operator's relay on beats policy sheds (hal.RelayControl)
# Relay switches made by the policy (RelayControl.on_change) are relay events with the reason.
# Command results wait for the link in a queue of at most RESULTS_MAX: when it is full the
# oldest refusal goes first (a flood of forged commands cannot push out the answer to a real
# one), else the oldest result; drops are counted (stats()["results_dropped"]).
# What commands do (actions.py) is loaded per authentic command, LoRa wiring (loraservice.py)
# only when configured (a module's compile peak matters on a source-loaded heap).
import json

from micropython import const

from meternode import VERSION, run
from meternode.store import records
from meternode.store.log import LogError

RESULTS_MAX = const(8)


class UplinkService:
    def __init__(self, node, reason=None):
        # The wiring runs once (store/storeinit.py: start-up code, loaded for it and forgotten
        # after): config.store checked, the cursor, the record log, the outbox and MQTT link
        # (None without MQTT), the profile recorder, the commands (None without cmd_key),
        # LoRaWAN, the relay's events; then the opening's and the boot's events.
        run("meternode.store.storeinit", "service", self, node, reason)

    def _relay_changed(self, on, why):
        self.event(records.EV_RELAY, 1 if on else 0, why)

    def run_lora(self):
        # -> the LoRaWAN task's coroutine (loraservice.run itself: no frame here awaiting it)
        from meternode.link import loraservice

        return loraservice.run(self)

    # -- records ---------------------------------------------------------------------------
    def _wake(self, seq=0):
        if self.outbox is not None:
            self.outbox.notify()

    def event(self, code, arg=0, text=""):
        # Appends an event; 0 when the flash has no room (counted by the log, and said with a
        # log_full event once it has): an event never raises into whoever reported it.
        try:
            seq = self.log.append(records.EVENT, int(self.clock.time()), records.event(code, arg, text))
        except LogError:
            return 0
        self._wake()
        return seq

    def _delivered(self):
        # The seq every publisher has delivered (the log may delete up to it for room).
        a = self.cursor.acked if self.outbox is not None else None
        lo = self.lora
        if lo is not None:
            b = lo.cursor.acked
            if a is None:
                return b
            return max(a, b) if lo.floor is not None else min(a, b)  # fallback: either link
        return a if a is not None else self.log.last_seq  # no publisher: a local history

    def _unreadable(self, seq, why):
        self.event(records.EV_LOG_CORRUPT, seq, "unreadable %d: %s" % (seq, why))

    def _dropped(self, n, first, last):
        # Called inside an append: the drop event is appended right after it.
        self._drop_note = (n, first, last)

    async def report(self, ts, snap, payload):
        # Every telemetry period: profile accounting, then live telemetry (QoS 0).
        try:
            self.profile.add(ts, snap)
        except LogError:
            pass  # flash full: counted in log.unwritten, said below once there is room
        note = getattr(self, "_drop_note", None)
        if note:
            self._drop_note = None
            self.event(records.EV_LOG_DROPPED, note[0], "seq %d-%d" % (note[1], note[2]))
        lost = self.log.unwritten - self._unwritten_said
        if lost and self.event(records.EV_LOG_FULL, lost, "records not written: flash full"):
            self._unwritten_said += lost
        if self.link is not None:
            await self.link.publish_live("telemetry", payload)
        if self.lora is not None:
            from meternode.link import loracodec

            try:
                self.lora.telemetry(loracodec.encode_telemetry(self.node.seq, ts, json.loads(payload)))
            except ValueError:
                pass
        # the command results waiting for the link, oldest first
        q = self._results
        while q and self.link is not None and self.link.up:
            if not await self.link.publish_live("cmd/result", q[0][1], 1):
                break
            q.pop(0)
        if self.commands is not None and self.commands.reboot_pending and not q:
            # what commands do on this node (actions.py: loaded for the reboot)
            from meternode import forget
            from meternode.link.actions import Actions

            forget("meternode.link.actions")
            Actions(self).reboot()

    # -- MQTT ------------------------------------------------------------------------------
    def _describe(self):
        return {"version": VERSION, "model": self.node.board.get("name", "meter node"), "sensors": None}

    def _on_command(self, payload):
        r = self.commands.handle(payload)
        if r is not None:  # None: the action sends its result itself (command_result)
            self.command_result(r)

    def command_result(self, r):
        # Queues a command's result for the link (also one that came after its command: a
        # valve, once the meter answered).
        q = self._results
        if len(q) >= RESULTS_MAX:
            k = 0
            for i in range(len(q)):
                if not q[i][0]:
                    k = i  # the oldest refusal, else the oldest result
                    break
            q.pop(k)
            self.results_dropped += 1
        q.append((r.get("status") != "rejected", json.dumps(r)))

    def stats(self):
        # -> the counters as a dict (link/stats.py: loaded for the call, forgotten after)
        return run("meternode.link.stats", "service", self)
