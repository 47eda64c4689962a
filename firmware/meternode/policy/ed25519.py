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
import hashlib
from binascii import hexlify

from micropython import const

# The curve's constants (RFC 8032, 5.1), written out: a `_NAME = const()` integer is erased by
# the compiler, so none of them is a global or an interned name on the node
# (tests/host/test_ed25519_keys.py derives each from its definition).
_P = const(0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED)  # 2**255 - 19
# the group order, 2**252 + 27742317777372353535851937790883648493
_L = const(0x1000000000000000000000000000000014DEF9DEA2F79CD65812631A5CF5D3ED)
_D = const(0x52036CEE2B6FFE738CC740797779E89800700A4D4141D8AB75EB4DCA135978A3)  # -121665/121666 mod p
_D2 = const(0x2406D9DC56DFFCE7198E80F2EEF3D13000E0149A8283B156EBD69B9426B2F159)  # 2 d mod p
_SQRT_M1 = const(0x2B8324804FC1DF0B2B4D00993DFBD7A72F431806AD2FE478C4EE1B274A0EA0B0)  # 2**((p-1)/4)
# Base point B (y = 4/5, x even) in extended coordinates.
_BX = const(0x216936D3CD6E53FEC0A4E231FDD6DC5C692CC7609525A7B2C9562D608F25D51A)
_BY = const(0x6666666666666666666666666666666666666666666666666666666666666658)
_B = (_BX, _BY, 1, _BX * _BY % _P)


def key_id(key):
    # The id bundles name a fleet key by (bundle.py, agent.check_identity): the first 16 hex
    # digits of the key's SHA-256.
    return hexlify(hashlib.sha256(key).digest()).decode()[:16]


def _add(p, q, t=True):
    # Extended-coordinates addition (a = -1) of points p and q.  T of the result is only
    # needed when the next operation is an addition; `t=False` skips that multiplication.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    m = _P
    a = (y1 - x1) * (y2 - x2) % m
    b = (y1 + x1) * (y2 + x2) % m
    c = t1 * _D2 * t2 % m
    d = 2 * z1 * z2 % m
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % m, g * h % m, f * g % m, e * h % m if t else 0)


def _double(p, t=True):
    # Doubling never reads T of its input; `t=False` skips computing T of the output.
    x1, y1, z1, _ = p
    m = _P
    a = x1 * x1 % m
    b = y1 * y1 % m
    c = 2 * z1 * z1 % m
    h = a + b
    s = x1 + y1
    e = h - s * s % m
    g = a - b
    f = c + g
    return (e * f % m, g * h % m, f * g % m, e * h % m if t else 0)


def decode_point(s):
    # 32 bytes -> extended point, or None if not a canonical encoding of a curve point: x
    # recovered from y on -x^2 + y^2 = 1 + d x^2 y^2, the sign bit choosing between x and -x.
    if len(s) != 32:
        return None
    p = _P
    n = int.from_bytes(s, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    if y >= p:
        return None
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
    return (x, y, 1, x * y % p)


def small_order(p):
    # True if [8]p is the identity (X = 0; the group has no element of order 16, so
    # (0, -1) cannot appear here).
    q = _double(_double(_double(p, False), False), False)
    return q[0] % _P == 0


def check_public(key):
    # None if `key` is a key verify() accepts signatures under, else why not.
    if len(key) != 32:
        return "%d bytes, not 32" % len(key)
    a = decode_point(bytes(key))
    if a is None:
        return "not the canonical encoding of a curve point"
    if small_order(a):
        return "a small-order point (it would accept forged signatures)"
    return None


def encode_point(p):
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _double_mul(s, k, a):
    # [s]B + [k]A for scalars below 2**254, two bits at a time.
    zero = (0, 1, 1, 0)
    tb = [zero, _B, _double(_B), None]
    tb[3] = _add(tb[2], _B)
    ta = [zero, a, _double(a), None]
    ta[3] = _add(ta[2], a)
    table = [None] * 16
    for i in range(4):
        for j in range(4):
            table[4 * i + j] = _add(tb[i], ta[j]) if i and j else (tb[i] if i else ta[j])
    q = zero
    for shift in range(252, -1, -2):
        idx = (((s >> shift) & 3) << 2) | ((k >> shift) & 3)
        q = _double(_double(q, False), idx != 0)  # T only where an addition follows
        if idx:
            q = _add(q, table[idx], False)
    return q


def verify(key, message, signature):
    # True if `signature` (64 bytes) is a valid Ed25519 signature of `message` by
    # `key` (32 bytes).  Never raises for bad input of the right types.
    if len(key) != 32 or len(signature) != 64:
        return False
    a = decode_point(bytes(key))
    if a is None or small_order(a):
        return False
    r = bytes(signature[:32])
    s = int.from_bytes(bytes(signature[32:]), "little")
    if s >= _L:
        return False
    from meternode.policy.sha512 import sha512  # here: checking a key at start needs no SHA-512

    h = sha512(r)
    h.update(key)
    h.update(message)
    k = int.from_bytes(h.digest(), "little") % _L
    # [S]B - [k]A computed as [S]B + [k](-A); -(x, y) = (-x, y).
    neg_a = ((_P - a[0]) % _P, a[1], a[2], (_P - a[3]) % _P)
    return encode_point(_double_mul(s, k, neg_a)) == r
