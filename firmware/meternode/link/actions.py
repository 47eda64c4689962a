# What authenticated commands do on the node: accept() checks an authentic, new command's op
# and arguments and carries it out (commands.Commands has checked the rest), Actions does it
# on the node: read now, configuration keys, relay, time, reboot, a gateway meter's valve.
# Loaded per command and forgotten after (docs/memory.md).
import json
import sys

from micropython import const

from meternode import run
from meternode.link import telemetry
from meternode.link.commands import Rejected, hmac_sha256
from meternode.store import records
from meternode.ticks import CLOCK_SET

_MAX_EPOCH = const(4102444800)  # `time` refuses from 2100-01-01 on (records hold u32 seconds), and before CLOCK_SET

# Settable configuration keys: (type, low, high, the value when config.json leaves it out).
# Validated before anything changes; a rollback restores a value that checks too.
SETTABLE = {
    "telemetry_s": (float, 0.1, 86400.0, 10.0),
    "profile_s": (int, 60, 86400, 900),
    "mqtt.backlog_rate": (float, 0.01, 10000.0, 20.0),
    "mqtt.keepalive": (int, 5, 3600, 30),
}

_OPS = const(("read_now", "status", "set", "rollback", "relay", "time", "reboot", "valve"))


def _hex(b):
    return "".join("%02x" % x for x in b)


def make_command(key, node_id, op, args=None, ctr=1, exp=0, msg_id="1"):
    # Builds the wire bytes of a command, for host tools and tests: a node only receives
    # them, so this lives here, not in commands.py, which a node keeps loaded.
    body = json.dumps({"id": msg_id, "node": node_id, "ctr": ctr, "exp": exp, "op": op, "args": args or {}})
    mac = _hex(hmac_sha256(key, body.encode()))
    return json.dumps({"body": body, "hmac": mac}).encode()


def accept(c, body):
    # `c`: the Commands that authenticated `body`.  -> the result dict, or None when the
    # action's result follows by itself (valve).  Raises Rejected for a refusal.
    op = body["op"]
    if op not in _OPS:
        raise Rejected("invalid: unknown op %r" % op)
    a = body.get("args", {})
    if not isinstance(a, dict):
        raise Rejected("malformed: args must be an object")
    act = c.actions or Actions(c.service)  # the node's: made for this command
    check_args(c, op, a, act)
    # Persist the counter before acting: a reboot (or crash) cannot reopen a replay.
    c._ctr.advance(body["ctr"])
    mid = body["id"]
    if op == "read_now":
        r = act.read_now()
    elif op == "status":
        r = act.status()
    elif op == "set":
        key = a["key"]
        old = act.get_config(key)
        act.set_config(key, a["value"])
        c.rollback[key] = old
        c.event(records.EV_CONFIG, 0, "%s=%r" % (key, a["value"]))
        r = {"key": key, "old": old, "new": a["value"]}
    elif op == "rollback":
        key = a["key"]
        old = c.rollback.pop(key)
        cur = act.get_config(key)
        act.set_config(key, old)
        c.event(records.EV_CONFIG, 1, "%s=%r rollback" % (key, old))
        r = {"key": key, "old": cur, "new": old}
    elif op == "relay":
        if not act.relay(a["on"]):
            raise Exception("this node has no relay")
        c.event(records.EV_RELAY, 1 if a["on"] else 0, "cmd " + mid)
        r = {"on": a["on"]}
    elif op == "time":
        before = int(c.clock.time())
        act.set_time(a["epoch"])
        c.event(records.EV_TIME_SET, a["epoch"] - before, "cmd")
        r = {"delta_s": a["epoch"] - before}
    elif op == "valve":
        act.valve(a["meter"], a["valve"] == "close", mid)
        c.accepted += 1
        return None  # the result follows once the meter answered
    else:  # reboot
        c.reboot_pending = True
        c.event(records.EV_REBOOT, 1, "cmd " + mid)
        r = {"reboot": True}
    c.accepted += 1
    return {"id": mid, "ok": True, "status": "done", "result": r}


