# Host-side views of whole frames: `umeter decode 645|188|mbus|modbus` and the tests turn
# one frame into a dict of its fields and readings in engineering units (exact decimals).
# Kept apart from the codecs so a node never loads it.  Errors are the codec's FrameError,
# saying whether a frame is truncated, has a bad checksum or a bad end byte.
from meternode.gateway import cjt188 as _cjt188
from meternode.gateway import dlt645 as _dlt645
from meternode.gateway import mbus as _mbus
from meternode.gateway import modbus as _modbus
from meternode.gateway import reading as R

D, C, M, B = _dlt645, _cjt188, _mbus, _modbus


def _readings(r):
    return [
        {"quantity": R.qname(r.q[k]), "code": R.qcode(r.q[k]), "value": R.decimal(r.v[k], r.e[k]),
         "unit": R.UNITS[r.u[k]]}
        for k in range(r.n)
    ]


def dlt645(frame, version=None):
    # Host and tests: one whole frame (bytes, FE preamble allowed) -> dict.  Raises
    # D.FrameError saying whether it is truncated, has a bad D.checksum or a bad end byte.
    b = bytes(frame)
    i = 0
    while i < len(b) and b[i] == 0xFE:
        i += 1
    if i >= len(b) or b[i] != 0x68:
        raise D.FrameError("no start byte 68 (got %s)" % ("%02X" % b[i] if i < len(b) else "nothing"))
    if len(b) - i < 12:
        raise D.FrameError("truncated: %d bytes, a frame has at least 12" % (len(b) - i))
    if b[i + 7] != 0x68:
        raise D.FrameError("second start byte is %02X, not 68" % b[i + 7])
    L = b[i + 9]
    total = D.HEAD + L + 2
    if len(b) - i < total:
        raise D.FrameError("truncated: %d bytes, L=%d needs %d" % (len(b) - i, L, total))
    cs = D.checksum(b, i, i + D.HEAD + L)
    cs_ok = cs == b[i + D.HEAD + L]
    if not cs_ok:
        raise D.FrameError("bad checksum: frame has %02X, bytes sum to %02X" % (b[i + D.HEAD + L], cs))
    if b[i + total - 1] != 0x16:
        raise D.FrameError("end byte is %02X, not 16" % b[i + total - 1])
    if len(b) - i > total:
        raise D.FrameError("%d bytes after the end byte" % (len(b) - i - total))
    c = b[i + 8]
    data = bytes((x - 0x33) & 0xFF for x in b[i + D.HEAD : i + D.HEAD + L])
    fn = c & 0x1F
    if version is None:
        version = 1997 if fn in (D.C_READ_97, D.C_READ_NEXT_97) else 2007
    d = {
        "protocol": "dlt645" if version == 2007 else "dlt645-1997",
        "address": D.address_of(b, i),
        "control": c,
        "direction": "meter" if c & D.DIR else "master",
        "abnormal": bool(c & D.ABNORMAL),
        "follows": bool(c & D.FOLLOWS),
        "function": fn,
        "length": L,
        "checksum_ok": cs_ok,
        "data": data.hex(),
        "readings": [],
    }
    nd = 4 if version == 2007 else 2
    if c & D.ABNORMAL:
        err = data[0] if data else 0
        d["error"] = err
        d["error_bits"] = D.err_names(err)
        return d
    if fn in (D.C_READ, D.C_READ_NEXT) if version == 2007 else fn in (D.C_READ_97, D.C_READ_NEXT_97):
        if L >= nd:
            di = D.di_of(b, i, nd)
            d["di"] = ("%08X" if version == 2007 else "%04X") % di
            if c & D.DIR:
                r = R.Readings()
                try:
                    D.values(b, i, r, version)
                except D.FrameError as e:
                    d["note"] = str(e)
                if version == 2007 and di in (D.DI_DATE, D.DI_TIME) and L >= nd + 3:
                    d["clock"] = "".join("%02X" % data[k] for k in range(L - 1, nd - 1, -1))
                d["readings"] = _readings(r)
    elif fn == D.C_READ_ADDR and c & D.DIR and L == 6:
        d["meter_address"] = "".join("%02x" % data[k] for k in range(5, -1, -1))
    elif fn == D.C_TIME_SYNC:
        a, bb = D.time_of(b, i)
        t = a or bb
        if t:
            d["time"] = "%04d-%02d-%02d %02d:%02d:%02d" % t
    return d


