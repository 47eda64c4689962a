# Wired M-Bus, EN 13757-2 link layer (FT1.2) and EN 13757-3 variable data structure
# (shared/reference/protocols.md §4).
#
#   E5                                   single character (ACK)
#   10 C A CS 16                         short frame: CS = C + A
#   68 L L 68 C A CI DATA CS 16          long frame: L = bytes C..DATA, CS = their sum
# Master: SND_NKE (C=40) resets a slave's link, REQ_UD2 (C=5B/7B, the FCB toggles) asks
# for its data, SND_UD (C=53/73) to address FD with CI=52 selects a slave by its secondary
# address (ID 8 BCD digits, manufacturer, version, medium; F nibbles / FF bytes are
# wildcards); the selected slave then answers at address FD.  The slave answers RSP_UD
# (C=08, CI=72): a 12-byte header (ID, manufacturer, version, medium, access number,
# status, signature) then data records DIF [DIFE..] VIF [VIFE..] value.
from micropython import const

from meternode.gateway import reading as R
from meternode.gateway.scanner import bcd_byte, checksum

ACK = const(0xE5)
C_SND_NKE = const(0x40)
C_REQ_UD2 = const(0x5B)
FCB = const(0x20)
C_SND_UD = const(0x53)
C_RSP_UD = const(0x08)
CI_SELECT = const(0x52)
CI_LONG = const(0x72)
CI_SHORT = const(0x7A)
ADDR_SELECTED = const(0xFD)
ADDR_BROADCAST = const(0xFF)
MAX_PRIMARY = const(250)

MEDIA = {0x00: "other", 0x01: "oil", 0x02: "electricity", 0x03: "gas", 0x04: "heat", 0x05: "steam",
         0x06: "warm water", 0x07: "water", 0x08: "heat cost allocator", 0x0A: "cooling (outlet)",
         0x0B: "cooling (inlet)", 0x0C: "heat (inlet)", 0x0D: "heat/cooling", 0x15: "hot water",
         0x16: "cold water", 0x17: "dual water", 0x18: "pressure", 0x28: "waste water"}
_HEAT = (0x04, 0x0A, 0x0B, 0x0C, 0x0D)
_WATER = (0x06, 0x07, 0x15, 0x16, 0x17, 0x28)
# DIF data field -> bytes (BCD when the field is 9..E): 0 none, 1-4 int, 5 real, 6 int48,
# 7 int64, 8 selection, 9 BCD2, A BCD4, B BCD6, C BCD8, D variable, E BCD12
_LEN = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, -1, 6, 0)


class FrameError(ValueError):
    pass


# -- link layer ---------------------------------------------------------------------------------
def short_frame(buf, c, a):
    buf[0] = 0x10
    buf[1] = c
    buf[2] = a
    buf[3] = (c + a) & 0xFF
    buf[4] = 0x16
    return 5


def snd_nke(buf, a):
    return short_frame(buf, C_SND_NKE, a)


def req_ud2(buf, a, fcb=False):
    return short_frame(buf, C_REQ_UD2 | (FCB if fcb else 0), a)


def long_frame(buf, c, a, ci, data=b"", n=-1):
    if n < 0:
        n = len(data)
    if n > 252:
        raise FrameError("M-Bus user data of %d bytes is over 252" % n)
    L = n + 3
    buf[0] = 0x68
    buf[1] = L
    buf[2] = L
    buf[3] = 0x68
    buf[4] = c
    buf[5] = a
    buf[6] = ci
    for i in range(n):
        buf[7 + i] = data[i]
    buf[7 + n] = checksum(buf, 4, 7 + n)
    buf[8 + n] = 0x16
    return n + 9


def secondary_bytes(pattern, man=0xFFFF, ver=0xFF, med=0xFF):
    # "1234FFFF" (8 digits, F = any) + manufacturer/version/medium (FF.. = any) -> the 8
    # bytes of a selection: ID low byte first.
    p = pattern.strip().upper()
    if len(p) != 8 or any(ch not in "0123456789F" for ch in p):
        raise ValueError("secondary address %r must be 8 digits 0-9 or F (wildcard)" % pattern)
    out = bytearray(8)
    for i in range(4):
        j = 6 - 2 * i
        out[i] = int(p[j : j + 2], 16)
    out[4] = man & 0xFF
    out[5] = man >> 8
    out[6] = ver
    out[7] = med
    return out