def check_args(c, op, a, act):
    # Raises Rejected when `op`'s arguments `a` are not valid now (a set's value is converted
    # to its key's type in place, a rollback's stored value checked again).
    if op in ("set", "rollback"):
        key = a.get("key")
        if not isinstance(key, str) or key not in SETTABLE:
            raise Rejected("invalid: key %r is not settable (%s)" % (key, ", ".join(sorted(SETTABLE))))
        if op == "set":
            if "value" not in a:
                raise Rejected("invalid: set needs a value")
            v = a["value"]
        elif key not in c.rollback:
            raise Rejected("invalid: nothing to roll back for %s" % key)
        else:
            v = c.rollback[key]
        kind, lo, hi, _ = SETTABLE[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise Rejected("invalid: %s must be %s" % (key, kind.__name__))
        if not lo <= v <= hi:  # written so that NaN is outside too
            raise Rejected("invalid: %s = %r is outside %r..%r" % (key, v, lo, hi))
        if op == "set":
            a["value"] = v
        else:
            c.rollback[key] = v
    elif op == "relay":
        if not isinstance(a.get("on"), bool):
            raise Rejected("invalid: relay needs on: true/false")
    elif op == "time":
        e = a.get("epoch")
        if not isinstance(e, int) or isinstance(e, bool) or not CLOCK_SET <= e < _MAX_EPOCH:
            raise Rejected("invalid: time needs epoch, UNIX seconds in 2020..2099 (not ms)")
        now = int(c.clock.time())
        if now >= CLOCK_SET and (e - now > c.time_max_step_s or now - e > c.time_max_step_s):
            raise Rejected("invalid: a time step of %d s is over the %d-s limit" % (e - now, c.time_max_step_s))
    elif op == "valve":
        if not isinstance(a.get("meter"), str) or a.get("valve") not in ("open", "close"):
            raise Rejected('invalid: valve needs meter (its id) and valve: "open" or "close"')
        why = act.valve_refusal(a["meter"], a["valve"] == "close")
        if why:
            raise Rejected("invalid: %s" % why)


class Actions:
    def __init__(self, service):
        self.s = service
        self.node = service.node

    def read_now(self):
        snap = self.node.meter.snapshot()
        if snap is None:
            return json.loads(self.node.last) if self.node.last else {}
        r = getattr(self.node.hal, "relay", None)
        # a buffer of its own (the node's is the reporting task's, which may be sending from
        # it), doubled until the payload fits
        size = 1024
        while True:
            buf = bytearray(size)
            try:
                n = telemetry.encode_into(
                    buf,
                    self.node.id,
                    0,
                    self.s.clock.time(),
                    snap,
                    0,
                    getattr(self.node, "mains", None),
                    relay=r.on if r is not None else None,
                )
                return json.loads(buf[:n])
            except IndexError:
                size *= 2

    def status(self):
        # The node's health (link/stats.py node(): loaded for the call, forgotten after)
        return run("meternode.link.stats", "node", self.node)

    def _where(self, key):
        d = self.node.config
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        return d, parts[-1]

    def get_config(self, key):
        # The value in force: config.json's, else the default the node runs with.
        d, k = self._where(key)
        return d.get(k, SETTABLE[key][3] if key in SETTABLE else None)

    def set_config(self, key, value):
        if key == "profile_s" and 86400 % value:
            raise ValueError("profile_s = %d does not divide a day" % value)
        if key in ("telemetry_s", "profile_s"):  # a snapshot in every profile interval
            t = value if key == "telemetry_s" else self.get_config("telemetry_s")
            p = value if key == "profile_s" else self.get_config("profile_s")
            run("meternode.checks", "profile_pace", t, p)
        d, k = self._where(key)
        d[k] = value
        if key == "mqtt.backlog_rate" and self.s.outbox is not None:
            self.s.outbox.rate = value
        if key == "profile_s":
            self.s.profile.period_s = value

    def relay(self, on):
        # The operator's switch of the node's one relay (RelayControl: an off latches, an on
        # overrides policy sheds for config relay.override_s); False when there is none.
        # accept() records the event with the command's id.
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
