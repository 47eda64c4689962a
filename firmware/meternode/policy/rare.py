# The policy service's rarely run code: setting the service up (the fleet agent, the policy
# to run), loading a policy, the fleet agent's events and the room it may stage a firmware
# build in, the first small frame's handler, trimming a full queue and the reset.
# service.py loads this module for one call and forgets it at once (meternode.forget,
# docs/memory.md): its code is held only while it runs.  Each function is a PolicyService
# method kept out of the class: `self` is the service.
import json
import sys

from meternode import _nop, forget
from meternode.hal.relay import relay_control
from meternode.policy import service
from meternode.policy.engine import Engine, EventRing
from meternode.ticks import diff as ticks_diff
from meternode.ticks import ms as ticks_ms


def start(self, node, log):
    # PolicyService.__init__: the service's state, the fleet agent (with `fleet`), then the
    # policy to run: the agent's signed one, else the config's until a signed one arrives.
    self.node = node
    cfg = node.config
    self.log = log
    self.clock = node.hal.clock
    self._ctl = relay_control(node)  # None: the board has no relay
    self.on = True  # the state the engine wants, on a board without a relay (set())
    self.ring = EventRing(32)
    self._mark = 0
    self._sec_mark = node.meter.seconds.closed  # measured seconds seen (metrology/timebase.py)
    self._sec = [0.0, 0.0, 0.0, 0.0, 0, 0]  # one second's values, reused
    self._t_last = -(1 << 29)  # engine seconds of the last tick (before any real one)
    self._idle = 0
    self.engine = None
    self.agent = None
    self.small = None
    self._limiter = None  # refusal events (made on the first refusal)
    self._out = []  # (leaf, payload[, refused]) waiting for the link, see OUT_MAX
    self.dropped = 0
    self._registered = None  # the uplink service our topics and LoRa port are registered with
    self._need_sub = False
    self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
    root = cfg.get("policy_dir", ".")
    self._ckpt = root + "/policy.day.json"
    if cfg.get("fleet"):
        from meternode.config import need
        from meternode.policy.agent import Agent

        part = getattr(self.node.hal, "partition", None)  # esp32.Partition on OTA layouts
        a = Agent(self.node.id, cfg["fleet"], root, self.clock, self._event, self.load, self._reboot, None, part)
        self.agent = a
        o = cfg.get("ota", {})
        a.slots.max_tries = o.get("max_tries", 1)
        a.slots.reserve = need(o, "reserve_bytes", int, "config.ota", default=16384, lo=0)
        a.slots.reserve_fn = self.log_room
        a.slots.resume()
        if a.image is not None:
            a.image.after_boot()
    pol = self.agent.policy() if self.agent else None
    # The config's policy is dropped from node.config once read: the engine keeps what it
    # runs, and nothing reads the document again (a restart reads the config file anew).
    cp = cfg.pop("policy", None)
    if pol is None and cp:
        pol = cp
    if pol is not None:
        load(self, pol)


def log_room(self):
    # What the record log may still grow to: kept free when a firmware build is staged.
    u = getattr(self.node, "uplink_service", None)
    log = u.log if u else None
    if log is None:
        return 0
    room = log.max_bytes - log.bytes_used()
    return (room if room > 0 else 0) + log.segment_bytes


def load(self, policy):
    # A new policy (compact form, validated by Engine through check_compact) replaces the
    # running one, and the node bills in its time: the same as config.utc_offset_min, or the
    # one a signed bundle moved it to (bundle.py), at every start from then on.
    from meternode import ticks

    ticks.LOCAL_S = policy["tz"] * 60
    seed = 5381  # the node's id hashed: the engine's per-node random restore delays
    for ch in self.node.id:
        seed = ((seed * 33) ^ ord(ch)) & 0x7FFFFFFF
    self.engine = e = Engine(policy, self.node.meter.set_tariff, self, self.ring.push, seed or 1)
    forget("meternode.policy.schema")  # the check runs again at the next load (docs/memory.md)
    if self._ctl is not None:  # a new engine starts with the load connected: so does its wish
        self._ctl.engine(True, "policy %s loaded" % policy["n"])
    # the engine's day counters across reboots (PolicyService._checkpoint writes them)
    try:
        with open(self._ckpt) as f:
            d = json.load(f)
        if d.get("policy") == policy["n"] and e.restore(d.get("state"), int(self.clock.time())):
            self.log("policy day counters restored")
    except (OSError, ValueError):
        pass
    rep = policy.get("r")  # [telemetry_s, profile_min, quantities], optional
    if rep:  # the policy's reporting settings, when it has them
        self.node.config["telemetry_s"] = float(rep[0])  # the reporting task re-reads it every period
        u = getattr(self.node, "uplink_service", None)
        if u and hasattr(u, "set_config"):
            try:
                u.set_config("profile_s", rep[1] * 60)
            except Exception as ex:
                self.log("policy profile period not applied: %s" % ex)
    self.log("policy %s in force" % policy["n"])


