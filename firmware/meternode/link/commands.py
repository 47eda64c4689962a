# Authenticated commands on umeter/<node>/cmd, results on umeter/<node>/cmd/result.
#
# Wire format (UTF-8 JSON):  {"body": "<JSON text>", "hmac": "<64 hex digits>"}
# `hmac` is HMAC-SHA256 over the body's UTF-8 bytes exactly as sent (the canonical bytes:
# nothing is re-serialised before checking) with the node's own key.  The body holds
#   id   message id (1..32 chars), echoed in the result
#   node the node id the command is for
#   ctr  counter 1.._MAX_CTR, strictly above every counter this node accepted before and at
#        most _MAX_CTR_STEP above the last one (persisted in full width before acting)
#   exp  expiry, UNIX seconds; a command past it is refused
#   op   read_now | set | rollback | relay | time | reboot | valve
#   args op arguments (object): set {key, value}; rollback {key}; relay {on}; time {epoch};
#        valve {meter: "<meter id>", valve: "open" | "close"} (a gateway meter's valve: the
#        result follows once the meter answered, see actions.valve)
# A command that is malformed, unauthenticated, for another node, expired, replayed or
# invalid has no effect: it produces an EV_CMD_REJECTED event and a result saying why.
# Rejection events are rate-limited (link/limiter.py): a flood of forged commands is
# counted, each event says how many were held back before it, and the log keeps its room.
# An authenticated command whose action fails answers `failed` and is an EV_CMD_FAILED event.
import hashlib
import json

from micropython import const

from meternode.link.limiter import Limiter
from meternode.store import records
from meternode.store.cursor import Cursor

# Limits are `_NAME = const(...)`: the compiler puts the value in place, no global, no qstr.
_MAX_EXPIRY_S = const(86400)  # an expiry further ahead than this is refused (limits replay windows)
_MAX_BODY = const(1024)
_MAX_CTR = const((1 << 53) - 1)  # counters are exact JSON integers everywhere (a JavaScript host too)
_MAX_CTR_STEP = const(1 << 32)  # one command cannot use up the counter space
_MIN_EPOCH = const(1577836800)  # 2020-01-01: `time` refuses anything before ...
_MAX_EPOCH = const(4102444800)  # ... and from 2100-01-01 on (records hold u32 seconds)
_TIME_MAX_STEP_S = const(86400)  # default bound of a `time` step once the clock is set (config time_max_step_s)

# Settable configuration keys: (type, low, high, the value when config.json leaves it out).
# Validated before anything changes; a rollback restores a value that checks too.
SETTABLE = {
    "telemetry_s": (float, 0.1, 86400.0, 10.0),
    "profile_s": (int, 60, 86400, 900),
    "mqtt.backlog_rate": (float, 0.01, 10000.0, 20.0),
    "mqtt.keepalive": (int, 5, 3600, 30),
}

_OPS = const(("read_now", "set", "rollback", "relay", "time", "reboot", "valve"))
_LATER = const("later")  # an action's result that follows on its own (the valve: after the bus transaction)


class Hmac:
    # HMAC-SHA256 (RFC 2104) over MicroPython's hashlib.sha256 (block size 64), with the key's
    # inner and outer pads made once: a node checks every command with the same key.
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        k = bytearray(64)
        k[: len(key)] = key
        ipad = bytearray(64)
        opad = bytearray(64)
        for i in range(64):
            ipad[i] = k[i] ^ 0x36
            opad[i] = k[i] ^ 0x5C
        self._ipad = bytes(ipad)
        self._opad = bytes(opad)

    def digest(self, msg):
        h = hashlib.sha256(self._ipad)
        h.update(msg)
        o = hashlib.sha256(self._opad)
        o.update(h.digest())
        return o.digest()


def hmac_sha256(key, msg):
    return Hmac(key).digest(msg)


def _hex(b):
    return "".join("%02x" % x for x in b)


def _same(a, b):
    # Constant-time comparison of two byte strings.
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def make_command(key, node_id, op, args=None, ctr=1, exp=0, msg_id="1"):
    # Builds the wire bytes of a command (host tools and tests use this too).
    body = json.dumps({"id": msg_id, "node": node_id, "ctr": ctr, "exp": exp, "op": op, "args": args or {}})
    mac = _hex(hmac_sha256(key, body.encode()))
    return json.dumps({"body": body, "hmac": mac}).encode()


