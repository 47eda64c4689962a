# CJ/T 188-2004: household water, gas and heat meters (shared/reference/protocols.md §3).
#
#   [FE FE FE] 68 T A0..A6 C L DATA[L] CS 16
# T = meter type (0x10-0x19 water, 0x20-0x29 heat/cooling, 0x30-0x39 gas, AA = any);
# A = 7-byte BCD address, A0 first (AA = wildcard).  No +0x33 on DATA.  C has the DL/T 645
# bit layout (D7 direction, D6 abnormal).  DATA of a read = DI (2 bytes) + SER (a sequence
# number the meter echoes) + payload.  The DI byte order differs between meters in the
# field: we send 90 1F and accept both orders back.
from micropython import const

from meternode.gateway import reading as R
from meternode.gateway.scanner import Scanner, address_bytes, address_text, bcd, bcd_byte, checksum

C_READ = const(0x01)
C_READ_ADDR = const(0x03)
C_WRITE = const(0x04)
C_VALVE = const(0x2A)  # the code valve commands use in the field (§3.7)
DIR = const(0x80)
ABNORMAL = const(0x40)
DI_READ = const(0x901F)
DI_ADDR = const(0x810A)
DI_VALVE = const(0xA017)
VALVE_OPEN = const(0x55)
VALVE_CLOSE = const(0x99)
HEAD = const(11)
PREAMBLE = const(2)
ANY_TYPE = const(0xAA)
WILDCARD = "aaaaaaaaaaaaaa"

# unit code -> (unit, exponent added) (CJ/T 188-2004 table 13, via ng-gateway defs.rs)
UNIT_CODES = {
    0x01: (R.U_J, 0), 0x02: (R.U_WH, 0), 0x03: (R.U_WH, 1), 0x04: (R.U_WH, 2), 0x05: (R.U_KWH, 0),
    0x06: (R.U_KWH, 1), 0x07: (R.U_KWH, 2), 0x08: (R.U_MWH, 0), 0x09: (R.U_MWH, 1), 0x0A: (R.U_MWH, 2),
    0x0B: (R.U_KJ, 0), 0x0C: (R.U_KJ, 1), 0x0D: (R.U_KJ, 2), 0x0E: (R.U_MJ, 0), 0x0F: (R.U_MJ, 1),
    0x10: (R.U_MJ, 2), 0x11: (R.U_GJ, 0), 0x12: (R.U_GJ, 1), 0x13: (R.U_GJ, 2), 0x14: (R.U_W, 0),
    0x15: (R.U_W, 1), 0x16: (R.U_W, 2), 0x17: (R.U_KW, 0), 0x18: (R.U_KW, 1), 0x19: (R.U_KW, 2),
    0x1A: (R.U_MW, 0), 0x1B: (R.U_MW, 1), 0x1C: (R.U_MW, 2), 0x29: (R.U_L, 0), 0x2A: (R.U_L, 1),
    0x2B: (R.U_L, 2), 0x2C: (R.U_M3, 0), 0x2D: (R.U_M3, 1), 0x2E: (R.U_M3, 2), 0x32: (R.U_LH, 0),
    0x33: (R.U_LH, 1), 0x34: (R.U_LH, 2), 0x35: (R.U_M3H, 0), 0x36: (R.U_M3H, 1), 0x37: (R.U_M3H, 2),
}


class FrameError(ValueError):
    pass


def family(t):
    # meter type -> "water" | "heat" | "gas" | "other"
    if 0x10 <= t <= 0x19:
        return "water"
    if 0x20 <= t <= 0x29:
        return "heat"
    if 0x30 <= t <= 0x39:
        return "gas"
    return "other"


def scanner(size=512):
    return Scanner(10, -1, size)


def encode(buf, mtype, addr, ctrl, data=b"", n=-1, preamble=PREAMBLE):
    # Whole frame into buf; addr = 14 digits or 7 wire bytes.  Returns its length.
    if n < 0:
        n = len(data)
    if n > 255:
        raise FrameError("CJ/T 188 data of %d bytes is over 255" % n)
    k = 0
    for _ in range(preamble):
        buf[k] = 0xFE
        k += 1
    s = k
    buf[k] = 0x68
    buf[k + 1] = mtype
    if isinstance(addr, str):
        address_bytes(addr, 7, buf, k + 2)
    else:
        for i in range(7):
            buf[k + 2 + i] = addr[i]
    buf[k + 9] = ctrl
    buf[k + 10] = n
    k += HEAD
    for i in range(n):
        buf[k + i] = data[i]
    k += n
    buf[k] = checksum(buf, s, k)
    buf[k + 1] = 0x16
    return k + 2


def read_request(buf, mtype, addr, ser=0, di=DI_READ, preamble=PREAMBLE):
    return encode(buf, mtype, addr, C_READ, bytes((di >> 8, di & 0xFF, ser & 0xFF)), 3, preamble)


def read_address_request(buf, ser=0, preamble=PREAMBLE, mtype=ANY_TYPE):
    return encode(buf, mtype, WILDCARD, C_READ_ADDR, bytes((DI_ADDR >> 8, DI_ADDR & 0xFF, ser & 0xFF)), 3, preamble)


