# Record kinds and their payloads: one binary layout per kind, shared by the record log,
# the MQTT publisher (to JSON), the LoRaWAN codec and the host decoder.
#
# Energy is carried exactly as the registers hold it (integer mWh); voltages in 0.1 V,
# currents in mA, powers in 0.1 W, so no reading is rounded away on its way upstream.
import struct

from micropython import const

PROFILE = const(1)  # load profile interval (default 15 min)
DAILY = const(2)  # daily freeze of the registers
MONTHLY = const(3)  # monthly freeze of the registers
EVENT = const(4)  # something happened (see EV_*)
READING = const(5)  # a downstream meter's reading: gateway/reading.py packs and reads it

# Names (of kinds, events, fields) are written out in the code that uses them: a short literal
# is an interned name, while a table of them (a dict, a tuple of strings) is an object per
# entry held with the module (~60 bytes a string from a .mpy on 64-bit words, docs/memory.md).


def kind_name(kind):
    if kind == PROFILE:
        return "profile"
    if kind == DAILY:
        return "daily"
    if kind == MONTHLY:
        return "monthly"
    if kind == EVENT:
        return "event"
    return "reading" if kind == READING else "unknown"


# Event codes (EVENT payload byte 0).
EV_POWER_DOWN = const(1)
EV_POWER_UP = const(2)
EV_SAG = const(3)
EV_SWELL = const(4)
EV_TAMPER = const(5)
EV_LEAK = const(6)
EV_RELAY = const(7)
EV_CONFIG = const(8)
EV_POLICY = const(9)
EV_REBOOT = const(10)
EV_CMD_REJECTED = const(11)
EV_LOG_DROPPED = const(12)
EV_LOG_CORRUPT = const(13)
EV_TIME_SET = const(14)
EV_WIFI = const(15)
EV_METER = const(16)  # a downstream meter fell silent (arg 1), came back (2), needs attention (3)
EV_SAMPLING_GAP = const(17)  # the sampler lost sets (arg: gaps since the last such event)
EV_CMD_FAILED = const(18)
EV_LOG_FULL = const(19)
EV_VALVE = const(20)  # a meter's valve by command: opened (arg 0), closed (1), not confirmed (2)
EV_TASK = const(21)  # a supervised task failed or stalled: arg = failures in a row, text = task and why
EV_SAFE_MODE = const(22)  # booted into the safe configuration: arg = crash loops, text = the last

# The event names in code order (event_name); a code that is not here is "unknown".
_EVENT_NAMES = const(
    " power_down power_up sag swell tamper leak relay config policy reboot cmd_rejected log_dropped"
    " log_corrupt time_set wifi meter sampling_gap cmd_failed log_full valve task safe_mode "
)


def event_name(code):
    # EV_* -> its name: word `code` of _EVENT_NAMES, found without splitting the string
    s = _EVENT_NAMES
    i = 0 if code > 0 else -1
    for _ in range(code - 1):
        i = s.find(" ", i + 1)
        if i < 0:
            break
    j = s.find(" ", i + 1) if i >= 0 else -1
    return s[i + 1 : j] if j > 0 else "unknown"


# PROFILE: period s, import/export mWh (registers at the end of the interval),
# voltage avg/min/max (0.1 V), current avg/min/max (mA), power avg/min/max (0.1 W, signed).
_PROFILE = const("<HQQHHHIIIiii")
_PROFILE_SIZE = const(48)  # struct.calcsize(_PROFILE)
# DAILY / MONTHLY: import/export mWh, water and gas volume in litres; MONTHLY then the
# month's maximum demand, mW, and the end of its period, epoch s (a MONTHLY of 24 bytes is
# from a firmware before billing months: no maximum demand).
_FREEZE = const("<QQII")
_FREEZE_SIZE = const(24)  # struct.calcsize(_FREEZE)
_MD = const("<II")
_MONTHLY_SIZE = const(32)  # _FREEZE_SIZE + struct.calcsize(_MD)
# EVENT: code, signed argument, then up to EVENT_TEXT bytes of UTF-8 detail, cut at a
# character boundary (cut() below: the one place a text field is shortened).
_EVENT = const("<Bi")
_EVENT_HEAD = const(5)  # struct.calcsize(_EVENT)
EVENT_TEXT = const(40)


def profile(period_s, e_imp_mwh, e_exp_mwh, v, i, p):
    # v/i/p are (avg, min, max) in 0.1 V, mA and 0.1 W.
    return struct.pack(_PROFILE, period_s, e_imp_mwh, e_exp_mwh, v[0], v[1], v[2], i[0], i[1], i[2], p[0], p[1], p[2])