def select(buf, pattern, man=0xFFFF, ver=0xFF, med=0xFF):
    return long_frame(buf, C_SND_UD, ADDR_SELECTED, CI_SELECT, secondary_bytes(pattern, man, ver, med), 8)


def matches(sel, ident, man, ver, med):
    # Does a slave with (ident digits "12345678", man, ver, med) answer selection bytes `sel`?
    for i in range(4):
        b = sel[i]
        j = 6 - 2 * i
        d_hi = int(ident[j], 16)
        d_lo = int(ident[j + 1], 16)
        if (b >> 4) != 0xF and (b >> 4) != d_hi:
            return False
        if (b & 0xF) != 0xF and (b & 0xF) != d_lo:
            return False
    m = sel[4] | (sel[5] << 8)
    return (m == 0xFFFF or m == man) and (sel[6] == 0xFF or sel[6] == ver) and (sel[7] == 0xFF or sel[7] == med)


class MBusScanner:
    # Finds E5, short and long frames in a byte stream; like scanner.Scanner, it skips noise
    # and resynchronises after a bad checksum.  kind: 1 = E5, 2 = short, 3 = long.
    def __init__(self, size=600):
        self.buf = bytearray(size)
        self.head = self.n = self.start = self.length = self.kind = 0
        self.frames = self.bad = self.noise = self.overflow = 0

    def reset(self):
        self.head = self.n = self.start = self.length = self.kind = 0

    def pending(self):
        return self.n - self.head

    def feed(self, src, k=-1):
        if k < 0:
            k = len(src)
        b = self.buf
        if self.n + k > len(b):
            h = self.head
            m = self.n - h
            for i in range(m):
                b[i] = b[h + i]
            self.head = 0
            self.n = m
            if m + k > len(b):
                self.overflow += m + k - len(b)
                self.n = 0
                if k > len(b):
                    k = len(b)
        n = self.n
        for i in range(k):
            b[n + i] = src[i]
        self.n = n + k

    def next(self):
        b = self.buf
        i = self.head
        n = self.n
        while i < n:
            c = b[i]
            if c == ACK:
                return self._found(i, 1, 1)
            if c == 0x10:
                if n - i < 5:
                    break
                if (b[i + 1] + b[i + 2]) & 0xFF == b[i + 3] and b[i + 4] == 0x16:
                    return self._found(i, 5, 2)
                self.bad += 1
                i += 1
                continue
            if c == 0x68:
                if n - i < 4:
                    break
                L = b[i + 1]
                if b[i + 2] != L or b[i + 3] != 0x68 or L < 3:
                    self.noise += 1
                    i += 1
                    continue
                if n - i < L + 6:
                    break
                if checksum(b, i + 4, i + 4 + L) == b[i + 4 + L] and b[i + 5 + L] == 0x16:
                    return self._found(i, L + 6, 3)
                self.bad += 1
                i += 1
                continue
            self.noise += 1
            i += 1
        self.head = i
        if i == n:
            self.head = self.n = 0
        return 0

    def _found(self, i, total, kind):
        self.start = i
        self.length = total
        self.kind = kind
        self.head = i + total
        self.frames += 1
        return total


# -- the variable data structure -----------------------------------------------------------------
def manufacturer(m):
    return chr(((m >> 10) & 0x1F) + 64) + chr(((m >> 5) & 0x1F) + 64) + chr((m & 0x1F) + 64)


def manufacturer_code(text):
    t = text.upper()
    if len(t) != 3 or any(not "A" <= ch <= "Z" for ch in t):
        raise ValueError("manufacturer %r must be three letters A-Z" % text)
    return ((ord(t[0]) - 64) << 10) | ((ord(t[1]) - 64) << 5) | (ord(t[2]) - 64)


def ident_text(buf, k):
    # 4 BCD bytes, low first -> "12345678"
    return "%02x%02x%02x%02x" % (buf[k + 3], buf[k + 2], buf[k + 1], buf[k])


def meter_id(ident):
    return "mbus-" + ident


