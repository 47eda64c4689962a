# Modbus RTU master (functions 3 and 4) and the slave side of the same two functions
# (shared/reference/protocols.md §7).  ADU = unit fn data CRC (CRC-16/MODBUS: reflected
# 0xA001, init FFFF, sent low byte first).  An exception answer is fn | 0x80 + one code.
# Register maps are data (MAPS below, or the same shape in a meter's config): blocks to
# read and fields to take from them, with type, word order and decimal exponent.
import array

from micropython import const

from meternode.gateway import reading as R

FN_HOLDING = const(3)
FN_INPUT = const(4)
EXC = const(0x80)
EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "slave device failure",
              5: "acknowledge", 6: "slave device busy", 8: "memory parity error", 10: "gateway path unavailable",
              11: "gateway target failed to respond"}
MAX_REGS = const(125)

_T = array.array("H", bytes(512))
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0xA001 if _c & 1 else _c >> 1
    _T[_i] = _c


class FrameError(ValueError):
    pass


class ModbusException(FrameError):
    def __init__(self, code):
        super().__init__("exception %d (%s)" % (code, EXCEPTIONS.get(code, "unknown")))
        self.code = code


def crc16(buf, start, end):
    c = 0xFFFF
    t = _T
    for i in range(start, end):
        c = (c >> 8) ^ t[(c ^ buf[i]) & 0xFF]
    return c


def _seal(buf, n):
    c = crc16(buf, 0, n)
    buf[n] = c & 0xFF
    buf[n + 1] = c >> 8
    return n + 2


def crc_ok(buf, n):
    if n < 4:
        return False
    c = crc16(buf, 0, n - 2)
    return buf[n - 2] == (c & 0xFF) and buf[n - 1] == (c >> 8)


def read_request(buf, unit, fn, start, count):
    if fn not in (FN_HOLDING, FN_INPUT):
        raise FrameError("function %d: only 3 and 4 are read" % fn)
    if not 1 <= count <= MAX_REGS:
        raise FrameError("%d registers: a read takes 1..125" % count)
    buf[0] = unit
    buf[1] = fn
    buf[2] = start >> 8
    buf[3] = start & 0xFF
    buf[4] = count >> 8
    buf[5] = count & 0xFF
    return _seal(buf, 6)


def expected_length(buf, n):
    # Bytes of the answer whose first n bytes are in buf (0 = not known yet): lets the bus
    # stop reading as soon as a frame is whole instead of waiting out the 3.5-char gap.
    if n < 3:
        return 0
    if buf[1] & EXC:
        return 5
    return 5 + buf[2]


def check_answer(buf, n, unit, fn, count):
    # Validates an answer to read_request(unit, fn, _, count).  Returns the offset of the
    # first register byte; raises ModbusException for an exception answer, FrameError
    # naming anything else (CRC, unit, length).
    if n < 5:
        raise FrameError("truncated: %d bytes, an answer has at least 5" % n)
    if not crc_ok(buf, n):
        raise FrameError("bad CRC")
    if buf[0] != unit:
        raise FrameError("answer from unit %d, asked %d" % (buf[0], unit))
    if buf[1] == fn | EXC:
        raise ModbusException(buf[2])
    if buf[1] != fn:
        raise FrameError("answer for function %d, asked %d" % (buf[1], fn))
    if buf[2] != 2 * count or n != 5 + 2 * count:
        raise FrameError("answer carries %d bytes, asked %d registers" % (buf[2], count))
    return 3


# -- register maps -------------------------------------------------------------------------------
# A map: {"blocks": [[fn, start, count], ...],
#         "fields": [[register, type, exponent, quantity, unit, order?], ...]}
# type: u16 s16 u32 s32 f32; order (32-bit): "big" (high word first, the default) or
# "swap" (low word first); exponent: decimal exponent of the raw integer (for f32 the
# exponent is added to the float's own).
# The named maps, each as one string "blocks|fields": blocks "fn start count" and fields
# "register type exponent quantity unit [order]" separated by ";", unit "-" for none (as
# nested lists they held ~2 KB more of a node's heap).  RegisterMap(name) reads one.
MAPS = {
    # Peacefair PZEM-004T v3: input registers, 32-bit values low word first
    "pzem004t": "4 0 9|0 u16 -1 voltage_l1 V;1 u32 -3 current_l1 A swap;3 u32 -1 power W swap;"
                "5 u32 0 energy_import Wh swap;7 u16 -1 frequency Hz;8 u16 -2 power_factor -",
    # Eastron SDM120/SDM630 family: input registers, IEEE floats, high word first
    "sdm120": "4 0 32;4 70 6|0 f32 0 voltage_l1 V;6 f32 0 current_l1 A;12 f32 0 power W;"
              "30 f32 0 power_factor -;70 f32 0 frequency Hz;72 f32 0 energy_import kWh;"
              "74 f32 0 energy_export kWh",
    # the node's own slave map (slave.py): holding registers, 32-bit, high word first
    "umeter": "3 0 14|0 u32 -2 energy_import kWh;2 u32 -2 energy_export kWh;4 u16 -1 voltage_l1 V;"
              "5 s32 -3 current_l1 A;7 s32 -1 power W;9 s16 -3 power_factor -;10 u16 -2 frequency Hz;"
              "11 u32 0 energy_import_t1 Wh",
}
_shared = {}  # map name -> its RegisterMap, one for every meter that names it


def named(name, where="map"):
    # The RegisterMap of a named map, made once and shared.
    m = _shared.get(name)
    if m is None:
        m = _shared[name] = RegisterMap(name, where)
    return m