def valve_request(buf, mtype, addr, close, ser=0, preamble=PREAMBLE):
    cmd = VALVE_CLOSE if close else VALVE_OPEN
    return encode(buf, mtype, addr, C_VALVE, bytes((DI_VALVE >> 8, DI_VALVE & 0xFF, ser & 0xFF, cmd)), 4, preamble)


def valve_state(buf, s):
    # A valve-control answer at buf[s:] -> "open" | "closed" | "fault" from its status
    # bytes, "" when it carries none, "refused" for an abnormal answer.
    if buf[s + 9] & ABNORMAL:
        return "refused"
    if buf[s + 10] < 5:
        return ""
    v = buf[s + HEAD + 3] & 0x03
    return "open" if v == 0 else "closed" if v == 1 else "fault"


def di_of(buf, s):
    # Either order on the wire -> the DI as written (0x901F).
    a = buf[s + HEAD]
    b = buf[s + HEAD + 1]
    if a < b and (b & 0xF0) in (0x80, 0x90, 0xA0, 0xD0) and (a & 0xF0) not in (0x80, 0x90, 0xA0, 0xD0):
        return (b << 8) | a  # low byte first (1F 90)
    return (a << 8) | b


def meter_type(buf, s):
    return buf[s + 1]


def address_of(buf, s):
    return address_text(buf, s + 2, 7)


def meter_id(mtype, addr_text):
    return "cjt188-%02x-%s" % (mtype, addr_text)


def same_address(buf, s, addr):
    for i in range(7):
        if buf[s + 2 + i] != addr[i]:
            return False
    return True


def _flow(buf, k, q, out):
    # 4-byte BCD XXXXXX.XX + unit code
    v = bcd(buf, k, 4)
    uc = UNIT_CODES.get(buf[k + 4])
    if v is None or uc is None:
        return
    out.add(q, v, -2 + uc[1], uc[0])


def _clock(buf, k):
    # ss mm hh DD MM YY CC (BCD) -> epoch, or 0 when not a date (FF-filled)
    d = [bcd_byte(buf[k + i]) for i in range(7)]
    if min(d) < 0 or not 1 <= d[4] <= 12 or not 1 <= d[3] <= 31 or d[2] > 23 or d[1] > 59 or d[0] > 59:
        return 0
    return R.epoch(d[6] * 100 + d[5], d[4], d[3], d[2], d[1], d[0])


def _status(buf, k, out):
    st = buf[k]
    valve = st & 0x03
    if valve == 0x01:
        out.status |= R.VALVE_CLOSED
    elif valve == 0x03:
        out.status |= R.VALVE_FAULT
    if st & 0x04:
        out.status |= R.BATTERY_LOW


# heat 901F payload after DI + SER: (offset, kind) in order
#   settlement heat 5, current heat 5, heat power 5, flow 5, cumulative flow 5,
#   supply temp 3 (XXXX.XX), return temp 3, working hours 3 (XXXXXX), clock 7, status 2 = 43
HEAT_LEN = const(43)
WATER_LEN = const(19)


def values(buf, s, out):
    # A read-data answer (901F) at buf[s:] into `out`.  Returns the DI; raises FrameError.
    c = buf[s + 9]
    L = buf[s + 10]
    if c & ABNORMAL:
        out.status |= R.METER_ERROR
        if L >= 5:
            _status(buf, s + HEAD + 3, out)
        return -1
    if L < 3:
        raise FrameError("read answer of %d data bytes has no DI" % L)
    di = di_of(buf, s)
    if di != DI_READ:
        return di
    t = buf[s + 1]
    k = s + HEAD + 3
    fam = family(t)
    if fam == "heat":
        if L < 3 + HEAT_LEN:
            raise FrameError("heat meter answer of %d data bytes, expected %d" % (L, 3 + HEAT_LEN))
        _flow(buf, k, R.Q_HEAT_SET, out)
        _flow(buf, k + 5, R.Q_HEAT, out)
        _flow(buf, k + 10, R.Q_HEAT_P, out)
        _flow(buf, k + 15, R.Q_HEAT_FLOW, out)
        _flow(buf, k + 20, R.Q_HEAT_VOL, out)
        for off, q in ((25, R.Q_T_SUPPLY), (28, R.Q_T_RETURN)):
            v = bcd(buf, k + off, 3)
            if v is not None:
                out.add(q, v, -2, R.U_C)
        v = bcd(buf, k + 31, 3)
        if v is not None:
            out.add(R.Q_HOURS, v, 0, R.U_H)
        out.meter_ts = _clock(buf, k + 34)
        _status(buf, k + 41, out)
        return di
    if L < 3 + WATER_LEN:
        raise FrameError("%s meter answer of %d data bytes, expected %d" % (fam, L, 3 + WATER_LEN))
    gas = fam == "gas"
    _flow(buf, k, R.Q_GAS if gas else R.Q_WATER, out)
    _flow(buf, k + 5, R.Q_GAS_SET if gas else R.Q_WATER_SET, out)
    out.meter_ts = _clock(buf, k + 10)
    _status(buf, k + 17, out)
    return di
