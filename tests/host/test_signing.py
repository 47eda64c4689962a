"""The host keystore (mode 0600, refuses loose permissions) and signed envelopes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from meternode.policy.bundle import Rejected, Verifier
from umeter.errors import ConfigError, PolicyError
from umeter.signing import Keystore, crypto_verify, key_id, make_manifest, make_target, public_raw, sign_bundle


def test_keystore_creates_a_0600_key_and_loads_it(tmp_path: Path) -> None:
    ks = Keystore(tmp_path / "keys")
    k = ks.create("acme")
    p = ks.key_path("acme")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert public_raw(ks.load("acme")) == public_raw(k)
    with pytest.raises(ConfigError, match="already exists"):
        ks.create("acme")


def test_keystore_refuses_a_key_others_can_read(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    ks.create("acme")
    os.chmod(ks.key_path("acme"), 0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 644\)") as e:
        ks.load("acme")
    assert "chmod 600" in str(e.value)


def test_keystore_errors(tmp_path: Path) -> None:
    ks = Keystore(tmp_path)
    with pytest.raises(ConfigError, match="no key for fleet 'nope'"):
        ks.load("nope")
    with pytest.raises(ConfigError, match="bad fleet name"):
        ks.create("../etc")
    (tmp_path / "junk.key").write_text("not a key")
    os.chmod(tmp_path / "junk.key", 0o600)
    with pytest.raises(ConfigError, match="not a PEM private key"):
        ks.load("junk")


def test_envelope_verifies_with_the_firmware_code_and_the_cryptography_package(tmp_path: Path) -> None:
    k = Keystore(tmp_path).create("acme")
    files = {"a.py": b"print(1)\n", "lib/b.py": b"x = 2\n"}
    man = make_manifest("firmware", "acme", 4, files, make_target(all_nodes=True), key=k, now=1.8e9)
    env = sign_bundle(k, man, files)
    for check in (None, crypto_verify):
        v = Verifier(public_raw(k), "n1", "acme", sigcheck=check)
        got, _mtext, fs = v.verify(env, "firmware", 3, 1.8e9 + 10)
        assert got["version"] == 4 and fs == files and got["key"] == key_id(k)
    e = json.loads(env)
    e["m"] = e["m"].replace('"version":4', '"version":5')
    with pytest.raises(Rejected, match="bad signature"):
        Verifier(public_raw(k), "n1", "acme").verify(json.dumps(e).encode(), "firmware", 3, 1.8e9)


def test_manifest_errors_are_caught_on_the_host() -> None:
    with pytest.raises(PolicyError, match="version 0 must be a whole number >= 1"):
        make_manifest("policy", "acme", 0, {}, {"all": True})
    with pytest.raises(PolicyError, match=r"would be refused by nodes: malformed: file name '\.\./x'"):
        make_manifest("firmware", "acme", 1, {"../x": b""}, {"all": True})
    with pytest.raises(ConfigError, match="no target"):
        make_target()