def freeze(e_imp_mwh, e_exp_mwh, water_l=0, gas_l=0, md=None):
    # md: a MONTHLY's (maximum demand mW, its end), from Registers.bill()
    f = struct.pack(_FREEZE, e_imp_mwh, e_exp_mwh, water_l, gas_l)
    return f if md is None else f + struct.pack(_MD, md[0], md[1])


def cut(text, n):
    # `text` (str or UTF-8 bytes) as at most n bytes, cut at a character boundary: a cut
    # inside a multi-byte character would leave bytes no decoder accepts.  Every text field
    # the node shortens (event texts, LoRa frames) goes through here.
    b = text.encode() if isinstance(text, str) else bytes(text)
    if len(b) <= n:
        return b
    k = n
    while k > 0 and (b[k] & 0xC0) == 0x80:  # b[k] continues a character that began before the cut
        k -= 1
    return b[:k]


def decode_text(b):
    # UTF-8 bytes -> str.  A character cut at the end by an older firmware (which cut by
    # bytes anywhere) is dropped; anything else that is not UTF-8 raises ValueError.
    b = bytes(b)
    try:
        return b.decode()
    except UnicodeError:
        pass
    j = len(b)
    while j > 0 and len(b) - j < 3 and (b[j - 1] & 0xC0) == 0x80:
        j -= 1
    if j > 0:
        lead = b[j - 1]
        need = 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0 else 4 if lead & 0xF8 == 0xF0 else 0
        if need > len(b) - j + 1:  # an incomplete last character
            try:
                return b[: j - 1].decode()
            except UnicodeError:
                pass
    raise ValueError("text of %d bytes is not UTF-8" % len(b))


def event(code, arg=0, text=""):
    return struct.pack(_EVENT, code, arg) + cut(text, EVENT_TEXT)


def fields(kind, payload):
    # Payload bytes -> dict of named fields.  Raises ValueError naming what is wrong.
    n = len(payload)
    if kind == PROFILE:
        if n != _PROFILE_SIZE:
            raise ValueError("profile payload is %d bytes, expected %d" % (n, _PROFILE_SIZE))
        v = struct.unpack(_PROFILE, payload)
        return {
            "period_s": v[0],
            "e_imp_mwh": v[1],
            "e_exp_mwh": v[2],
            "v_avg_dv": v[3],
            "v_min_dv": v[4],
            "v_max_dv": v[5],
            "i_avg_ma": v[6],
            "i_min_ma": v[7],
            "i_max_ma": v[8],
            "p_avg_dw": v[9],
            "p_min_dw": v[10],
            "p_max_dw": v[11],
        }
    if kind == DAILY or kind == MONTHLY:
        if n != _FREEZE_SIZE and (kind == DAILY or n != _MONTHLY_SIZE):
            x = _FREEZE_SIZE if kind == DAILY else _MONTHLY_SIZE
            raise ValueError("%s payload is %d bytes, expected %d" % (kind_name(kind), n, x))
        v = struct.unpack(_FREEZE, payload[:_FREEZE_SIZE])
        d = {"e_imp_mwh": v[0], "e_exp_mwh": v[1], "water_l": v[2], "gas_l": v[3]}
        if n == _MONTHLY_SIZE:
            d["md_mw"], d["md_at"] = struct.unpack(_MD, payload[_FREEZE_SIZE:])
        return d
    if kind == EVENT:
        if n < _EVENT_HEAD or n > _EVENT_HEAD + EVENT_TEXT:
            raise ValueError("event payload is %d bytes, expected %d..%d" % (n, _EVENT_HEAD, _EVENT_HEAD + EVENT_TEXT))
        code, arg = struct.unpack(_EVENT, payload[:_EVENT_HEAD])
        return {
            "code": code,
            "event": event_name(code),
            "arg": arg,
            "text": decode_text(payload[_EVENT_HEAD:]),
        }
    if kind == READING:
        from meternode.gateway import reading  # only nodes that read meters store READINGs

        return reading.fields(payload)
    raise ValueError("unknown record kind %d" % kind)


def to_json_dict(node_id, kind, seq, ts, payload):
    # The document published on umeter/<node>/<kind-topic>: every field plus seq for dedup.
    d = fields(kind, payload)
    d["node"] = node_id
    d["kind"] = kind_name(kind)
    d["seq"] = seq
    d["ts"] = ts
    return d


def topic_leaf(kind):
    # profile, daily and monthly freezes share the `profile` topic; events go to `event`.
    if kind == EVENT:
        return "event"
    if kind == READING:
        return "reading"
    return "profile"
