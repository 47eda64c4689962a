# The LoRa frames of loracodec.py read back: frame bytes -> a dict of kind, seq, ts and the
# fields, or CodecError naming the flaw.  For the host (umeter.decode) and the tests: a node
# only encodes, so this is a module of its own that a node never loads.
import struct

from meternode.link.loracodec import FORMATS, MAX_FRAME, TELEMETRY, VERSION, CodecError
from meternode.store import records

HEADER = "<BII"
EVENT_TEXT_MAX = MAX_FRAME - 9 - 5  # UTF-8 detail after an event's fields

# kind -> (name, the fields' names, in the order of loracodec.FORMATS)
_NAMES = {
    TELEMETRY: ("telemetry", ("v_dv", "f_chz", "p_dw", "e_imp_wh", "e_exp_wh")),
    records.PROFILE: (
        "profile",
        (
            "period_min",
            "e_imp_wh",
            "e_exp_wh",
            "v_avg_dv",
            "v_min_dv",
            "v_max_dv",
            "i_avg_cA",
            "i_min_cA",
            "i_max_cA",
            "p_avg_dw",
            "p_min_dw",
            "p_max_dw",
        ),
    ),
    records.DAILY: ("daily", ("e_imp_wh", "e_exp_wh", "water_l", "gas_l")),
    records.MONTHLY: ("monthly", ("e_imp_wh", "e_exp_wh", "water_l", "gas_l", "md_w", "md_at")),
    records.EVENT: ("event", ("code", "arg")),
}
# kind -> (name, ((field, struct code), ...)): the layout the decoder and the host's JavaScript
# codec read
LAYOUTS = {}
for _k, (_n, _f) in _NAMES.items():
    if len(_f) != len(FORMATS[_k]) - 1:
        raise ValueError("loradecode: %s names %d fields, FORMATS has %d" % (_n, len(_f), len(FORMATS[_k]) - 1))
    LAYOUTS[_k] = (_n, tuple(zip(_f, FORMATS[_k][1:].decode())))
# A frame of a firmware before billing months ends after its first fields: kind -> how many
# (a monthly without the maximum demand)
SHORT = {records.MONTHLY: 4}


def decode(frame):
    # Frame bytes -> dict with kind, seq, ts and the fields.  Raises CodecError naming the flaw.
    frame = bytes(frame)
    if len(frame) < 9:
        raise CodecError("frame of %d bytes is shorter than the 9-byte header" % len(frame))
    if len(frame) > MAX_FRAME:
        raise CodecError("frame of %d bytes is over %d" % (len(frame), MAX_FRAME))
    b0, seq, ts = struct.unpack(HEADER, frame[:9])
    ver, kind = b0 >> 5, b0 & 0x1F
    if ver != VERSION:
        raise CodecError("frame version %d, this decoder reads %d" % (ver, VERSION))
    if kind == records.READING:
        from meternode.gateway import lorareading

        try:
            d = lorareading.lora_decode(frame[9:])
        except ValueError as e:
            raise CodecError(str(e))
        d.update({"kind": "reading", "seq": seq, "ts": ts})
        return d
    if kind not in LAYOUTS:
        raise CodecError("unknown frame kind %d" % kind)
    name, lay = LAYOUTS[kind]
    fmt = FORMATS[kind].decode()
    n = struct.calcsize(fmt)
    k = SHORT.get(kind)
    if k and len(frame) == 9 + struct.calcsize(fmt[: k + 1]):
        lay = lay[:k]
        fmt = fmt[: k + 1]
        n = len(frame) - 9
    if len(frame) < 9 + n or (kind != records.EVENT and len(frame) != 9 + n):
        raise CodecError("%s frame is %d bytes, expected %d" % (name, len(frame), 9 + n))
    d = {"kind": name, "seq": seq, "ts": ts}
    for (key, _), v in zip(lay, struct.unpack(fmt, frame[9 : 9 + n])):
        d[key] = v
    if kind == records.EVENT:
        d["event"] = records.event_name(d["code"])
        try:
            d["text"] = records.decode_text(frame[9 + n :])
        except ValueError as e:
            raise CodecError("event %s" % e)
    return d
