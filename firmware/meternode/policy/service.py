# The node's policy service: runs the engine every second from the meter's latest readings
# (offline too), receives signed policy and firmware bundles and LoRa-sized frames from the
# link, publishes results and policy events, and confirms a trial firmware build once the
# node is healthy.  tasks.py starts it with one task: `PolicyService(node, log).run()`.
#
# config keys (all optional):
#   fleet:  {"name", "groups", "keys"}   bundle identity (agent.check_identity); no bundles without it
#   policy: <compact policy>             a policy to run until a signed one arrives
#                                        (taken out of node.config once the engine has it)
#   policy_dir: "."                      where policy/, fw/ and policy.day.json live (the board's root)
#   ota: {"health_deadline_s": 120, "max_tries": 1}
#   cmd_key: "<hex>"                     the node's HMAC key (also for LoRa-sized policy frames)
#   lora: {"policy_fport": 10}           LoRaWAN downlinks on this port are small frames
# MQTT topics (under <prefix>/<node>/): policy/bundle, ota, policy/small in (registered in
# the uplink's MqttLink.extra_topics, so they survive reconnects); policy/result, ota/result,
# policy/event (engine events), policy/state (tariff registers, relay) out.
# The engine drives the board's relay through the node's RelayControl (hal.relay_control),
# the same one the operator's `relay` command drives; who wins is documented there.
# What waits for the link is one queue of at most OUT_MAX messages, bounded as each one is
# added (a flood of frames between two ticks cannot grow it): refusals are at most
# REFUSALS_MAX of them; when full, old state snapshots go first (the newest is kept), then
# the oldest events, then the oldest results; a pending reboot is never dropped.  Drops are
# counted in `dropped`.
# Setting up, loading a policy, the fleet agent's events, the first small frame, trimming a
# full queue and the reset run seldom: their code is in policy/rare.py, loaded for each call
# and forgotten after it (docs/memory.md).
import asyncio
import json

from micropython import const

from meternode import forget
from meternode.policy import engine
from meternode.ticks import ms as ticks_ms

_LEAVES = ("policy/bundle", "ota", "policy/small")

_STATE_EVERY = const(10)  # ticks between policy/state messages
_CKPT_EVERY = const(300)  # ticks between checkpoints of the engine's day counters (and after events)
_IDLE_TICKS = const(3)  # calls without a measured second before the engine ticks unmeasured
OUT_MAX = const(64)  # messages waiting for the link
REFUSALS_MAX = const(8)  # of which refused frames/bundles (what an outsider can make)


def _rare():
    # The service's rarely run code (policy/rare.py): loaded for one call and forgotten at
    # once; the caller's reference keeps it until the call returns (docs/memory.md).  The heap
    # is collected first, as by meternode.run().
    import gc

    gc.collect()
    from meternode.policy import rare

    forget("meternode.policy.rare")
    return rare