def _spec(text):
    # A named map's string -> {"blocks": [[fn, start, count]], "fields": [[...]]}.
    blocks, fields = text.split("|")
    out = {"blocks": [[int(x) for x in b.split()] for b in blocks.split(";")], "fields": []}
    for f in fields.split(";"):
        p = f.split()
        field = [int(p[0]), p[1], int(p[2]), p[3], "" if p[4] == "-" else p[4]]
        if len(p) > 5:
            field.append(p[5])
        out["fields"].append(field)
    return out


_SIZES = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "f32": 2}


class RegisterMap:
    # A checked map, compiled to tuples: blocks (fn, start, count) and fields
    # (block index, offset in the block, type, exponent, quantity, unit, swap).
    def __init__(self, spec, where="map"):
        if isinstance(spec, str):
            if spec not in MAPS:
                raise ValueError("%s: no register map %r (have %s)" % (where, spec, ", ".join(sorted(MAPS))))
            spec = _spec(MAPS[spec])
        if not isinstance(spec, dict) or not isinstance(spec.get("blocks"), list) or not spec["blocks"]:
            raise ValueError("%s needs a non-empty list of blocks [fn, start, count]" % where)
        self.blocks = []
        for i, b in enumerate(spec["blocks"]):
            if not isinstance(b, list) or len(b) != 3 or b[0] not in (3, 4) or not 1 <= b[2] <= MAX_REGS:
                raise ValueError("%s.blocks[%d] must be [3|4, start, 1..125], not %r" % (where, i, b))
            self.blocks.append((b[0], b[1], b[2]))
        self.fields = []
        for i, f in enumerate(spec.get("fields") or []):
            w = "%s.fields[%d]" % (where, i)
            if not isinstance(f, list) or len(f) not in (5, 6):
                raise ValueError("%s must be [register, type, exponent, quantity, unit(, order)], not %r" % (w, f))
            reg, typ, exp, qn, un = f[:5]
            order = f[5] if len(f) == 6 else "big"
            if typ not in _SIZES:
                raise ValueError("%s: type %r is not one of %s" % (w, typ, " ".join(sorted(_SIZES))))
            if order not in ("big", "swap"):
                raise ValueError("%s: order %r must be big or swap" % (w, order))
            try:
                q = R.quantity(qn)
                u = R.unit_index(un)
            except ValueError as e:
                raise ValueError("%s: %s" % (w, e))
            size = _SIZES[typ]
            for bi, (fn, start, count) in enumerate(self.blocks):
                if start <= reg and reg + size <= start + count:
                    self.fields.append((bi, reg - start, typ, exp, q, u, order == "swap"))
                    break
            else:
                raise ValueError("%s: register %d is in no block" % (w, reg))

    def decode(self, bi, buf, off, out):
        # The fields of block bi from an answer's register bytes at buf[off:] into out.
        for f in self.fields:
            if f[0] != bi:
                continue
            k = off + 2 * f[1]
            typ = f[2]
            hi = (buf[k] << 8) | buf[k + 1]
            if typ == "u16":
                out.add(f[4], hi, f[3], f[5])
                continue
            if typ == "s16":
                out.add(f[4], hi - 0x10000 if hi & 0x8000 else hi, f[3], f[5])
                continue
            lo = (buf[k + 2] << 8) | buf[k + 3]
            if f[6]:
                hi, lo = lo, hi
            v = (hi << 16) | lo
            if typ == "u32":
                out.add(f[4], v, f[3], f[5])
            elif typ == "s32":
                out.add(f[4], v - (1 << 32) if hi & 0x8000 else v, f[3], f[5])
            else:
                d = R.f32_decimal(v)
                if d is not None:
                    out.add(f[4], d[0], d[1] + f[3], f[5])


def meter_id(unit):
    return "modbus-%d" % unit


# -- slave ---------------------------------------------------------------------------------------
def parse_request(buf, n):
    # A request to a slave -> (unit, fn, start, count); FrameError when broken.
    if n != 8:
        raise FrameError("request of %d bytes, functions 3/4 take 8" % n)
    if not crc_ok(buf, n):
        raise FrameError("bad CRC")
    return buf[0], buf[1], (buf[2] << 8) | buf[3], (buf[4] << 8) | buf[5]


def exception_answer(buf, unit, fn, code):
    buf[0] = unit
    buf[1] = fn | EXC
    buf[2] = code
    return _seal(buf, 3)


def read_answer(buf, unit, fn, regs, start, count):
    # regs: a sequence of 16-bit register values (index = address)
    buf[0] = unit
    buf[1] = fn
    buf[2] = 2 * count
    for i in range(count):
        v = regs[start + i]
        buf[3 + 2 * i] = (v >> 8) & 0xFF
        buf[4 + 2 * i] = v & 0xFF
    return _seal(buf, 3 + 2 * count)


class Collector:
    # Gathers one RTU answer from the bus (the scanner interface the bus feeds): next()
    # returns its length once the byte count says it is whole and the CRC is right; a
    # whole frame with a bad CRC counts in `bad` and ends nothing (silence ends it).
    def __init__(self, size=260):
        self.buf = bytearray(size)
        self.n = 0
        self.start = 0
        self.length = 0
        self.frames = self.bad = self.noise = self.overflow = 0
        self._done = False

    def reset(self):
        self.n = self.length = 0
        self._done = False

    def pending(self):
        return self.n

    def feed(self, src, k=-1):
        if k < 0:
            k = len(src)
        b = self.buf
        n = self.n
        if n + k > len(b):
            self.overflow += n + k - len(b)
            k = len(b) - n
        for i in range(k):
            b[n + i] = src[i]
        self.n = n + k

    def next(self):
        if self._done:
            return 0
        need = expected_length(self.buf, self.n)
        if not need or self.n < need:
            return 0
        self._done = True
        if not crc_ok(self.buf, need):
            self.bad += 1
            return 0
        self.frames += 1
        self.length = need
        return need
