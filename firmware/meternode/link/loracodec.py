# Compact binary codec for LoRaWAN uplinks: every frame fits 51 bytes (EU868 DR0-DR2) and
# carries the record's sequence number, so the host drops duplicates exactly as on MQTT.
#
# Frame: byte 0 = version (3 bits) << 5 | kind (5 bits); seq u32; ts u32; then the kind's
# fields, little-endian, as FORMATS has them.  Units are chosen to fit: energy in Wh (the MQTT
# profile keeps mWh), voltage 0.1 V, current 10 mA, power 0.1 W, frequency 0.01 Hz.
# The decoder (loradecode.py: the host's umeter.decode and the tests; a node never decodes a
# frame, so it holds neither that code nor the fields' names) and the ChirpStack/TTN
# JavaScript the host emits read these formats with loradecode.LAYOUTS' names.
import struct

from micropython import const

from meternode.store import records

VERSION = const(1)
MAX_FRAME = const(51)
_HEADER = const("<BII")
TELEMETRY = const(0)
_EVENT_TEXT = const(MAX_FRAME - 9 - 5)  # UTF-8 detail after an event's fields (cut by records.cut)

# kind -> the struct format of its fields; loradecode.LAYOUTS names them, in this order (the
# node needs only the formats: the names are the host's)
# (bytes: a short str constant would be one more interned name each)
FORMATS = {
    TELEMETRY: b"<HHiII",
    records.PROFILE: b"<BIIHHHHHHiii",
    records.DAILY: b"<IIII",
    records.MONTHLY: b"<IIIIII",
    records.EVENT: b"<Bi",
}
# a field's struct code -> the range its value is clamped into
_RANGE = {66: (0, 255), 72: (0, 65535), 73: (0, 0xFFFFFFFF), 105: (-0x80000000, 0x7FFFFFFF)}  # B H I i


class CodecError(ValueError):
    pass


def pack(kind, seq, ts, values, t=b""):  # t: what follows the fields (an event's text)
    fmt = FORMATS[kind]
    vals = []
    for v, c in zip(values, fmt[1:]):  # each value clamped into its field
        lo, hi = _RANGE[c]
        v = int(v)
        vals.append(lo if v < lo else hi if v > hi else v)
    body = struct.pack(_HEADER, (VERSION << 5) | kind, seq & 0xFFFFFFFF, int(ts) & 0xFFFFFFFF)
    frame = body + struct.pack(fmt, *vals) + t
    if len(frame) > MAX_FRAME:
        raise CodecError("frame of %d bytes is over %d" % (len(frame), MAX_FRAME))
    return frame


def encode_record(kind, seq, ts, payload):
    # A stored record (kind, seq, ts, payload bytes from records.py) -> LoRa frame bytes.
    # CodecError: the kind has no LoRa layout; ValueError: the payload does not decode.
    if kind == TELEMETRY or (kind not in FORMATS and kind != records.READING):
        raise CodecError("no LoRa layout for record kind %d" % kind)
    if kind == records.READING:  # compact form, values that do not fit are left out (flagged)
        from meternode.gateway import lorareading

        try:
            body = lorareading.lora(payload, MAX_FRAME - 9)
        except ValueError as e:
            raise CodecError(str(e))
        return struct.pack(_HEADER, (VERSION << 5) | kind, seq & 0xFFFFFFFF, int(ts) & 0xFFFFFFFF) + body
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
        return pack(kind, seq, ts, vals)
    if kind in (records.DAILY, records.MONTHLY):
        v = (f["e_imp_mwh"] // 1000, f["e_exp_mwh"] // 1000, f["water_l"], f["gas_l"])
        if kind == records.MONTHLY:  # W, rounded; a record without it (older firmware) sends 0
            v += ((f.get("md_mw", 0) + 500) // 1000, f.get("md_at", 0))
        return pack(kind, seq, ts, v)
    if kind == records.EVENT:
        t = records.cut(f["text"], _EVENT_TEXT)
        return pack(kind, seq, ts, (f["code"], f["arg"]), t)
    raise CodecError("no LoRa layout for record kind %d" % kind)


def encode_telemetry(seq, ts, t):
    # Live telemetry (the dict of a telemetry payload, telemetry.encode_into) -> frame.
    return pack(
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