def _int_le(buf, k, n, signed=True):
    v = 0
    for i in range(n - 1, -1, -1):
        v = (v << 8) | buf[k + i]
    if signed and n and buf[k + n - 1] & 0x80:
        v -= 1 << (8 * n)
    return v


def _bcd_le(buf, k, n):
    # M-Bus BCD: a top nibble F means negative.  None when not BCD.
    v = 0
    neg = False
    for i in range(n - 1, -1, -1):
        x = buf[k + i]
        hi = x >> 4
        if i == n - 1 and hi == 0xF:
            neg = True
            hi = 0
        d = bcd_byte((hi << 4) | (x & 0xF))
        if d < 0:
            return None
        v = v * 100 + d
    return -v if neg else v


def _time_f(buf, k):
    # type F date + time (4 bytes) -> epoch, 0 when marked invalid
    if buf[k] & 0x80:
        return 0
    mi = buf[k] & 0x3F
    hh = buf[k + 1] & 0x1F
    d = buf[k + 2] & 0x1F
    mo = buf[k + 3] & 0x0F
    y = ((buf[k + 2] >> 5) & 0x07) | ((buf[k + 3] >> 1) & 0x78)
    if not 1 <= mo <= 12 or not 1 <= d <= 31 or hh > 23 or mi > 59:
        return 0
    return R.epoch(2000 + y, mo, d, hh, mi, 0)


def _time_g(buf, k):
    d = buf[k] & 0x1F
    mo = buf[k + 1] & 0x0F
    y = ((buf[k] >> 5) & 0x07) | ((buf[k + 1] >> 1) & 0x78)
    if not 1 <= mo <= 12 or not 1 <= d <= 31:
        return 0
    return R.epoch(2000 + y, mo, d)


def _quantity(vif, med, storage):
    # primary VIF (extension bit cleared) + medium -> (quantity, unit, exponent) or None
    settle = storage > 0
    if vif < 0x10:  # energy: Wh x 10^(n-3) or J x 10^n
        n = vif & 7
        u, e = (R.U_WH, n - 3) if vif < 0x08 else (R.U_J, n)
        if med in _HEAT:
            return (R.Q_HEAT_SET if settle else R.Q_HEAT), u, e
        if med == 0x02 and not settle:
            return R.Q_E_IMP, u, e
        return None
    if vif < 0x18:  # volume m³ x 10^(n-6)
        e = (vif & 7) - 6
        if med in _HEAT:
            return (None if settle else R.Q_HEAT_VOL), R.U_M3, e
        if med in _WATER:
            return (R.Q_WATER_SET if settle else R.Q_WATER), R.U_M3, e
        if med == 0x03:
            return (R.Q_GAS_SET if settle else R.Q_GAS), R.U_M3, e
        return None
    if settle:
        return None
    if 0x24 <= vif <= 0x27 and vif & 3 == 2:  # operating time in hours
        return R.Q_HOURS, R.U_H, 0
    if 0x28 <= vif <= 0x2F:  # power W x 10^(n-3)
        return (R.Q_HEAT_P if med in _HEAT else R.Q_P), R.U_W, (vif & 7) - 3
    if 0x38 <= vif <= 0x3F:  # volume flow m³/h x 10^(n-6)
        return (R.Q_HEAT_FLOW if med in _HEAT else R.Q_WATER_FLOW), R.U_M3H, (vif & 7) - 6
    if 0x58 <= vif <= 0x5B:
        return R.Q_T_SUPPLY, R.U_C, (vif & 3) - 3
    if 0x5C <= vif <= 0x5F:
        return R.Q_T_RETURN, R.U_C, (vif & 3) - 3
    if 0x60 <= vif <= 0x63:
        return R.Q_T_DIFF, R.U_K, (vif & 3) - 3
    return None


