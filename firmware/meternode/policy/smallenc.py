# LoRa-sized policy frames written (the format: policy/small.py, which reads them on the node):
# for the host and the tests. A node never loads this module.
import struct

from meternode.link.commands import hmac_sha256

DOMAIN = b"umeter-lora-v1"
OP_PRICE = 1
OP_EVENT = 2
OP_CANCEL = 3
TAG = 8
MAX_AHEAD_S = 86400  # an event may start at most a day ahead
MAX_LATE_S = 3600  # or have started at most an hour ago
MAX_STEP = 1 << 16  # the largest counter step one frame may make


def _mac(key, node_id, frame):
    return hmac_sha256(key, DOMAIN + node_id.encode() + frame)[:TAG]


def encode_price(key, node_id, ctr, price, valid_min):
    f = struct.pack(">BIIH", 0x10 | OP_PRICE, ctr, int(round(price * 10000)), valid_min)
    return f + _mac(key, node_id, f)


def encode_event(key, node_id, ctr, start, duration, rule=255):
    f = struct.pack(">BIIHB", 0x10 | OP_EVENT, ctr, start, duration, rule)
    return f + _mac(key, node_id, f)


def encode_cancel(key, node_id, ctr):
    f = struct.pack(">BI", 0x10 | OP_CANCEL, ctr)
    return f + _mac(key, node_id, f)