def event(self, kind, text):
    # The agent's events into the record log; refusals (what an outsider can cause)
    # through a Limiter, each carrying how many were held back before it.
    self.log("%s: %s" % (kind, text))
    u = getattr(self.node, "uplink_service", None)
    if u:
        from meternode.store import records

        held = 0
        if text.startswith("rejected"):
            if self._limiter is None:
                from meternode.link.limiter import Limiter

                self._limiter = Limiter()
            held = self._limiter.take(self.clock.time())
            if held < 0:
                return
        u.event(records.EV_POLICY, held, "%s %s" % (kind, text))  # records.event cuts it


def health(self):
    # None when healthy: supervisor up (we run in it), metrology producing cycles, link up.
    n = self.node
    if n.meter.cycles < 50:
        return "metrology: %d cycles" % n.meter.cycles
    if n.config.get("mqtt") and not n.link_up:
        return "link not connected"
    return None


def confirm(self, started):
    # PolicyService.run with the fleet agent, once a second until it passes: a healthy node
    # confirms the build it runs; a trial still unhealthy ota.health_deadline_s after the
    # service started (ticks_ms `started`) resets to roll back.  True once confirmed.
    why = health(self)
    slots = self.agent.slots
    image = self.agent.image
    if why is None:
        if image is not None:
            image.healthy()  # mark_app_valid_cancel_rollback()
        self.log("health check passed: %s" % slots.healthy())
        return True
    deadline = self.node.config.get("ota", {}).get("health_deadline_s", 120) * 1000
    if (slots.trial or (image and image.trial)) and ticks_diff(ticks_ms(), started) > deadline:
        self.log("health check failed (%s): resetting to roll back" % why)
        self._reboot("health check failed")
    return False


def incoming(self, t, payload):
    # A message on a full topic: True when it is one of our leaves for this node (tests).
    pre = "%s/%s/" % (self.node.config["mqtt"].get("prefix", "umeter"), self.node.id)
    if not t.startswith(pre):
        return False
    return self._leaf(t[len(pre) :], payload)


def smalls(self):
    # PolicyService.small_frame: the small-frame handler (policy/small.py), made when the first frame
    # comes (RAM: a node that never gets one never loads it); not without a cmd_key or a policy.
    if self.engine is not None and self.node.config.get("cmd_key"):
        from binascii import unhexlify

        from meternode.policy.small import SmallCommands

        ctr = self.node.config.get("policy_dir", ".") + "/policy.lora.ctr"  # made at the first frame
        self.small = SmallCommands(self.node.id, unhexlify(self.node.config["cmd_key"]), ctr)


def trim(self):
    # From PolicyService._put: over OUT_MAX, drop state snapshots but the newest,
    # then the oldest events, then the oldest results; a pending reboot is kept.  In place
    # (the list is shared).
    out = self._out
    n0 = len(out)
    last_state = -1
    for k in range(len(out)):
        if out[k][0] == "policy/state":
            last_state = k
    k = 0
    while k < len(out) and len(out) > service.OUT_MAX:
        if out[k][0] == "policy/state" and k != last_state:
            del out[k]
            last_state -= 1
        else:
            k += 1
    for leaf in ("policy/event", None):
        k = 0
        while k < len(out) and len(out) > service.OUT_MAX:
            if (out[k][0] == leaf) if leaf else out[k][0] != "reboot":
                del out[k]
            else:
                k += 1
    self.dropped += n0 - len(out)


def reset():
    # PolicyService._reboot's last step: the board's reset.
    try:
        import machine

        r = getattr(machine, "reset", None)  # the unix port's machine has no reset
    except ImportError:
        r = None
    if r is not None:
        r()
    sys.exit(3)  # unix port: whoever runs the virtual board starts it again
