"""Small-order and non-canonical Ed25519 public keys (issue 10, row 12): the node's verify,
the host's `cryptography`-backed verify (fleet simulator) and the node's config check all
refuse them, while `cryptography` (OpenSSL) alone accepts a forged signature under some."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meternode.policy import bundle, ed25519
from meternode.policy.agent import check_identity
from umeter.signing import crypto_verify, public_raw

P = (1 << 255) - 19


def _enc(y: int, sign: int) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


def _small_order_encodings() -> list[bytes]:
    # The 8 points of order dividing 8, canonically encoded (found by multiplying points by L).
    pts = set()
    for seed in range(40):
        for sign in (0, 1):
            pt = ed25519.decode_point(_enc(int.from_bytes(hashlib.sha256(bytes([seed])).digest(), "little") % P, sign))
            if pt is None:
                continue
            q = ed25519._double_mul(0, ed25519._L, pt)  # [L]pt: its torsion component
            pts.add(ed25519.encode_point(q))
    assert len(pts) == 8, len(pts)
    return sorted(pts)


def _non_canonical_encodings() -> list[bytes]:
    # y >= p (y - p + p for the 19 values below 2**255), and x = 0 with the sign bit set
    out = [_enc(y, s) for y in range(P, 1 << 255) for s in (0, 1)]
    out += [_enc(1, 1), _enc(P - 1, 1)]  # the two points with x = 0, sign bit 1
    return out


SMALL = _small_order_encodings()
NONCANON = _non_canonical_encodings()


def _forged_under_identity(msg: bytes) -> bytes:
    # With A = identity, [S]B - [k]A = [S]B: R = encode([S]B) passes for any message.
    s = 12345
    return ed25519.encode_point(ed25519._double_mul(s, 0, ed25519._B)) + s.to_bytes(32, "little")


def test_openssl_alone_accepts_a_forged_signature_under_the_identity_key():
    # why the host checks keys itself: `cryptography` verifies this forgery
    ident = _enc(1, 0)
    sig = _forged_under_identity(b"anything at all")
    Ed25519PublicKey.from_public_bytes(ident).verify(sig, b"anything at all")  # does not raise
    assert not ed25519.verify(ident, b"anything at all", sig)
    assert not crypto_verify(ident, b"anything at all", sig)


@pytest.mark.parametrize("key", SMALL + NONCANON, ids=lambda k: k.hex()[:8] + ".." + k.hex()[-4:])
def test_node_and_host_refuse_the_key_alike(key: bytes) -> None:
    msg = b"manifest digest"
    sig = _forged_under_identity(msg)
    assert ed25519.check_public(key) is not None
    assert ed25519.verify(key, msg, sig) is False
    assert crypto_verify(key, msg, sig) is False
    fleet = {"name": "f", "keys": {bundle.key_id(key): key.hex()}}
    with pytest.raises(ValueError, match="not a usable Ed25519 public key"):
        check_identity(fleet)


def test_real_keys_still_verify_on_both_sides():
    for seed in range(5):
        k = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"k%d" % seed).digest())
        pub = public_raw(k)
        sig = k.sign(b"m")
        assert ed25519.check_public(pub) is None
        assert ed25519.verify(pub, b"m", sig) and crypto_verify(pub, b"m", sig)
        assert not ed25519.verify(pub, b"n", sig) and not crypto_verify(pub, b"n", sig)
        check_identity({"name": "f", "keys": {bundle.key_id(pub): pub.hex()}})


def test_the_curve_constants_written_out_are_their_definitions() -> None:
    # ed25519.py writes its constants as literals (`_NAME = const()`: no global on the node);
    # CPython keeps them as globals, so each is checked against how RFC 8032 defines it.
    d = (-121665 * pow(121666, P - 2, P)) % P
    assert ed25519._P == P
    assert ed25519._L == (1 << 252) + 27742317777372353535851937790883648493
    assert (d, 2 * d % P) == (ed25519._D, ed25519._D2)
    assert pow(2, (P - 1) // 4, P) == ed25519._SQRT_M1
    by = 4 * pow(5, P - 2, P) % P
    x = ed25519._BX
    assert by == ed25519._BY and x % 2 == 0 and (-x * x + by * by - 1 - d * x * x * by * by) % P == 0
    assert (x, by, 1, x * by % P) == ed25519._B
