# DL/T 645-2007 and -1997: the Chinese multi-function electricity meter protocol.
#
#   [FE FE FE FE] 68 A0..A5 68 C L DATA[L] CS 16      (shared/reference/protocols.md §2)
# Address: 12 BCD digits, A0 (the last two) first; AA x 6 = "any meter" (read address),
# 99 x 6 = broadcast (time sync).  Every DATA byte is +0x33 on the wire.  C: D7 direction
# (1 = from the meter), D6 abnormal response, D5 follow-up frame, D4..D0 function.
# A read carries the data identifier DI0..DI3 (4 bytes, 2007) or DI0 DI1 (2 bytes, 1997)
# low byte first; the answer repeats it and adds the value: little-endian packed BCD,
# with bit 7 of the top byte as the sign for signed quantities.  An abnormal answer
# carries one ERR byte, a bit field (ERR_*).
# Everything here writes into / reads from caller buffers; the Scanner finds frames in a
# byte stream (FE and noise skipped, resynchronised after a bad checksum).
from micropython import const

from meternode.gateway import reading as R
from meternode.gateway.scanner import Scanner, address_bytes, address_text, bcd, bcd_byte, checksum, put_bcd

# control codes (requests; a normal answer adds 0x80, an abnormal one 0xC0)
C_TIME_SYNC = const(0x08)
C_READ = const(0x11)
C_READ_NEXT = const(0x12)
C_READ_ADDR = const(0x13)
C_WRITE = const(0x14)
C_READ_97 = const(0x01)
C_READ_NEXT_97 = const(0x02)
C_READ_ADDR_97 = const(0x0D)  # -1997 has no address read; probes use a DI read instead
DIR = const(0x80)
ABNORMAL = const(0x40)
FOLLOWS = const(0x20)

ERR_BITS = ("other", "no_data", "password", "baud_rate", "year_zones", "day_slots", "tariffs")
ERR_OTHER = const(1)
ERR_NO_DATA = const(2)
ERR_PASSWORD = const(4)

BROADCAST = "999999999999"
WILDCARD = "aaaaaaaaaaaa"
HEAD = const(10)  # bytes from the first 68 to DATA
PREAMBLE = const(4)

# DI -> (quantity, decimal exponent, bytes, signed, unit); a block DI lists several.
DI_2007 = {
    0x00000000: (R.Q_E_COMB, -2, 4, False, R.U_KWH),
    0x00010000: (R.Q_E_IMP, -2, 4, False, R.U_KWH),
    0x00020000: (R.Q_E_EXP, -2, 4, False, R.U_KWH),
    0x00010100: (R.Q_E_IMP_T1, -2, 4, False, R.U_KWH),
    0x00010200: (R.Q_E_IMP_T1 + 1, -2, 4, False, R.U_KWH),
    0x00010300: (R.Q_E_IMP_T1 + 2, -2, 4, False, R.U_KWH),
    0x00010400: (R.Q_E_IMP_T1 + 3, -2, 4, False, R.U_KWH),
    0x00020100: (R.Q_E_EXP_T1, -2, 4, False, R.U_KWH),
    0x00020200: (R.Q_E_EXP_T1 + 1, -2, 4, False, R.U_KWH),
    0x00020300: (R.Q_E_EXP_T1 + 2, -2, 4, False, R.U_KWH),
    0x00020400: (R.Q_E_EXP_T1 + 3, -2, 4, False, R.U_KWH),
    0x02010100: (R.Q_V_L1, -1, 2, False, R.U_V),
    0x02010200: (R.Q_V_L1 + 1, -1, 2, False, R.U_V),
    0x02010300: (R.Q_V_L1 + 2, -1, 2, False, R.U_V),
    0x02020100: (R.Q_I_L1, -3, 3, True, R.U_A),
    0x02020200: (R.Q_I_L1 + 1, -3, 3, True, R.U_A),
    0x02020300: (R.Q_I_L1 + 2, -3, 3, True, R.U_A),
    0x02030000: (R.Q_P, -4, 3, True, R.U_KW),
    0x02030100: (R.Q_P_L1, -4, 3, True, R.U_KW),
    0x02030200: (R.Q_P_L1 + 1, -4, 3, True, R.U_KW),
    0x02030300: (R.Q_P_L1 + 2, -4, 3, True, R.U_KW),
    0x02040000: (R.Q_Q, -4, 3, True, R.U_KVAR),
    0x02050000: (R.Q_S, -4, 3, True, R.U_KVA),
    0x02060000: (R.Q_PF, -3, 2, True, R.U_NONE),
    0x02800002: (R.Q_F, -2, 2, False, R.U_HZ),
}
# block DIs: DI -> tuple of element DIs in order
BLOCKS_2007 = {
    0x0001FF00: (0x00010000, 0x00010100, 0x00010200, 0x00010300, 0x00010400),
    0x0002FF00: (0x00020000, 0x00020100, 0x00020200, 0x00020300, 0x00020400),
    0x0201FF00: (0x02010100, 0x02010200, 0x02010300),
    0x0202FF00: (0x02020100, 0x02020200, 0x02020300),
}
DI_DATE = const(0x04000101)  # YYMMDDWW
DI_TIME = const(0x04000102)  # hhmmss
DI_ADDRESS = const(0x04000401)

