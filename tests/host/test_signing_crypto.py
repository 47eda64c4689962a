"""The firmware's pure SHA-512 and Ed25519 (imported on CPython) agree with hashlib and the
`cryptography` package on random keys and messages."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meternode.policy import ed25519
from meternode.policy.sha512 import sha512


def _raw_pub(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=700))
def test_sha512_matches_hashlib(data: bytes) -> None:
    assert sha512(data).digest() == hashlib.sha512(data).digest()


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=300))
def test_ed25519_accepts_what_cryptography_signs(seed: bytes, msg: bytes) -> None:
    k = Ed25519PrivateKey.from_private_bytes(seed)
    sig = k.sign(msg)
    assert ed25519.verify(_raw_pub(k), msg, sig)
    assert not ed25519.verify(_raw_pub(k), msg + b"!", sig)


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=1, max_size=100), st.integers(0, 511))
def test_ed25519_rejects_every_single_bit_flip(seed: bytes, msg: bytes, bit: int) -> None:
    k = Ed25519PrivateKey.from_private_bytes(seed)
    sig = bytearray(k.sign(msg))
    sig[bit // 8] ^= 1 << (bit % 8)
    assert not ed25519.verify(_raw_pub(k), msg, bytes(sig))
