# Small policy changes that fit one LoRaWAN downlink (51 bytes at EU868 DR0), where a
# 64-byte Ed25519 signature does not: a real-time price or a demand-response event,
# authenticated with the node's own HMAC key and a strictly increasing counter.
#
# Frame (big-endian):
#   0      0x10 | op          (format 1; op 1 = price, 2 = DR event, 3 = cancel DR events)
#   1..4   counter u32        (strictly above every counter accepted before and at most
#                              MAX_STEP above the last one, so one frame cannot use up the
#                              counter space; persisted in full width before acting)
#   price: 5..8 price u32 in 1/10000 currency per kWh, 9..10 validity u16 minutes
#   event: 5..8 start u32 UNIX s, 9..10 duration u16 s, 11 rule u8 (255 = every event rule)
#   cancel: nothing
#   last 8 bytes: HMAC-SHA256(key, DOMAIN + node id + frame without the tag), truncated
# A price is 19 bytes, an event 20.  Bad length, tag, counter or times: no effect, and
# Rejected says why.
import struct

from meternode.link.commands import Hmac, hmac_sha256
from meternode.store.log import Cursor

DOMAIN = b"umeter-lora-v1"
OP_PRICE = 1
OP_EVENT = 2
OP_CANCEL = 3
_TAG = 8
_BODY = {OP_PRICE: 6, OP_EVENT: 7, OP_CANCEL: 0}
MAX_AHEAD_S = 86400  # an event may start at most a day ahead
MAX_LATE_S = 3600  # or have started at most an hour ago
MAX_STEP = 1 << 16  # the largest counter step one frame may make


class Rejected(Exception):
    pass


def _mac(key, node_id, frame):
    return hmac_sha256(key, DOMAIN + node_id.encode() + frame)[:_TAG]


def encode_price(key, node_id, ctr, price, valid_min):
    f = struct.pack(">BIIH", 0x10 | OP_PRICE, ctr, int(round(price * 10000)), valid_min)
    return f + _mac(key, node_id, f)


def encode_event(key, node_id, ctr, start, duration, rule=255):
    f = struct.pack(">BIIHB", 0x10 | OP_EVENT, ctr, start, duration, rule)
    return f + _mac(key, node_id, f)


def encode_cancel(key, node_id, ctr):
    f = struct.pack(">BI", 0x10 | OP_CANCEL, ctr)
    return f + _mac(key, node_id, f)


class SmallCommands:
    def __init__(self, node_id, key, ctr_path):
        if len(key) < 16:
            raise ValueError("the node's HMAC key must be at least 16 bytes")
        self.node_id = node_id
        self._key = key
        self._mac = Hmac(key)
        self._dom = DOMAIN + node_id.encode()
        self._ctr = Cursor(ctr_path, every=1)

    def decode(self, frame, now):
        # -> (op, values tuple); persists the counter before returning.
        if len(frame) < 5 + _TAG or frame[0] >> 4 != 1:
            raise Rejected("malformed: %d bytes, not a format-1 frame" % len(frame))
        op = frame[0] & 15
        if op not in _BODY or len(frame) != 5 + _BODY[op] + _TAG:
            raise Rejected("malformed: op %d with %d bytes" % (op, len(frame)))
        body = bytes(frame[:-_TAG])
        tag = bytes(frame[-_TAG:])
        good = self._mac.digest(self._dom + body)[:_TAG]
        d = 0
        for i in range(_TAG):
            d |= good[i] ^ tag[i]
        if d:
            raise Rejected("unauthenticated: HMAC does not match the node key")
        ctr = struct.unpack_from(">I", body, 1)[0]
        if ctr <= self._ctr.acked:
            raise Rejected("replayed: counter %d is not above %d" % (ctr, self._ctr.acked))
        if ctr - self._ctr.acked > MAX_STEP:
            raise Rejected("invalid: counter %d is more than %d above %d" % (ctr, MAX_STEP, self._ctr.acked))
        if op == OP_PRICE:
            p, valid = struct.unpack_from(">IH", body, 5)
            vals = (p / 10000.0, valid * 60)
        elif op == OP_EVENT:
            start, dur, rule = struct.unpack_from(">IHB", body, 5)
            if start + dur < now - MAX_LATE_S or start > now + MAX_AHEAD_S:
                raise Rejected("expired: event window is outside now-%d s..now+%d s" % (MAX_LATE_S, MAX_AHEAD_S))
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
        if op == OP_PRICE:
            engine.push_price(vals[0], vals[1], now)
            return {"ok": True, "status": "done", "op": "price", "price": vals[0], "valid_s": vals[1]}
        if op == OP_EVENT:
            n = engine.push_event(vals[0], vals[1], vals[2])
            return {"ok": True, "status": "done", "op": "event", "rules": n}
        engine.push_event(0, 0, -1)
        return {"ok": True, "status": "done", "op": "cancel"}