def records(buf, k, end, med, out=None, raw=None):
    # Walks the data records of an RSP_UD from buf[k] to buf[end].  Mapped values go into
    # `out` (reading.Readings); `raw` (a list, host only) gets every record as a dict.
    # Raises FrameError for a record that runs past the end.
    while k < end:
        dif = buf[k]
        k += 1
        if dif == 0x2F:  # idle filler
            continue
        if dif in (0x0F, 0x1F):  # manufacturer specific data to the end
            if raw is not None:
                raw.append({"dif": dif, "manufacturer_data": bytes(buf[k:end]).hex()})
            return
        storage = (dif >> 6) & 1
        func = (dif >> 4) & 3
        tariff = 0
        sh = 1
        ext = dif & 0x80
        nd = 0
        while ext:
            if k >= end:
                raise FrameError("record runs past the end in its DIFE")
            dife = buf[k]
            k += 1
            storage |= (dife & 0x0F) << sh
            tariff |= ((dife >> 4) & 3) << (2 * nd)
            sh += 4
            nd += 1
            ext = dife & 0x80
            if nd > 10:
                raise FrameError("more than 10 DIFEs")
        if k >= end:
            raise FrameError("record runs past the end before its VIF")
        vif = buf[k]
        k += 1
        vif2 = -1
        err = False
        plain = None
        if vif & 0x7F == 0x7C:  # plain-text VIF: length + ASCII (reversed)
            if k >= end:
                raise FrameError("plain-text VIF is cut")
            ln = buf[k]
            plain = bytes(buf[k + ln - i] for i in range(ln) if k + ln - i < end)  # sent last letter first
            k += 1 + ln
        ext = vif & 0x80
        nv = 0
        plain_vif = not ext  # a VIFE may change the meaning: only plain VIFs are mapped
        while ext:
            if k >= end:
                raise FrameError("record runs past the end in its VIFE")
            x = buf[k]
            k += 1
            if nv == 0 and vif in (0xFB, 0xFD):
                vif2 = x & 0x7F
            elif x & 0x7F < 0x20 and vif not in (0xFB, 0xFD):
                err = True  # a record error code in the first VIFE table
            ext = x & 0x80
            nv += 1
            if nv > 10:
                raise FrameError("more than 10 VIFEs")
        df = dif & 0x0F
        n = _LEN[df]
        if df == 0x0D:  # variable length: LVAR
            if k >= end:
                raise FrameError("variable-length record is cut")
            lv = buf[k]
            k += 1
            n = lv if lv < 0xC0 else (lv - 0xC0 if lv < 0xD0 else (lv - 0xD0 if lv < 0xE0 else 0))
        if k + n > end:
            raise FrameError("record value runs past the end (%d of %d bytes)" % (end - k, n))
        v = None
        if df in (0x9, 0xA, 0xB, 0xC, 0xE):
            v = _bcd_le(buf, k, n)
        elif df in (1, 2, 3, 4, 6, 7):
            v = _int_le(buf, k, n)
        elif df == 5:
            f = R.f32_decimal(_int_le(buf, k, 4, False))
        p = vif & 0x7F
        q = None
        if err:
            if out is not None:
                out.status |= R.METER_ERROR
        elif vif == 0xFB and vif2 >= 0:
            if vif2 < 2:  # MWh x 10^(n-1)
                q = ((R.Q_HEAT_SET if storage else R.Q_HEAT) if med in _HEAT else R.Q_E_IMP, R.U_MWH, (vif2 & 1) - 1)
            elif 8 <= vif2 <= 9:  # GJ x 10^(n-1)
                q = ((R.Q_HEAT_SET if storage else R.Q_HEAT) if med in _HEAT else None, R.U_GJ, (vif2 & 1) - 1)
        elif p in (0x6C, 0x6D) and storage == 0 and func == 0:
            ts = _time_f(buf, k) if (p == 0x6D and n == 4) else (_time_g(buf, k) if n == 2 else 0)
            if out is not None and ts and not out.meter_ts:  # the first time point is the clock
                out.meter_ts = ts
            if raw is not None:
                raw.append({"dif": dif, "vif": vif, "time": ts})
        elif plain_vif and p not in (0x78, 0x79, 0x7A, 0x7C, 0x7E, 0x7F):
            q = _quantity(p, med, storage)
        if q is not None and q[0] is not None and func == 0 and tariff == 0 and storage <= 1:
            if df == 5:
                if f is not None and out is not None:
                    out.add(q[0], f[0], f[1] + q[2], q[1])
                v = f[0] if f is not None else None
                q = (q[0], q[1], q[2] + (f[1] if f is not None else 0))
            elif v is not None and out is not None:
                out.add(q[0], v, q[2], q[1])
        if raw is not None and not (p in (0x6C, 0x6D) and storage == 0 and func == 0):
            d = {"dif": dif, "vif": vif, "storage": storage, "function": func, "tariff": tariff,
                 "data": bytes(buf[k : k + n]).hex()}
            if plain is not None:
                d["vif_text"] = plain.decode("ascii", "replace") if hasattr(plain, "decode") else ""
            if q is not None and q[0] is not None and v is not None:
                d["quantity"] = R.qname(q[0])
                d["value"] = R.decimal(v, q[2] + (R._CANON.get(q[1], (0, 0))[1]))
                d["unit"] = R.UNITS[R._CANON.get(q[1], (q[1], 0))[0]]
            elif p == 0x78 and v is not None:
                d["fabrication_number"] = v
            raw.append(d)
        k += n


