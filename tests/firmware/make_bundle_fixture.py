"""Writes tests/firmware/bundle_fixture.py: bundles signed on CPython (umeter.signing) for the
firmware tests, which run on MicroPython and cannot sign.  Deterministic (Ed25519 signatures
are): rerun after changing the bundle format, `python tests/firmware/make_bundle_fixture.py`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from umeter.policy import compact_bytes, compile_source
from umeter.signing import fleet_identity, make_manifest, make_target, sign_bundle

NOW = 1795388400  # 2026-11-23 00:00 UTC+1: the tests' clock
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"umeter test fleet key").digest())
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"someone else").digest())
FAR = 4102444800 - NOW  # valid until 2100
BIG_SIZE = 24576
MANY_N = 48


def many_name(k: int) -> str:
    return "lib/meternode/pkg%d/module_%03d.mpy" % (k % 5, k)


def many_file(k: int) -> bytes:
    return bytes((k * 7 + i * 13) & 255 for i in range(60 + 11 * k))


def _policy(name: str, peak: float) -> bytes:
    src = {
        "name": name,
        "tariffs": ["offpeak", "peak"],
        "seasons": [{"start": "01-01", "weekday": [["00:00", "offpeak"], ["17:00", "peak"], ["20:00", "offpeak"]]}],
        "prices": {"per_kwh": {"offpeak": 0.1, "peak": peak}},
    }
    return compact_bytes(compile_source(src))


def _pol(version, name, target=None, key=KEY, fleet="test", expires=FAR, files=None, campaign="c1", billing_tz=None):
    files = files or {"policy.json": _policy(name, 0.3 + version / 100)}
    man = make_manifest(
        "policy",
        fleet,
        version,
        files,
        target or make_target(nodes=["n1"]),
        key=key,
        expires_s=expires,
        now=NOW - 60,
        campaign=campaign,
        billing_tz=billing_tz,
    )
    return sign_bundle(key, man, files)


def _fw(version, files, campaign, build):
    # a firmware manifest for every node of the test fleet
    return make_manifest(
        "firmware",
        "test",
        version,
        files,
        make_target(all_nodes=True),
        key=KEY,
        expires_s=FAR,
        now=NOW,
        campaign=campaign,
        build=build,
    )


def render() -> str:
    """The fixture module's text (deterministic: Ed25519 signatures and the clock are fixed)."""
    out: dict[str, bytes] = {}
    out["POLICY_V2"] = _pol(2, "v2")
    out["POLICY_V2_MOVES_BILLING"] = _pol(2, "v2", billing_tz=0)  # the nodes bill in UTC from then on
    out["POLICY_V3_GROUP"] = _pol(3, "v3", make_target(groups=["north"]))
    out["POLICY_V1_OLD"] = _pol(1, "v1")
    out["POLICY_OTHER_NODE"] = _pol(4, "v4", make_target(nodes=["n2"]))
    out["POLICY_EXPIRED"] = _pol(5, "v5", expires=30)
    out["POLICY_OTHER_FLEET"] = _pol(6, "v6", fleet="other")
    out["POLICY_OTHER_KEY"] = _pol(7, "v7", key=OTHER)
    env = json.loads(_pol(8, "v8"))
    env["s"] = ""
    out["POLICY_UNSIGNED"] = json.dumps(env).encode()
    env = json.loads(_pol(9, "v9"))
    env["m"] = env["m"].replace('"version":9', '"version":99')
    out["POLICY_MANIFEST_EDITED"] = json.dumps(env).encode()
    env = json.loads(_pol(10, "v10"))
    good = env["f"]["policy.json"]
    import base64

    pol = json.loads(base64.b64decode(good))
    pol["p"][1] = 9.99
    env["f"]["policy.json"] = base64.b64encode(compact_bytes(pol)).decode()
    out["POLICY_FILE_EDITED"] = json.dumps(env).encode()
    bad = {"policy.json": b'{"f": 1, "n": "broken"}'}
    out["POLICY_BAD_SCHEMA"] = _pol(11, "x", files=bad)
    fw = {
        "meternode/__init__.py": b'VERSION = "9.0.0"\n',
        "meternode/extra/hello.py": b"def hello():\n    return 'new build'\n" * 40,
    }
    man = _fw(5, fw, "fw1", {"version": "9.0.0"})
    out["FIRMWARE_V5"] = sign_bundle(KEY, man, fw)
    out["FIRMWARE_V5_STREAMED"] = sign_bundle(KEY, man, {})
    image = bytes((i * 131 + (i >> 8)) & 255 for i in range(9000))  # a 9 kB "app image"
    man = _fw(6, {"app.bin": image}, "img6", {"version": "9.1.0", "image": "app"})
    out["IMAGE_V6"] = sign_bundle(KEY, man, {"app.bin": image})
    # a streamed build bigger than a small flash can hold beside its record log; the tests
    # make its bytes from the formula instead of carrying them
    big = bytes((i * 31 + 7) & 255 for i in range(BIG_SIZE))
    man = _fw(7, {"meternode/big.bin": big}, "big7", {"version": "9.2.0"})
    out["FIRMWARE_V7_BIG_STREAMED"] = sign_bundle(KEY, man, {})
    # a build of MANY_N files whose manifest (~6 KB) streams in chunks before them; the tests
    # make each file's bytes from many_file() instead of carrying them
    many = {many_name(k): many_file(k) for k in range(MANY_N)}
    man = _fw(8, many, "many8", {"version": "9.3.0", "files": {"not": "the manifest's files"}})
    out["FIRMWARE_V8_MANY_STREAMED"] = sign_bundle(KEY, man, {})
    fw_files = {k: v.hex() for k, v in fw.items()}
    fw_files["app.bin"] = image.hex()
    lines = [
        "# ruff: noqa: E501\n# Generated by make_bundle_fixture.py (CPython, umeter.signing) -- do not edit.",
        "NOW = %d" % NOW,
        "FLEET = %r" % fleet_identity(KEY, "test", ["north"]),
        "FW_FILES_HEX = %r" % fw_files,
        "BIG_SIZE = %d  # FIRMWARE_V7_BIG_STREAMED's meternode/big.bin: byte i = (i * 31 + 7) & 255" % BIG_SIZE,
        "MANY_N = %d  # FIRMWARE_V8_MANY_STREAMED's files: many_name(k) -> many_file(k), k < MANY_N" % MANY_N,
    ]
    for k, v in out.items():
        lines.append("%s = %r" % (k, v))
    return "\n".join(lines) + "\n"


def main() -> None:
    Path(__file__).with_name("bundle_fixture.py").write_text(render())


if __name__ == "__main__":
    main()
