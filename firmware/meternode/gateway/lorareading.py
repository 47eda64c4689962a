# A READING record in the LoRa codec's compact form (link/loracodec.py, kind 5), apart from
# reading.py so that only LoRa nodes (and the host) load it.
import struct

from meternode.gateway import reading as R

# status u8, meter_ts u32, protocol u8, nibble count u8 + the id's address digits packed two
# per byte, value count u8, then per value: quantity u8, unit u8, exponent i8, value as a
# zigzag varint.  Values that do not fit `room` bytes are left out (status TRUNCATED).


def _varint(out, v):
    z = (v << 1) if v >= 0 else ((-v) << 1) - 1
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def lora(payload, room):
    mid, status, mts, vals = R.unpack(payload)
    proto, _, addr = mid.partition("-")
    digits = addr.replace("-", "")
    out = bytearray()
    out.append(status)
    out.extend(struct.pack("<I", mts))
    out.append(R.PROTOCOLS.index(proto) if proto in R.PROTOCOLS else 255)
    out.append(len(digits))
    if len(digits) % 2:
        digits += "0"
    out.extend(bytes(int(digits[i : i + 2], 16) for i in range(0, len(digits), 2)))
    cnt = len(out)
    out.append(0)
    n = 0
    for q, u, e, v in vals:
        one = bytearray((q, u, e & 0xFF))
        _varint(one, v)
        if len(out) + len(one) > room:
            out[0] |= R.TRUNCATED
            break
        out.extend(one)
        n += 1
    out[cnt] = n
    if len(out) > room:
        raise ValueError("reading frame head of %d bytes is over %d" % (len(out), room))
    return bytes(out)


def lora_decode(b):
    # The compact form -> the same dict as fields() (meter id rebuilt from its digits).
    b = bytes(b)
    if len(b) < 8:
        raise ValueError("reading frame body of %d bytes is too short" % len(b))
    status = b[0]
    mts = struct.unpack_from("<I", b, 1)[0]
    proto = R.PROTOCOLS[b[5]] if b[5] < len(R.PROTOCOLS) else "unknown"
    nd = b[6]
    nb = (nd + 1) // 2
    k = 7 + nb
    if len(b) < k + 1:
        raise ValueError("reading frame is cut inside its meter id")
    digits = "".join("%02x" % x for x in b[7:k])[:nd]
    if proto == "cjt188" and len(digits) > 2:
        digits = digits[:2] + "-" + digits[2:]
    n = b[k]
    k += 1
    out = []
    for _ in range(n):
        if k + 4 > len(b):
            raise ValueError("reading frame is cut inside a value")
        q, u, e = b[k], b[k + 1], b[k + 2]
        e = e - 256 if e > 127 else e
        k += 3
        z = 0
        sh = 0
        while True:
            if k >= len(b):
                raise ValueError("reading frame is cut inside a value")
            x = b[k]
            k += 1
            z |= (x & 0x7F) << sh
            sh += 7
            if not x & 0x80:
                break
        v = (z >> 1) if not z & 1 else -((z + 1) >> 1)
        if q >= R.N_QUANTITIES or u >= len(R.UNITS):
            raise ValueError("reading frame has unknown quantity %d / unit %d" % (q, u))
        out.append({"code": R.qcode(q), "quantity": R.qname(q), "v": v, "e": e, "value": R.decimal(v, e),
                    "unit": R.UNITS[u]})
    if k != len(b):
        raise ValueError("reading frame has %d bytes after its values" % (len(b) - k))
    return {"meter": proto + "-" + digits, "status": R.status_names(status), "meter_ts": mts or None, "readings": out}
