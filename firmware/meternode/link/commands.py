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
#
# Commands are rare, so a node keeps only this module: a command's state between commands
# (counters, the rejection limiter, rollback values, the counter file, the key's HMAC pads)
# and the cheap refusals: size, envelope, id, HMAC, node, expiry, counter.  Neither a flood of
# forged commands nor one of a captured command replayed loads anything after the first
# refusal (which loads the limiter, kept from then on); a command that is
# authentic and new loads the rest (op and argument checks, the action: link/actions.py) for
# itself and forgets it after (docs/memory.md).
import hashlib
import json
from binascii import unhexlify

from micropython import const

from meternode import forget, run
from meternode.store import records

# Limits are `_NAME = const(...)`: the compiler puts the value in place, no global, no qstr.
_MAX_EXPIRY_S = const(86400)  # an expiry further ahead than this is refused (limits replay windows)
_MAX_BODY = const(1024)
_MAX_CTR = const((1 << 53) - 1)  # counters are exact JSON integers everywhere (a JavaScript host too)
_MAX_CTR_STEP = const(1 << 32)  # one command cannot use up the counter space
_TIME_MAX_STEP_S = const(86400)  # default bound of a `time` step once the clock is set (config time_max_step_s)


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


class Rejected(Exception):
    pass


class Commands:
    # `actions` provides: read_now() -> dict, get_config(key), set_config(key, value),
    # relay(on) -> bool (False: no relay), set_time(epoch), reboot(), valve_refusal(meter,
    # close) -> why not or None, valve(meter, close, msg id) (its result comes later); None:
    # the node's, made per command from `service` (actions.Actions) when one comes.
    # `clock.time()` is the wall clock; `event(code, arg, text)` appends an event record.
    def __init__(self, node_id, key, path, clock, actions, event, time_max_step_s=_TIME_MAX_STEP_S):
        # the key's check and the state: store/storeinit.py commands(), loaded for the call
        run("meternode.store.storeinit", "commands", self, node_id, key, path, clock, actions, event, time_max_step_s)

    def handle(self, payload):
        # Returns the result dict (to publish on …/cmd/result), or None when the action's
        # result follows by itself (valve).
        msg_id = None  # echoed when it could be read, even if not authentic
        try:
            if len(payload) > _MAX_BODY + 128:
                raise Rejected("malformed: %d bytes is over the %d-byte limit" % (len(payload), _MAX_BODY + 128))
            try:
                env = json.loads(payload)
                body_s = env["body"]
                mac_hex = env["hmac"]
                if not isinstance(body_s, str) or not isinstance(mac_hex, str) or len(mac_hex) != 64:
                    raise ValueError
                mac = unhexlify(mac_hex)
                body = json.loads(body_s)
                msg_id = body.get("id")
            except Exception:
                msg_id = None
                raise Rejected('malformed: expected {"body": <json text>, "hmac": <64 hex>}')
            if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 32:
                msg_id = None
                raise Rejected("malformed: id must be a string of 1..32 characters")
            d = 0  # constant-time comparison of the two 32-byte MACs
            for a, b in zip(self._mac.digest(body_s.encode()), mac):
                d |= a ^ b
            if d:
                raise Rejected("unauthenticated: HMAC does not match the node key")
            for k, kind in (("node", str), ("ctr", int), ("exp", int), ("op", str)):
                v = body.get(k)
                if not isinstance(v, kind) or isinstance(v, bool):
                    raise Rejected("malformed: %s missing or not %s" % (k, kind.__name__))
            if body["node"] != self.node_id:
                raise Rejected("wrong node: for %s, this is %s" % (body["node"], self.node_id))
            now = int(self.clock.time())
            exp = body["exp"]
            if exp < now:
                raise Rejected("expired: %d s ago" % (now - exp))
            if exp > now + _MAX_EXPIRY_S:
                raise Rejected("invalid: expiry more than %d s ahead" % _MAX_EXPIRY_S)
            ctr = body["ctr"]
            acked = self._ctr.acked
            if not 0 < ctr <= _MAX_CTR:
                raise Rejected("invalid: counter %d is outside 1..%d" % (ctr, _MAX_CTR))
            if ctr <= acked:
                raise Rejected("replayed: counter %d is not above %d" % (ctr, acked))
            if ctr - acked > _MAX_CTR_STEP:
                raise Rejected("invalid: counter %d is more than %d above %d" % (ctr, _MAX_CTR_STEP, acked))
            # Authentic and new: the rest is loaded for this command and forgotten after.
            from meternode.link import actions

            try:
                return actions.accept(self, body)
            finally:
                forget("meternode.link.actions")
        except Rejected as e:
            why = str(e)
            self.rejected += 1
            if self.limiter is None:
                from meternode.link.limiter import Limiter

                self.limiter = Limiter()
            held = self.limiter.take(self.clock.time())
            if held >= 0:
                self.event(records.EV_CMD_REJECTED, held, "%s %s" % (msg_id or "-", why))
            return {"id": msg_id, "ok": False, "status": "rejected", "why": why}
        except Exception as e:  # an accepted command whose action failed
            self.failed += 1
            why = str(e) if type(e) is Exception else "%s: %s" % (type(e).__name__, e)
            self.event(records.EV_CMD_FAILED, 0, "%s %s" % (msg_id, why))
            return {"id": msg_id, "ok": False, "status": "failed", "why": why}