def cjt188(frame):
    # Host and tests: one whole frame -> dict; C.FrameError says truncated / bad C.checksum.
    b = bytes(frame)
    i = 0
    while i < len(b) and b[i] == 0xFE:
        i += 1
    if i >= len(b) or b[i] != 0x68:
        raise C.FrameError("no start byte 68 (got %s)" % ("%02X" % b[i] if i < len(b) else "nothing"))
    if len(b) - i < 13:
        raise C.FrameError("truncated: %d bytes, a frame has at least 13" % (len(b) - i))
    L = b[i + 10]
    total = C.HEAD + L + 2
    if len(b) - i < total:
        raise C.FrameError("truncated: %d bytes, L=%d needs %d" % (len(b) - i, L, total))
    cs = C.checksum(b, i, i + C.HEAD + L)
    if cs != b[i + C.HEAD + L]:
        raise C.FrameError("bad checksum: frame has %02X, bytes sum to %02X" % (b[i + C.HEAD + L], cs))
    if b[i + total - 1] != 0x16:
        raise C.FrameError("end byte is %02X, not 16" % b[i + total - 1])
    if len(b) - i > total:
        raise C.FrameError("%d bytes after the end byte" % (len(b) - i - total))
    c = b[i + 9]
    t = b[i + 1]
    d = {
        "protocol": "cjt188",
        "meter_type": t,
        "family": C.family(t),
        "address": C.address_of(b, i),
        "control": c,
        "direction": "meter" if c & C.DIR else "master",
        "abnormal": bool(c & C.ABNORMAL),
        "function": c & 0x3F,
        "length": L,
        "checksum_ok": True,
        "data": b[i + C.HEAD : i + C.HEAD + L].hex(),
        "readings": [],
    }
    if L >= 3:
        d["di"] = "%04X" % C.di_of(b, i)
        d["ser"] = b[i + C.HEAD + 2]
    if c & C.DIR and (c & 0x3F) == C.C_READ or c & C.ABNORMAL:
        r = R.Readings()
        try:
            C.values(b, i, r)
        except C.FrameError as e:
            d["note"] = str(e)
        d["status"] = R.status_names(r.status)
        if r.meter_ts:
            d["meter_ts"] = r.meter_ts
            d["meter_time"] = "%04d-%02d-%02d %02d:%02d:%02d" % R.civil(r.meter_ts)
        d["readings"] = _readings(r)
    return d


