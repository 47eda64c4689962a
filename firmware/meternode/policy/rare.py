# The policy service's rarely run code: setting the service up (the fleet agent, the policy
# to run), loading a policy, the fleet agent's events and the room it may stage a firmware
# build in.  service.py loads this module for one call and forgets it at once (lazy.forget,
# docs/memory.md): its code is held only while it runs.  Every function takes the service.
import json
import sys

from meternode.lazy import forget
from meternode.policy.engine import Engine


def start(svc, cfg, root):
    # From PolicyService.__init__: the fleet agent (with `fleet`), then the policy to run: the
    # agent's signed one, else the config's until a signed one arrives.
    if cfg.get("fleet"):
        from meternode.config import need
        from meternode.policy.agent import Agent

        part = getattr(svc.node.hal, "partition", None)  # esp32.Partition on OTA layouts
        a = Agent(svc.node.id, cfg["fleet"], root, svc.clock, svc._event, svc.load, svc._reboot, None, part)
        svc.agent = a
        o = cfg.get("ota", {})
        a.slots.max_tries = o.get("max_tries", 1)
        a.slots.reserve = need(o, "reserve_bytes", int, "config.ota", default=16384, lo=0)
        a.slots.reserve_fn = svc._log_room
        a.slots.resume()
        if a.image is not None:
            a.image.after_boot()
    pol = svc.agent.policy() if svc.agent else None
    if pol is None and cfg.get("policy"):
        pol = cfg["policy"]
    if pol is not None:
        load(svc, pol)


def log_room(svc):
    # What the record log may still grow to: kept free when a firmware build is staged.
    u = getattr(svc.node, "uplink_service", None)
    log = u.log if u else None
    if log is None:
        return 0
    room = log.max_bytes - log.bytes_used()
    return (room if room > 0 else 0) + log.segment_bytes


def load(svc, compact):
    # A new policy (validated by Engine through check_compact) replaces the running one.
    seed = 5381  # the node's id hashed: the engine's per-node random restore delays
    for ch in svc.node.id:
        seed = ((seed * 33) ^ ord(ch)) & 0x7FFFFFFF
    svc.engine = e = Engine(compact, svc.node.meter.set_tariff, svc, svc.ring.push, seed or 1)
    if "meternode.policy.agent" not in sys.modules and "meternode.policy.apply" not in sys.modules:
        forget("meternode.policy.schema")  # the check runs again at the next load (docs/memory.md)
    if svc._ctl is not None:  # a new engine starts with the load connected: so does its wish
        svc._ctl.engine(True, "policy %s loaded" % compact["n"])
    # the engine's day counters across reboots (PolicyService._checkpoint writes them)
    try:
        with open(svc._ckpt) as f:
            d = json.load(f)
        if d.get("policy") == compact["n"] and e.restore(d.get("state"), int(svc.clock.time())):
            svc.log("policy day counters restored")
    except (OSError, ValueError):
        pass
    rep = e.reporting
    if rep:  # the policy's reporting settings, when it has them
        svc.node.config["telemetry_s"] = float(rep[0])  # the reporting task re-reads it every period
        u = getattr(svc.node, "uplink_service", None)
        if u and hasattr(u, "set_config"):
            try:
                u.set_config("profile_s", rep[1] * 60)
            except Exception as ex:
                svc.log("policy profile period not applied: %s" % ex)
    svc.log("policy %s in force" % compact["n"])


def event(svc, kind, text):
    # The agent's events into the record log; refusals (what an outsider can cause)
    # through a Limiter, each carrying how many were held back before it.
    svc.log("%s: %s" % (kind, text))
    u = getattr(svc.node, "uplink_service", None)
    if u:
        from meternode.store import records

        held = 0
        if text.startswith("rejected"):
            if svc._limiter is None:
                from meternode.link.limiter import Limiter

                svc._limiter = Limiter()
            held = svc._limiter.take(svc.clock.time())
            if held < 0:
                return
        u.event(records.EV_POLICY, held, "%s %s" % (kind, text))  # records.event cuts it


def incoming(svc, t, payload):
    # A message on a full topic: True when it is one of our leaves for this node.
    pre = "%s/%s/" % (svc.node.config["mqtt"].get("prefix", "umeter"), svc.node.id)
    if not t.startswith(pre):
        return False
    return svc._leaf(t[len(pre) :], payload)
