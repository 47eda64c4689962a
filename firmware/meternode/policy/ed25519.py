# Ed25519 signature verification (RFC 8032, section 5.1.7) in plain Python.
#
# Only verification: the node never signs.  Points are kept in extended twisted-Edwards
# coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z, so adding and doubling need no
# inversion; one inversion at the end encodes the result.  [S]B - [k]A is computed in one
# pass (Straus/Shamir) with 2-bit windows over a 16-entry table of iB + jA, so a
# verification costs about 253 doublings and 127 additions.  The check is the
# cofactorless one, encode([S]B - [k]A) == R, with S < L and A, R canonical, and A not of
# small order: [8]A = identity (the 8 small-order points) would let one signature pass for
# every message; OpenSSL accepts those keys, so the host checks keys with check_public()
# before it asks `cryptography` (umeter.signing.crypto_verify): host and node agree.  T is
# computed only where an addition reads it (about 250 fewer multiplications per verification).
#
# Arithmetic is on Python ints modulo p = 2**255 - 19, which are bigints on every port:
# verification allocates and takes ~10 ms on the unix port (see benchmarks/policy.py),
# so it runs when a bundle arrives, never in the metering path.
from meternode.policy.sha512 import sha512

_P = (1 << 255) - 19
_L = (1 << 252) + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_D2 = (2 * _D) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

# Base point B in extended coordinates (y = 4/5, x even).
_BY = (4 * pow(5, _P - 2, _P)) % _P


def _recover_x(y, sign):
    # x from y on -x^2 + y^2 = 1 + d x^2 y^2; None if there is no such point.
    if y >= _P:
        return None
    p = _P
    u = (y * y - 1) % p
    v = (_D * y * y + 1) % p
    v3 = v * v * v % p
    x = u * v3 * pow(u * v3 * v3 * v % p, (p - 5) // 8, p) % p
    vx2 = v * x * x % p
    if vx2 != u:
        if vx2 != (p - u) % p:
            return None
        x = x * _SQRT_M1 % p
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = p - x
    return x


_BX = _recover_x(_BY, 0)
_B = (_BX, _BY, 1, _BX * _BY % _P)
_ZERO = (0, 1, 1, 0)


def _add(p1, p2, t_out=True):
    # Extended-coordinates addition (a = -1).  T of the result is only needed when the next
    # operation is an addition; `t_out=False` skips that multiplication.
    p = _P
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % p
    b = (y1 + x1) * (y2 + x2) % p
    c = t1 * _D2 * t2 % p
    d = 2 * z1 * z2 % p
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % p, g * h % p, f * g % p, e * h % p if t_out else 0)


def _double(p1, t_out=True):
    # Doubling never reads T of its input; `t_out=False` skips computing T of the output.
    p = _P
    x1, y1, z1, _ = p1
    a = x1 * x1 % p
    b = y1 * y1 % p
    c = 2 * z1 * z1 % p
    h = a + b
    s = x1 + y1
    e = h - s * s % p
    g = a - b
    f = c + g
    return (e * f % p, g * h % p, f * g % p, e * h % p if t_out else 0)


def decode_point(s):
    # 32 bytes -> extended point, or None if not a canonical encoding of a curve point.
    if len(s) != 32:
        return None
    n = int.from_bytes(s, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def small_order(pt):
    # True if [8]pt is the identity (X = 0; the group has no element of order 16, so
    # (0, -1) cannot appear here).
    q = _double(_double(_double(pt, False), False), False)
    return q[0] % _P == 0


def check_public(public_key):
    # None if `public_key` is a key verify() accepts signatures under, else why not.
    if len(public_key) != 32:
        return "%d bytes, not 32" % len(public_key)
    a = decode_point(bytes(public_key))
    if a is None:
        return "not the canonical encoding of a curve point"
    if small_order(a):
        return "a small-order point (it would accept forged signatures)"
    return None


def encode_point(pt):
    x, y, z, _ = pt
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _double_mul(s, k, a):
    # [s]B + [k]A for scalars below 2**254, two bits at a time.
    tb = [_ZERO, _B, _double(_B), None]
    tb[3] = _add(tb[2], _B)
    ta = [_ZERO, a, _double(a), None]
    ta[3] = _add(ta[2], a)
    table = [None] * 16
    for i in range(4):
        for j in range(4):
            table[4 * i + j] = _add(tb[i], ta[j]) if i and j else (tb[i] if i else ta[j])
    q = _ZERO
    for shift in range(252, -1, -2):
        idx = (((s >> shift) & 3) << 2) | ((k >> shift) & 3)
        q = _double(_double(q, False), idx != 0)  # T only where an addition follows
        if idx:
            q = _add(q, table[idx], False)
    return q


def verify(public_key, message, signature):
    # True if `signature` (64 bytes) is a valid Ed25519 signature of `message` by
    # `public_key` (32 bytes).  Never raises for bad input of the right types.
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = decode_point(bytes(public_key))
    if a is None or small_order(a):
        return False
    r = bytes(signature[:32])
    s = int.from_bytes(bytes(signature[32:]), "little")
    if s >= _L:
        return False
    h = sha512(r)
    h.update(public_key)
    h.update(message)
    k = int.from_bytes(h.digest(), "little") % _L
    # [S]B - [k]A computed as [S]B + [k](-A); -(x, y) = (-x, y).
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return encode_point(_double_mul(s, k, neg_a)) == r