DI_1997 = {
    0x9010: (R.Q_E_IMP, -2, 4, False, R.U_KWH),
    0x9011: (R.Q_E_IMP_T1, -2, 4, False, R.U_KWH),
    0x9012: (R.Q_E_IMP_T1 + 1, -2, 4, False, R.U_KWH),
    0x9013: (R.Q_E_IMP_T1 + 2, -2, 4, False, R.U_KWH),
    0x9014: (R.Q_E_IMP_T1 + 3, -2, 4, False, R.U_KWH),
    0x9020: (R.Q_E_EXP, -2, 4, False, R.U_KWH),
    0xB611: (R.Q_V_L1, 0, 2, False, R.U_V),
    0xB612: (R.Q_V_L1 + 1, 0, 2, False, R.U_V),
    0xB613: (R.Q_V_L1 + 2, 0, 2, False, R.U_V),
    0xB621: (R.Q_I_L1, -2, 2, False, R.U_A),
    0xB622: (R.Q_I_L1 + 1, -2, 2, False, R.U_A),
    0xB623: (R.Q_I_L1 + 2, -2, 2, False, R.U_A),
    0xB630: (R.Q_P, -4, 3, True, R.U_KW),
    0xB650: (R.Q_PF, -3, 2, True, R.U_NONE),
}
BLOCKS_1997 = {0x901F: (0x9010, 0x9011, 0x9012, 0x9013, 0x9014)}

# what a poll reads by default
POLL_2007 = (0x00010000, 0x00020000, 0x02010100, 0x02020100, 0x02030000, 0x02060000, 0x02800002)
POLL_1997 = (0x9010, 0x9020, 0xB611, 0xB621, 0xB630, 0xB650)


class FrameError(ValueError):
    pass


def scanner(size=512):
    return Scanner(9, 7, size)


# -- encoding -----------------------------------------------------------------------------------
def encode(buf, addr, ctrl, data=b"", n=-1, preamble=PREAMBLE):
    # Writes a whole frame into buf (address: 6 bytes as on the wire, or 12 digits);
    # `data` is plain (the +0x33 is added here).  Returns the frame length.
    if n < 0:
        n = len(data)
    if n > 255:
        raise FrameError("DL/T 645 data of %d bytes is over 255" % n)
    k = 0
    for _ in range(preamble):
        buf[k] = 0xFE
        k += 1
    s = k
    buf[k] = 0x68
    if isinstance(addr, str):
        address_bytes(addr, 6, buf, k + 1)
    else:
        for i in range(6):
            buf[k + 1 + i] = addr[i]
    buf[k + 7] = 0x68
    buf[k + 8] = ctrl
    buf[k + 9] = n
    k += HEAD
    for i in range(n):
        buf[k + i] = (data[i] + 0x33) & 0xFF
    k += n
    buf[k] = checksum(buf, s, k)
    buf[k + 1] = 0x16
    return k + 2


def _di_bytes(di, nd, out, off):
    for i in range(nd):
        out[off + i] = (di >> (8 * i)) & 0xFF


def read_request(buf, addr, di, version=2007, preamble=PREAMBLE):
    d = bytearray(4)
    nd = 4 if version == 2007 else 2
    _di_bytes(di, nd, d, 0)
    return encode(buf, addr, C_READ if version == 2007 else C_READ_97, d, nd, preamble)


def read_address_request(buf, preamble=PREAMBLE):
    return encode(buf, WILDCARD, C_READ_ADDR, b"", 0, preamble)


def time_sync_request(buf, tm, preamble=PREAMBLE):
    # Broadcast time sync (no answer): tm = (year, month, day, hour, minute, second), sent
    # as ss mm hh DD MM YY (low byte first, like every DL/T 645 value).
    d = bytearray(6)
    for i, x in enumerate((tm[5], tm[4], tm[3], tm[2], tm[1], tm[0] % 100)):
        put_bcd(d, i, 1, x)
    return encode(buf, BROADCAST, C_TIME_SYNC, d, 6, preamble)


