# Compact binary codec for LoRaWAN uplinks: every frame fits 51 bytes (EU868 DR0-DR2) and
# carries the record's sequence number, so the host drops duplicates exactly as on MQTT.
#
# Frame: byte 0 = version (3 bits) << 5 | kind (5 bits); seq u32; ts u32; then the kind's
# fields, little-endian, from LAYOUTS.  Units are chosen to fit: energy in Wh (the MQTT
# profile keeps mWh), voltage 0.1 V, current 10 mA, power 0.1 W, frequency 0.01 Hz.
# The host decoder (umeter.decode) and the ChirpStack/TTN JavaScript it emits are built from
# the same LAYOUTS table.
import struct

from micropython import const

from meternode.store import records

VERSION = const(1)
MAX_FRAME = const(51)
HEADER = "<BII"
TELEMETRY = const(0)

# kind -> (name, [(field, struct code, scale from the record/telemetry value)])
LAYOUTS = {
    TELEMETRY: (
        "telemetry",
        (("v_dv", "H"), ("f_chz", "H"), ("p_dw", "i"), ("e_imp_wh", "I"), ("e_exp_wh", "I")),
    ),
    records.PROFILE: (
        "profile",
        (
            ("period_min", "B"),
            ("e_imp_wh", "I"),
            ("e_exp_wh", "I"),
            ("v_avg_dv", "H"),
            ("v_min_dv", "H"),
            ("v_max_dv", "H"),
            ("i_avg_cA", "H"),
            ("i_min_cA", "H"),
            ("i_max_cA", "H"),
            ("p_avg_dw", "i"),
            ("p_min_dw", "i"),
            ("p_max_dw", "i"),
        ),
    ),
    records.DAILY: ("daily", (("e_imp_wh", "I"), ("e_exp_wh", "I"), ("water_l", "I"), ("gas_l", "I"))),
    records.MONTHLY: (
        "monthly",
        (("e_imp_wh", "I"), ("e_exp_wh", "I"), ("water_l", "I"), ("gas_l", "I"), ("md_w", "I"), ("md_at", "I")),
    ),
    records.EVENT: ("event", (("code", "B"), ("arg", "i"))),
}
# A frame of a firmware before billing months ends after its first fields: kind -> how many
# (a monthly without the maximum demand)
SHORT = {records.MONTHLY: 4}
EVENT_TEXT_MAX = MAX_FRAME - 9 - 5  # UTF-8 detail after an event's fields (cut by records.cut)


class CodecError(ValueError):
    pass


def _fmt(kind):
    lay = LAYOUTS.get(kind)
    if lay is None:
        raise CodecError("no LoRa layout for record kind %d" % kind)
    return "<" + "".join(c for _, c in lay[1])


def _clamp(x, code):
    lo, hi = {"B": (0, 255), "H": (0, 65535), "I": (0, 0xFFFFFFFF), "i": (-0x80000000, 0x7FFFFFFF)}[code]
    return lo if x < lo else hi if x > hi else x


def _pack(kind, seq, ts, values, tail=b""):
    lay = LAYOUTS[kind][1]
    vals = [_clamp(int(v), c) for v, (_, c) in zip(values, lay)]
    body = struct.pack(HEADER, (VERSION << 5) | kind, seq & 0xFFFFFFFF, int(ts) & 0xFFFFFFFF)
    frame = body + struct.pack(_fmt(kind), *vals) + tail
    if len(frame) > MAX_FRAME:
        raise CodecError("frame of %d bytes is over %d" % (len(frame), MAX_FRAME))
    return frame


def encode_record(kind, seq, ts, payload):
    # A stored record (kind, seq, ts, payload bytes from records.py) -> LoRa frame bytes.
    # CodecError: the kind has no LoRa layout; ValueError: the payload does not decode.
    if kind == TELEMETRY or (kind not in LAYOUTS and kind != records.READING):
        raise CodecError("no LoRa layout for record kind %d" % kind)
    if kind == records.READING:  # compact form, values that do not fit are left out (flagged)
        from meternode.gateway import lorareading

        try:
            body = lorareading.lora(payload, MAX_FRAME - 9)
        except ValueError as e:
            raise CodecError(str(e))
        return struct.pack(HEADER, (VERSION << 5) | kind, seq & 0xFFFFFFFF, int(ts) & 0xFFFFFFFF) + body
    f = records.fields(kind, payload)
    if kind == records.PROFILE:
        vals = (
            f["period_s"] // 60,
            f["e_imp_mwh"] // 1000,
            f["e_exp_mwh"] // 1000,
            f["v_avg_dv"],
            f["v_min_dv"],
            f["v_max_dv"],
            f["i_avg_ma"] // 10,
            f["i_min_ma"] // 10,
            f["i_max_ma"] // 10,
            f["p_avg_dw"],
            f["p_min_dw"],
            f["p_max_dw"],
        )
        return _pack(kind, seq, ts, vals)
    if kind in (records.DAILY, records.MONTHLY):
        v = (f["e_imp_mwh"] // 1000, f["e_exp_mwh"] // 1000, f["water_l"], f["gas_l"])
        if kind == records.MONTHLY:  # W, rounded; a record without it (older firmware) sends 0
            v += ((f.get("md_mw", 0) + 500) // 1000, f.get("md_at", 0))
        return _pack(kind, seq, ts, v)
    if kind == records.EVENT:
        t = records.cut(f["text"], EVENT_TEXT_MAX)
        return _pack(kind, seq, ts, (f["code"], f["arg"]), t)
    raise CodecError("no LoRa layout for record kind %d" % kind)


def encode_telemetry(seq, ts, t):
    # Live telemetry (the dict of a telemetry payload, telemetry.encode_into) -> frame.
    return _pack(
        TELEMETRY,
        seq,
        ts,
        (
            round((t.get("v") or 0) * 10),
            round((t.get("f") or 0) * 100),
            round((t.get("p") or 0) * 10),
            int(t.get("e_imp_wh") or 0),
            int(t.get("e_exp_wh") or 0),
        ),
    )


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
    fmt = _fmt(kind)
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
