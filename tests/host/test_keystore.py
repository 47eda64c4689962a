"""Host keystore: 0600 file in a 0700 directory, secrets created once per node, refused when
readable by others."""

from __future__ import annotations

import os
import stat

import pytest

from umeter.errors import ConfigError
from umeter.keystore import Keystore, home


def test_secrets_are_created_once_and_stored_0600(tmp_path):
    ks = Keystore(tmp_path / "ks" / "keystore.json")
    a = ks.secrets_for("node-1")
    assert len(a["cmd_key"]) == 64 and int(a["cmd_key"], 16) >= 0
    assert len(a["mqtt_password"]) >= 24
    assert ks.secrets_for("node-1") == a
    assert ks.secrets_for("node-2") != a
    assert stat.S_IMODE(ks.path.stat().st_mode) == 0o600
    assert ks.nodes() == ["node-1", "node-2"]
    assert not list(ks.path.parent.glob("*.tmp"))


def test_rotate_replaces_the_secrets(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    a = ks.secrets_for("n")
    b = ks.rotate("n")
    assert a["cmd_key"] != b["cmd_key"] and ks.get("n") == b


def test_a_keystore_readable_by_others_is_refused(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    ks.secrets_for("n")
    os.chmod(ks.path, 0o644)
    with pytest.raises(ConfigError, match="readable by others") as e:
        ks.get("n")
    assert e.value.hint == f"chmod 600 {ks.path}"


def test_home_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("UMETER_HOME", str(tmp_path / "h"))
    assert home() == tmp_path / "h"
    assert stat.S_IMODE((tmp_path / "h").stat().st_mode) == 0o700


def test_two_processes_creating_keys_at_once_lose_none(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "keystore.json"
    code = (
        "import sys\nfrom umeter.keystore import Keystore\nks = Keystore(sys.argv[1])\n"
        "for k in range(25):\n    ks.secrets_for(sys.argv[2] + str(k))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), p]) for p in ("a", "b")]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert len(Keystore(path).nodes()) == 50
