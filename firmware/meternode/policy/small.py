# Small policy changes that fit one LoRaWAN downlink (51 bytes at EU868 DR0), where a
# 64-byte Ed25519 signature does not: a real-time price or a demand-response event,
# authenticated with the node's own HMAC key and a strictly increasing counter.
#
# Frame (big-endian):
#   0      0x10 | op          (format 1; op 1 = price, 2 = DR event, 3 = cancel DR events)
#   1..4   counter u32        (strictly above every counter accepted before and at most
#                              _MAX_STEP above the last one, so one frame cannot use up the
#                              counter space; persisted in full width before acting)
#   price: 5..8 price u32 in 1/10000 currency per kWh, 9..10 validity u16 minutes
#   event: 5..8 start u32 UNIX s, 9..10 duration u16 s, 11 rule u8 (255 = every event rule)
#   cancel: nothing
#   last 8 bytes: HMAC-SHA256(key, DOMAIN + node id + frame without the tag), truncated
# A price is 19 bytes, an event 20.  Bad length, tag, counter or times: no effect, and
# Rejected says why.
# The encoders (policy/smallenc.py) are the host's and the tests': a node only reads frames, and
# every name a module holds is interned when it loads and kept for ever (docs/memory.md).
import struct

from micropython import const

from meternode.link.commands import Hmac
from meternode.store.log import Cursor

_DOMAIN = const(b"umeter-lora-v1")  # (smallenc.py: the same format, written)
_OP_PRICE = const(1)
_OP_EVENT = const(2)
_TAG = const(8)
_BODY = const(b"\x00\x06\x07\x00")  # body bytes by op (0: no such op); op 3 = cancel
_MAX_AHEAD_S = const(86400)  # an event may start at most a day ahead
_MAX_LATE_S = const(3600)  # or have started at most an hour ago
_MAX_STEP = const(1 << 16)  # the largest counter step one frame may make


class Rejected(Exception):
    pass


class SmallCommands:
    def __init__(self, node_id, key, path):
        if len(key) < 16:
            raise ValueError("the node's HMAC key must be at least 16 bytes")
        self.node_id = node_id
        self._key = key
        self._mac = Hmac(key)
        self.prefix = _DOMAIN + node_id.encode()  # what the MAC covers before the frame
        self._ctr = Cursor(path, every=1)

    def decode(self, frame, now):
        # -> (op, values tuple); persists the counter before returning.
        if len(frame) < 5 + _TAG or frame[0] >> 4 != 1:
            raise Rejected("malformed: %d bytes, not a format-1 frame" % len(frame))
        op = frame[0] & 15
        if not 0 < op < 4 or len(frame) != 5 + _BODY[op] + _TAG:
            raise Rejected("malformed: op %d with %d bytes" % (op, len(frame)))
        body = bytes(frame[:-_TAG])
        tag = bytes(frame[-_TAG:])
        good = self._mac.digest(self.prefix + body)[:_TAG]
        d = 0
        for i in range(_TAG):
            d |= good[i] ^ tag[i]
        if d:
            raise Rejected("unauthenticated: HMAC does not match the node key")
        ctr = struct.unpack_from(">I", body, 1)[0]
        if ctr <= self._ctr.acked:
            raise Rejected("replayed: counter %d is not above %d" % (ctr, self._ctr.acked))
        if ctr - self._ctr.acked > _MAX_STEP:
            raise Rejected("invalid: counter %d is more than %d above %d" % (ctr, _MAX_STEP, self._ctr.acked))
        if op == _OP_PRICE:
            p, valid = struct.unpack_from(">IH", body, 5)
            vals = (p / 10000.0, valid * 60)
        elif op == _OP_EVENT:
            start, dur, rule = struct.unpack_from(">IHB", body, 5)
            if start + dur < now - _MAX_LATE_S or start > now + _MAX_AHEAD_S:
                raise Rejected("expired: event window is outside now-%d s..now+%d s" % (_MAX_LATE_S, _MAX_AHEAD_S))
            vals = (start, dur, -1 if rule == 255 else rule)
        else:
            vals = ()
        self._ctr.advance(ctr)
        return op, vals

    def apply(self, frame, engine, now):
        # Decodes and acts on the engine; -> result dict.
        try:
            op, vals = self.decode(frame, now)
        except Rejected as e:
            return {"ok": False, "status": "rejected", "why": str(e)}
        if op == _OP_PRICE:  # (valid_s: what is in force, the policy's cap applied)
            v = engine.push_price(vals[0], vals[1], now)
            return {"ok": True, "status": "done", "op": "price", "price": vals[0], "valid_s": v}
        if op == _OP_EVENT:
            n = engine.push_event(vals[0], vals[1], vals[2])
            return {"ok": True, "status": "done", "op": "event", "rules": n}
        engine.push_event(0, 0, -1)
        return {"ok": True, "status": "done", "op": "cancel"}