class PolicyService:
    def __init__(self, node, log=print):  # log: the node's (tasks.py)
        _rare().start(self, node, log)  # the service's state, the fleet agent, the policy to run
        self._register()

    def set(self, on):
        # The engine's relay: the node's RelayControl, with the running policy and the action
        # as the reason recorded for the switch; on a board without one, just the state the
        # engine wants (policy/state shows it).
        c = self._ctl
        if c is None:
            self.on = on
            return
        e = self.engine
        c.engine(on, "policy %s %s" % (e.name if e else "?", "restore" if on else "shed"))

    def load(self, policy):
        # A new policy (compact form, validated by Engine through check_compact) replaces the
        # running one (rare.load).
        _rare().load(self, policy)

    # -- the engine's day counters across reboots (restored in rare.load) ------------------------
    def _checkpoint(self):
        e = self.engine
        st = e.save() if e else None
        if st is None or st[0] < 0:  # no engine, or it has not ticked: nothing to keep yet
            return
        tmp = self._ckpt + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps({"policy": e.name, "state": st}))
            import os

            os.rename(tmp, self._ckpt)
        except OSError as ex:
            self.log("policy checkpoint not written: %s" % ex)

    def log_room(self):
        # The fleet agent's reserve_fn (rare.log_room).
        return _rare().log_room(self)

    def _event(self, kind, text):
        # The agent's events into the record log (rare.event).
        _rare().event(self, kind, text)

    def _reboot(self, why="policy"):
        # A planned reboot through the node (registers checkpointed first) when it has one.
        r = getattr(self.node, "reboot", None)
        if r is not None:
            r(why)
        _rare().reset()

    # -- link ----------------------------------------------------------------------------------
    def _register(self):
        # Once per uplink service: our leaves into its MQTT link's extra_topics (the link
        # subscribes them on every reconnect and routes them to us) and the policy port into
        # its LoRa downlink ports.  A registration while the link is up subscribes at once.
        u = getattr(self.node, "uplink_service", None)
        if not u or u is self._registered:
            return
        self._registered = u
        link = getattr(u, "link", None)
        if link is not None:
            for leaf in _LEAVES:
                # the leaf and the service as defaults, not a closure: no closure object
                # and cell held with each callback (RAM)
                def on_message(payload, retained, leaf=leaf, s=self):
                    s._leaf(leaf, payload)

                link.extra_topics[leaf] = on_message
            self._need_sub = link.up
        ports = getattr(u, "lora_ports", None)
        if ports is not None:
            ports[self.node.config.get("lora", {}).get("policy_fport", 10)] = self._lora_frame

    def _put(self, leaf, payload, rejected=False):
        # Queues one message for the link; the queue stays within OUT_MAX (see the top).
        out = self._out
        if rejected:
            n = 0
            for x in out:
                if len(x) > 2:
                    n += 1
            if n >= REFUSALS_MAX:
                for k in range(len(out)):
                    if len(out[k]) > 2:
                        del out[k]
                        self.dropped += 1
                        break
            out.append((leaf, payload, True))
        else:
            out.append((leaf, payload))
        if len(out) > OUT_MAX:
            _rare().trim(self)  # state snapshots, then events, then results go

    def _leaf(self, leaf, payload):
        # (the leaves read from _LEAVES: a literal over 10 characters is an object each time)
        if leaf == _LEAVES[2]:
            r = self.small_frame(payload)
            self._put("policy/result", json.dumps(r), r.get("status") == "rejected")
            return True
        if self.agent is None or (leaf != _LEAVES[0] and leaf != "ota"):
            return False
        r = self.agent.handle(leaf, payload)
        if r and r[1] is not None:
            self._put(r[0], json.dumps(r[1]), r[1].get("status") == "rejected")
            if r[1].get("status") == "staged":
                self._put("reboot", "")
        return True

    def _lora_frame(self, data):
        # A LoRaWAN downlink on the policy port: a small frame.  The result is logged, and
        # queued for MQTT when the node has it (a LoRa-only node keeps no result queue).
        r = self.small_frame(data)
        self.log("lora policy frame: %s" % ("ok" if r.get("ok") else r.get("why")))
        u = self._registered
        if u and u.link is not None:
            self._put("policy/result", json.dumps(r), r.get("status") == "rejected")

    def small_frame(self, frame):
        # A LoRa-sized policy frame (small.py), from MQTT `policy/small` or a LoRaWAN downlink;
        # -> the result dict (the LoRa link may send it back compactly or just log it).  The
        # handler is made when the first frame comes (rare.smalls): none without a cmd_key or
        # a policy.
        if self.small is None:
            _rare().smalls(self)
        if self.small is None or self.engine is None:
            return {"ok": False, "status": "rejected", "why": "unsupported: no cmd_key or no policy on this node"}
        return self.small.apply(frame, self.engine, int(self.clock.time()))

    async def _flush(self, c):
        pre = "%s/%s/" % (self.node.config["mqtt"].get("prefix", "umeter"), self.node.id)
        while self._out and c is not None and c.connected:
            leaf, payload = self._out[0][0], self._out[0][1]
            if leaf == "reboot":
                self.log("rebooting into the staged firmware")
                await asyncio.sleep_ms(200)
                self._reboot("staged firmware")
            await c.publish(pre + leaf, payload, qos=1)
            self._out.pop(0)
            self.beat()

    # -- the loop ------------------------------------------------------------------------------
    def tick(self):
        # Ticks the engine once for every second the meter measured since the last call
        # (metrology/timebase.py), in order, each with its own values: a dip that came and
        # went while this task was starved is still seen.  Engine time never runs backwards.
        # With no measured second for _IDLE_TICKS calls (sampler stalled), one tick with no
        # measurement keeps the tariff calendar going.
        if self._ctl is not None:
            self._ctl.tick()  # an operator override that ended hands the relay back
        e = self.engine
        m = self.node.meter
        sec = m.seconds
        mark, n = sec.drain_from(self._sec_mark)
        self._sec_mark = sec.closed
        if e is None:
            return
        now = engine.seconds(self.clock.time())  # engine seconds: small ints from here on
        if n:
            self._idle = 0
            t = now - n + 1  # the newest second ended about now
            if t <= self._t_last:
                t = self._t_last + 1
            s = self._sec
            for k in range(n):
                sec.get(mark + k, s)
                e.tick(t + k, s[1], s[2], s[0], s[3], s[4])
            self._t_last = t + n - 1
            return
        self._idle += 1
        if self._idle >= _IDLE_TICKS and now > self._t_last:
            e.tick(now, 0, 0, 0, 0, m.registers.low_import())
            self._t_last = now

    def _drain(self):
        evs = self.ring.since(self._mark)
        self._mark = self.ring.head
        out = []
        for code, rule, value, t in evs:
            name = engine.event_name(code)
            self.log("policy event %s rule=%d value=%d" % (name, rule, value))
            out.append({"event": name, "rule": rule, "value": value, "t": engine.epoch(t)})
        return out

    def state(self):
        e = self.engine
        c = self._ctl
        r = self.node.meter.registers
        wh = []  # (a loop: a comprehension is a function held with the module)
        for t in range(len(e._prices) if e else 0):  # one price per tariff
            wh.append(r.tariff_registers(t)[0] / 1000)
        return {
            "policy": e.name if e else None,
            "version": self.agent.policy_version() if self.agent else 0,
            "tariff": e.tariff if e else -1,
            "relay": self.on if c is None else c.on,
            # an operator's relay command holding the relay against the policy: "latched"
            # (remote off) or the override's end (epoch s); None when the policy drives it
            "relay_hold": None if c is None or not (c.latched or c.until) else "latched" if c.latched else c.until,
            "price": e.price if e else None,
            "tariff_wh": wh,
            "t": int(self.clock.time()),
        }

    async def run(self, w=None):
        # The service's task; w: the supervisor's watch (supervisor.py) when it starts this
        # directly, whose beat() reports progress (no wrapper coroutine held around this one)
        if w is not None:
            self.beat = w.beat
        started = ticks_ms()
        confirmed = self.agent is None  # with the fleet agent: a build is confirmed healthy
        reported = False
        n = 0
        while True:
            self.beat()
            await self.clock.sleep_ms(1000)  # the HAL's clock: simulated time in the sim's fast mode
            try:
                self.tick()
            except Exception as ex:  # a policy must never stop the node
                self.log("policy tick failed: %s" % ex)
            if not confirmed:
                confirmed = _rare().confirm(self, started)  # or a reset when the trial stays unhealthy
            self._register()
            u = self._registered
            link = u.link if u else None
            c = link.client if link is not None and link.up else None  # the MQTT client while up
            if c is not None and self._need_sub:
                self._need_sub = False
                try:
                    await link.subscribe_extra(_LEAVES)
                except Exception as ex:
                    self._need_sub = True
                    self.log("policy topics not subscribed: %s" % ex)
            if c is not None and confirmed and not reported and self.agent:
                rep = self.agent.boot_report()
                if rep:
                    self._put("ota/result", json.dumps(rep))
                reported = True
            evs = self._drain()
            for ev in evs:
                self._put("policy/event", json.dumps(ev))
            n += 1
            if evs or n % _CKPT_EVERY == 0:
                self._checkpoint()
            if n % _STATE_EVERY == 0 or evs:
                self._put("policy/state", json.dumps(self.state()))
            try:
                await self._flush(c)
            except Exception as ex:
                self.log("policy results not sent: %s" % ex)
