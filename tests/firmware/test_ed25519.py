# Ed25519 verification (policy/ed25519.py) against the RFC 8032 section 7.1 test vectors,
# on the MicroPython unix port.  Every tampering must be rejected, never raise.
from binascii import unhexlify as u

from meternode.policy import ed25519
from meternode.policy.sha512 import sha512
from mptest import eq

_L = (1 << 252) + 27742317777372353535851937790883648493  # the group order (RFC 8032 5.1)

# (public key, message, signature) from RFC 8032 7.1: TEST 1, 2, 3 and TEST SHA(abc).
_VECTORS = (
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        None,  # SHA-512("abc")
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
)


def _vec(i):
    pk, m, sig = _VECTORS[i]
    msg = sha512(b"abc").digest() if m is None else u(m)
    return u(pk), msg, u(sig)


def test_rfc8032_vectors_verify():
    for i in range(len(_VECTORS)):
        pk, msg, sig = _vec(i)
        eq(ed25519.verify(pk, msg, sig), True, "RFC 8032 vector %d" % i)


def test_any_flipped_bit_is_rejected():
    pk, msg, sig = _vec(2)
    for pos in (0, 17, 31, 32, 45, 63):
        bad = bytearray(sig)
        bad[pos] ^= 0x04
        eq(ed25519.verify(pk, msg, bytes(bad)), False, "signature byte %d flipped" % pos)
    eq(ed25519.verify(pk, b"\xaf\x83", sig), False, "message changed")
    eq(ed25519.verify(pk, msg + b"\x00", sig), False, "message extended")
    other = _vec(1)[0]
    eq(ed25519.verify(other, msg, sig), False, "another key")


def test_malformed_inputs_are_rejected_without_raising():
    pk, msg, sig = _vec(0)
    eq(ed25519.verify(pk[:31], msg, sig), False, "31-byte key")
    eq(ed25519.verify(pk, msg, sig[:63]), False, "63-byte signature")
    eq(ed25519.verify(pk, msg, b""), False, "empty signature")
    # S >= L (S + L) must be rejected even though it is the same scalar mod L.
    s = int.from_bytes(sig[32:], "little") + _L
    eq(ed25519.verify(pk, msg, sig[:32] + s.to_bytes(32, "little")), False, "S + L")
    # y >= p is not a canonical point encoding.
    eq(ed25519.verify(b"\xff" * 31 + b"\x7f", msg, sig), False, "non-canonical key")
    eq(ed25519.decode_point(b"\xff" * 31 + b"\x7f"), None, "decode y >= p")


def test_point_encoding_round_trips():
    pk = _vec(3)[0]
    eq(ed25519.encode_point(ed25519.decode_point(pk)), pk, "decode/encode")
    base = u("5866666666666666666666666666666666666666666666666666666666666666")
    eq(ed25519.encode_point(ed25519._B), base, "base")
    eq(ed25519.decode_point(base), ed25519._B, "the base point decodes to B (x recovered, its T)")


def test_small_order_keys_are_refused_on_micropython():
    # The identity key: [S]B - [k]A = [S]B, so R = encode([S]B) would pass for any message.
    from meternode.policy import ed25519 as E

    ident = bytes([1]) + bytes(31)
    s = 12345
    sig = E.encode_point(E._double_mul(s, 0, E._B)) + s.to_bytes(32, "little")
    eq(E.verify(ident, b"any message", sig), False, "identity key refused")
    order2 = bytes([0xEC]) + bytes([0xFF]) * 30 + bytes([0x7F])  # (0, -1)
    eq((E.check_public(ident) is None, E.check_public(order2) is None), (False, False), "small order")