def value_bytes(di, value, version=2007):
    # The plain DATA of a read answer: DI then the value in its format (the slave and the
    # simulated meters use this).  value is an integer at the DI's exponent.
    nd = 4 if version == 2007 else 2
    spec = (DI_2007 if version == 2007 else DI_1997).get(di)
    if spec is None:
        raise FrameError("no format known for DI %08X" % di)
    out = bytearray(nd + spec[2])
    _di_bytes(di, nd, out, 0)
    put_bcd(out, nd, spec[2], value, 0, spec[3])
    return out


def block_bytes(di, values, version=2007):
    blocks = BLOCKS_2007 if version == 2007 else BLOCKS_1997
    nd = 4 if version == 2007 else 2
    parts = blocks[di]
    out = bytearray(nd)
    _di_bytes(di, nd, out, 0)
    for sub, v in zip(parts, values):
        out.extend(value_bytes(sub, v, version)[nd:])
    return out


# -- decoding -----------------------------------------------------------------------------------
def ctrl(buf, s):
    return buf[s + 8]


def length(buf, s):
    return buf[s + 9]


def data_byte(buf, s, i):
    return (buf[s + HEAD + i] - 0x33) & 0xFF


def di_of(buf, s, nd):
    di = 0
    for i in range(nd - 1, -1, -1):
        di = (di << 8) | data_byte(buf, s, i)
    return di


def same_address(buf, s, addr):
    # addr: 6 wire bytes
    for i in range(6):
        if buf[s + 1 + i] != addr[i]:
            return False
    return True


def values(buf, s, out, version=2007, want=-1):
    # The values of a normal read answer at buf[s:] into `out` (reading.Readings).
    # Returns the DI, or -1 for an abnormal answer (out.status gets METER_ERROR only when
    # the ERR byte is not "no data"); raises FrameError for an answer it cannot read.
    c = buf[s + 8]
    L = buf[s + 9]
    if c & ABNORMAL:
        return -1
    nd = 4 if version == 2007 else 2
    if L < nd:
        raise FrameError("read answer of %d data bytes has no DI" % L)
    di = di_of(buf, s, nd)
    if want >= 0 and di != want:
        raise FrameError("answer for DI %08X, asked %08X" % (di, want))
    table = DI_2007 if version == 2007 else DI_1997
    blocks = BLOCKS_2007 if version == 2007 else BLOCKS_1997
    parts = blocks.get(di)
    k = s + HEAD + nd
    end = s + HEAD + L
    if parts is None:
        if version == 2007 and di in (DI_DATE, DI_TIME):
            return di  # the clock: meter_time() reads it
        spec = table.get(di)
        if spec is None:
            raise FrameError("no format known for DI %08X" % di)
        return _one(buf, k, end, spec, out, di)
    for sub in parts:
        if k >= end:
            break  # a meter with fewer tariffs sends a shorter block
        _one(buf, k, end, table[sub], out, sub)
        k += table[sub][2]
    return di


def _one(buf, k, end, spec, out, di):
    q, e, nb, signed, u = spec
    if k + nb > end:
        raise FrameError("value of DI %08X is cut (%d of %d bytes)" % (di, end - k, nb))
    v = bcd(buf, k, nb, 0x33, signed)
    if v is not None:  # None: FF-filled, the meter does not have it; skip, keep going
        out.add(q, v, e, u)
    return di


def err_code(buf, s):
    # The ERR bit field of an abnormal answer (0 when it has none).
    return data_byte(buf, s, 0) if buf[s + 9] >= 1 else 0


def err_names(err):
    return [ERR_BITS[b] for b in range(7) if err & (1 << b)]


def time_of(buf, s):
    # A time sync frame's DATA -> (year, month, day, hour, minute, second) both ways it is
    # found in the field: ss mm hh DD MM YY (low byte first) and YY MM DD hh mm ss; the
    # caller picks the one nearer its clock.  Either may be None when it is not a date.
    if buf[s + 9] != 6:
        return None, None
    d = [bcd_byte(data_byte(buf, s, i)) for i in range(6)]
    if min(d) < 0:
        return None, None
    a = (2000 + d[5], d[4], d[3], d[2], d[1], d[0])
    b = (2000 + d[0], d[1], d[2], d[3], d[4], d[5])
    return (a if _valid(a) else None), (b if _valid(b) else None)


def _valid(t):
    return 1 <= t[1] <= 12 and 1 <= t[2] <= 31 and t[3] < 24 and t[4] < 60 and t[5] < 60


def address_of(buf, s):
    return address_text(buf, s + 1, 6)


def meter_id(addr_text, version=2007):
    return ("dlt645-" if version == 2007 else "dlt645v97-") + addr_text