def header(buf, s):
    # An RSP_UD long frame at buf[s:] -> (ci, ident, man, ver, med, acc, status, first record
    # offset).  ident is "" for a short header (CI 7A).
    ci = buf[s + 6]
    if ci == CI_LONG:
        k = s + 7
        man = buf[k + 4] | (buf[k + 5] << 8)
        return ci, ident_text(buf, k), man, buf[k + 6], buf[k + 7], buf[k + 8], buf[k + 9], k + 12
    if ci == CI_SHORT:
        k = s + 7
        return ci, "", 0, 0, 0, buf[k], buf[k + 1], k + 4
    raise FrameError("CI %02X is not a variable data answer (72 or 7A)" % ci)


def values(buf, s, out, med_hint=0xFF):
    # An RSP_UD at buf[s:] into `out`.  Returns the meter's ident ("" for a short header).
    L = buf[s + 1]
    if L < 15:
        raise FrameError("RSP_UD of L=%d is too short for a variable data header" % L)
    ci, ident, man, ver, med, acc, st, k = header(buf, s)
    if ci == CI_SHORT:
        med = med_hint
    if st & 0x18 or st & 3 >= 2:  # permanent / temporary error, application error
        out.status |= R.METER_ERROR
    if st & 0x04:  # power low
        out.status |= R.BATTERY_LOW
    records(buf, k, s + 4 + L, med, out)
    return ident


# -- encoding answers (the simulated meters and round-trip tests) --------------------------------
def record(out, value, vif, digits=8, storage=0, bcd=True, dif_extra=0):
    # Appends one data record: value as `digits` BCD digits (or a 2/4/6/8-byte integer
    # when bcd is False), storage number 0/1 in the DIF.
    n = digits // 2 if bcd else digits
    df = {1: 0x9, 2: 0xA, 3: 0xB, 4: 0xC, 6: 0xE}[n] if bcd else {1: 1, 2: 2, 3: 3, 4: 4, 6: 6, 8: 7}[n]
    out.append(df | ((storage & 1) << 6) | dif_extra)
    out.append(vif)
    if bcd:
        v = -value if value < 0 else value
        for i in range(n):
            d = v % 100
            v //= 100
            x = ((d // 10) << 4) | (d % 10)
            if i == n - 1 and value < 0:
                x = (x & 0x0F) | 0xF0
            out.append(x)
    else:
        v = value & ((1 << (8 * n)) - 1)
        for _ in range(n):
            out.append(v & 0xFF)
            v >>= 8
    return out


def time_f(out, y, mo, d, hh, mi):
    out.append(0x04)
    out.append(0x6D)
    yy = y % 100
    out.append(mi & 0x3F)
    out.append(hh & 0x1F)
    out.append((d & 0x1F) | ((yy & 7) << 5))
    out.append((mo & 0x0F) | ((yy >> 3) << 4))
    return out


def rsp_ud(buf, a, ident, man, ver, med, acc, status, data, fcb=False):
    h = bytearray(12)
    for i in range(4):
        j = 6 - 2 * i
        h[i] = int(ident[j : j + 2], 16)
    h[4] = man & 0xFF
    h[5] = man >> 8
    h[6] = ver
    h[7] = med
    h[8] = acc & 0xFF
    h[9] = status
    return long_frame(buf, C_RSP_UD, a, CI_LONG, h + bytes(data))