def mbus(frame):
    # Host and tests: one whole frame -> dict; M.FrameError says truncated / bad M.checksum.
    b = bytes(frame)
    if not b:
        raise M.FrameError("empty frame")
    c0 = b[0]
    if c0 == M.ACK:
        if len(b) != 1:
            raise M.FrameError("%d bytes after the single character E5" % (len(b) - 1))
        return {"protocol": "mbus", "frame": "ack", "checksum_ok": True, "readings": []}
    if c0 == 0x10:
        if len(b) < 5:
            raise M.FrameError("truncated: short frame of %d bytes, expected 5" % len(b))
        cs = (b[1] + b[2]) & 0xFF
        if cs != b[3]:
            raise M.FrameError("bad checksum: frame has %02X, C + A is %02X" % (b[3], cs))
        if b[4] != 0x16:
            raise M.FrameError("end byte is %02X, not 16" % b[4])
        if len(b) > 5:
            raise M.FrameError("%d bytes after the end byte" % (len(b) - 5))
        names = {0x40: "SND_NKE", 0x5B: "REQ_UD2", 0x7B: "REQ_UD2", 0x5A: "REQ_UD1", 0x7A: "REQ_UD1"}
        return {"protocol": "mbus", "frame": "short", "control": b[1], "function": names.get(b[1], "?"),
                "address": b[2], "checksum_ok": True, "readings": []}
    if c0 != 0x68:
        raise M.FrameError("no start byte (10, 68 or E5; got %02X)" % c0)
    if len(b) < 4:
        raise M.FrameError("truncated: %d bytes, a long frame head is 4" % len(b))
    L = b[1]
    if b[2] != L or b[3] != 0x68:
        raise M.FrameError("long frame head 68 L L 68 is broken (%s)" % b[:4].hex())
    if len(b) < L + 6:
        raise M.FrameError("truncated: %d bytes, L=%d needs %d" % (len(b), L, L + 6))
    cs = M.checksum(b, 4, 4 + L)
    if cs != b[4 + L]:
        raise M.FrameError("bad checksum: frame has %02X, bytes sum to %02X" % (b[4 + L], cs))
    if b[5 + L] != 0x16:
        raise M.FrameError("end byte is %02X, not 16" % b[5 + L])
    if len(b) > L + 6:
        raise M.FrameError("%d bytes after the end byte" % (len(b) - L - 6))
    d = {"protocol": "mbus", "frame": "long", "control": b[4], "address": b[5], "ci": b[6], "length": L,
         "checksum_ok": True, "readings": []}
    if b[6] == M.CI_SELECT and L == 11:
        d["function"] = "select"
        d["select"] = {"id": M.ident_text(b, 7).upper(), "manufacturer": b[11] | (b[12] << 8), "version": b[13],
                       "medium": b[14]}
        return d
    if b[6] in (M.CI_LONG, M.CI_SHORT):
        ci, ident, man, ver, med, acc, st, k = M.header(b, 0)
        d["function"] = "RSP_UD"
        if ci == M.CI_LONG:
            d["id"] = ident
            d["manufacturer"] = M.manufacturer(man)
            d["version"] = ver
            d["medium"] = M.MEDIA.get(med, "0x%02X" % med)
        d["access_number"] = acc
        d["status"] = st
        r = R.Readings()
        raw = []
        try:
            M.records(b, k, 4 + L, med, r, raw)
        except M.FrameError as e:
            d["note"] = str(e)
        d["records"] = raw
        if r.meter_ts:
            d["meter_ts"] = r.meter_ts
            d["meter_time"] = "%04d-%02d-%02d %02d:%02d:%02d" % R.civil(r.meter_ts)
        d["readings"] = _readings(r)
    return d


def modbus(frame, registers=None):
    # Host and tests: one RTU frame -> dict.  A request (8 bytes, fn 3/4) or an answer; with
    # `registers` (a RegisterMap block's map name and block) the answer's fields as readings.
    b = bytes(frame)
    if len(b) < 4:
        raise B.FrameError("truncated: %d bytes, an RTU frame has at least 4" % len(b))
    if not B.crc_ok(b, len(b)):
        c = B.crc16(b, 0, len(b) - 2)
        raise B.FrameError("bad CRC: frame has %02X%02X, bytes give %02X%02X" % (b[-2], b[-1], c & 0xFF, c >> 8))
    d = {"protocol": "modbus", "address": b[0], "control": b[1], "function": b[1] & 0x7F, "checksum_ok": True,
         "readings": []}
    if b[1] & B.EXC:
        d["exception"] = b[2]
        d["error"] = B.EXCEPTIONS.get(b[2], "unknown")
        return d
    if b[1] in (3, 4) and len(b) == 8 and b[2] != 3:
        # a request: start + count (an 8-byte answer would carry an odd byte count, 3)
        d["request"] = {"start": (b[2] << 8) | b[3], "count": (b[4] << 8) | b[5]}
        return d
    if b[1] in (3, 4):
        if b[2] + 5 != len(b):
            raise B.FrameError("truncated: byte count %d needs %d bytes, have %d" % (b[2], b[2] + 5, len(b)))
        d["registers"] = [(b[3 + 2 * i] << 8) | b[4 + 2 * i] for i in range(b[2] // 2)]
        if registers is not None:
            m, bi = registers
            r = R.Readings()
            m.decode(bi, b, 3, r)
            d["readings"] = _readings(r)
    return d