class Rejected(Exception):
    pass


def _typed(key, v):
    kind, lo, hi, _ = SETTABLE[key]
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise Rejected("invalid: %s must be %s" % (key, kind.__name__))
    if not lo <= v <= hi:  # written so that NaN is outside too
        raise Rejected("invalid: %s = %r is outside %r..%r" % (key, v, lo, hi))
    return v


class Commands:
    # `actions` provides: read_now() -> dict, get_config(key), set_config(key, value),
    # relay(on) -> bool (False: no relay), set_time(epoch), reboot(), valve_refusal(meter,
    # close) -> why not or None, valve(meter, close, msg id) (its result comes later).
    # `clock.time()` is the wall clock; `event(code, arg, text)` appends an event record.
    def __init__(self, node_id, key, path, clock, actions, event, time_max_step_s=_TIME_MAX_STEP_S):
        if isinstance(key, str):
            key = _unhex(key)
        if len(key) < 16:
            raise ValueError("config.cmd_key must be at least 16 bytes (32 hex digits)")
        self.node_id = node_id
        self._mac = Hmac(key)
        self._ctr = Cursor(path, every=1)  # the counter file
        self.clock = clock
        self.actions = actions
        self.event = event
        self.rollback = {}  # key -> value before the last accepted `set`
        self.accepted = 0
        self.rejected = 0
        self.failed = 0
        self.reboot_pending = False
        self.time_max_step_s = time_max_step_s
        self.limiter = Limiter()  # rejection events (see above)
        self._msg_id = None

    def handle(self, payload):
        # Returns the result dict (to publish on …/cmd/result), or None when the action's
        # result follows by itself (valve).
        self._msg_id = None
        try:
            body, msg_id = self._authenticate(payload)
            result = self._execute(body)
        except Rejected as e:
            why = str(e)
            msg_id = self._msg_id  # echoed when it could be read, even if not authentic
            self.rejected += 1
            held = self.limiter.take(self.clock.time())
            if held >= 0:
                self.event(records.EV_CMD_REJECTED, held, "%s %s" % (msg_id or "-", why))
            return {"id": msg_id, "ok": False, "status": "rejected", "why": why}
        except Exception as e:  # an accepted command whose action failed
            self.failed += 1
            why = str(e) if type(e) is Exception else "%s: %s" % (type(e).__name__, e)
            self.event(records.EV_CMD_FAILED, 0, "%s %s" % (self._msg_id, why))
            return {"id": self._msg_id, "ok": False, "status": "failed", "why": why}
        self.accepted += 1
        if result == _LATER:
            return None
        return {"id": msg_id, "ok": True, "status": "done", "result": result}

    def _authenticate(self, payload):
        if len(payload) > _MAX_BODY + 128:
            raise Rejected("malformed: %d bytes is over the %d-byte limit" % (len(payload), _MAX_BODY + 128))
        try:
            env = json.loads(payload)
            body_s = env["body"]
            mac_hex = env["hmac"]
            if not isinstance(body_s, str) or not isinstance(mac_hex, str) or len(mac_hex) != 64:
                raise ValueError
            mac = _unhex(mac_hex)
            body = json.loads(body_s)
            msg_id = body.get("id")
        except Exception:
            raise Rejected('malformed: expected {"body": <json text>, "hmac": <64 hex>}')
        if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 32:
            raise Rejected("malformed: id must be a string of 1..32 characters")
        self._msg_id = msg_id
        if not _same(self._mac.digest(body_s.encode()), mac):
            raise Rejected("unauthenticated: HMAC does not match the node key")
        for k, kind in (("node", str), ("ctr", int), ("exp", int), ("op", str)):
            v = body.get(k)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise Rejected("malformed: %s missing or not %s" % (k, kind.__name__))
        if body["node"] != self.node_id:
            raise Rejected("wrong node: for %s, this is %s" % (body["node"], self.node_id))
        now = int(self.clock.time())
        if body["exp"] < now:
            raise Rejected("expired: %d s ago" % (now - body["exp"]))
        if body["exp"] > now + _MAX_EXPIRY_S:
            raise Rejected("invalid: expiry more than %d s ahead" % _MAX_EXPIRY_S)
        ctr = body["ctr"]
        if not 0 < ctr <= _MAX_CTR:
            raise Rejected("invalid: counter %d is outside 1..%d" % (ctr, _MAX_CTR))
        if ctr <= self._ctr.acked:
            raise Rejected("replayed: counter %d is not above %d" % (ctr, self._ctr.acked))
        if ctr - self._ctr.acked > _MAX_CTR_STEP:
            raise Rejected("invalid: counter %d is more than %d above %d" % (ctr, _MAX_CTR_STEP, self._ctr.acked))
        if body["op"] not in _OPS:
            raise Rejected("invalid: unknown op %r" % body["op"])
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise Rejected("malformed: args must be an object")
        self._check_args(body["op"], args)
        # Persist the counter before acting: a reboot (or crash) cannot reopen a replay.
        self._ctr.advance(body["ctr"])
        return body, msg_id

    def _check_args(self, op, a):
        if op in ("set", "rollback"):
            key = a.get("key")
            if not isinstance(key, str) or key not in SETTABLE:
                raise Rejected("invalid: key %r is not settable (%s)" % (key, ", ".join(sorted(SETTABLE))))
            if op == "set":
                if "value" not in a:
                    raise Rejected("invalid: set needs a value")
                a["value"] = _typed(key, a["value"])
            elif key not in self.rollback:
                raise Rejected("invalid: nothing to roll back for %s" % key)
            else:
                self.rollback[key] = _typed(key, self.rollback[key])
        elif op == "relay":
            if not isinstance(a.get("on"), bool):
                raise Rejected("invalid: relay needs on: true/false")
        elif op == "time":
            e = a.get("epoch")
            if not isinstance(e, int) or isinstance(e, bool) or not _MIN_EPOCH <= e < _MAX_EPOCH:
                raise Rejected("invalid: time needs epoch, UNIX seconds in 2020..2099 (not ms)")
            now = int(self.clock.time())
            if now >= _MIN_EPOCH and (e - now > self.time_max_step_s or now - e > self.time_max_step_s):
                raise Rejected("invalid: a time step of %d s is over the %d-s limit" % (e - now, self.time_max_step_s))
        elif op == "valve":
            if not isinstance(a.get("meter"), str) or a.get("valve") not in ("open", "close"):
                raise Rejected('invalid: valve needs meter (its id) and valve: "open" or "close"')
            why = self.actions.valve_refusal(a["meter"], a["valve"] == "close")
            if why:
                raise Rejected("invalid: %s" % why)

    def _execute(self, body):
        op = body["op"]
        a = body.get("args", {})
        act = self.actions
        if op == "read_now":
            return act.read_now()
        if op == "set":
            key = a["key"]
            old = act.get_config(key)
            act.set_config(key, a["value"])
            self.rollback[key] = old
            self.event(records.EV_CONFIG, 0, "%s=%r" % (key, a["value"]))
            return {"key": key, "old": old, "new": a["value"]}
        if op == "rollback":
            key = a["key"]
            old = self.rollback.pop(key)
            cur = act.get_config(key)
            act.set_config(key, old)
            self.event(records.EV_CONFIG, 1, "%s=%r rollback" % (key, old))
            return {"key": key, "old": cur, "new": old}
        if op == "relay":
            if not act.relay(a["on"]):
                raise Exception("this node has no relay")
            self.event(records.EV_RELAY, 1 if a["on"] else 0, "cmd " + body["id"])
            return {"on": a["on"]}
        if op == "time":
            before = int(self.clock.time())
            act.set_time(a["epoch"])
            self.event(records.EV_TIME_SET, a["epoch"] - before, "cmd")
            return {"delta_s": a["epoch"] - before}
        if op == "valve":
            self.actions.valve(a["meter"], a["valve"] == "close", body["id"])
            return _LATER
        if op == "reboot":
            self.reboot_pending = True
            self.event(records.EV_REBOOT, 1, "cmd " + body["id"])
            return {"reboot": True}
        raise Rejected("invalid: unknown op %r" % op)


def _unhex(s):
    try:
        import binascii

        return binascii.unhexlify(s)
    except Exception:
        raise ValueError("not hex")
