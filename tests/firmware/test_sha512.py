# SHA-512 (policy/sha512.py) against FIPS 180-4 examples, on the MicroPython unix port.
from binascii import hexlify

from meternode.policy.sha512 import sha512
from mptest import eq, raises

_ABC = (
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)


def test_sha512_fips_examples():
    eq(
        sha512(b"").hexdigest(),
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        "empty",
    )
    eq(sha512(b"abc").hexdigest(), _ABC, "abc")
    eq(
        sha512(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hexdigest(),
        "204a8fc6dda82f0a0ced7beb8e08a41657c16ef468b228a8279be331a703c335"
        "96fd15c13b1b07f9aa1d3bea57789ca031ad85c7a71dd70354ec631238ca3445",
        "448-bit message",
    )
    m = (
        b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
        b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"
    )
    eq(
        sha512(m).hexdigest(),
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909",
        "896-bit message",
    )


def test_sha512_padding_at_every_block_boundary():
    # Lengths around the 111/112-byte padding edge and the 128-byte block; the chained
    # digest was computed with CPython's hashlib.
    h = sha512()
    for n in (0, 1, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 1000):
        m = bytearray(n)
        for i in range(n):
            m[i] = (i * 7 + n) & 255
        h.update(sha512(m).digest())
    eq(
        h.hexdigest(),
        "1d4f4177cceaad946ca654d85c2ec7cfbc0a6c5ef6787882a1f03fce9366126f"
        "3eb251834f1ba6d73b2dbfe4ae2910db29f914dc064e5b63a8d3366e05a94393",
        "chained digests",
    )


def test_sha512_update_in_pieces_equals_one_shot():
    data = bytes(range(256)) * 3
    h = sha512()
    for i in range(0, len(data), 37):
        h.update(data[i : i + 37])
    eq(h.digest(), sha512(data).digest(), "37-byte pieces")
    eq(hexlify(sha512(b"a").update(b"bc").digest()).decode(), _ABC, "update returns self")
    d1 = h.digest()
    eq(h.digest(), d1, "digest does not consume the state")


def test_sha512_refuses_str():
    raises(TypeError, sha512, "abc")
