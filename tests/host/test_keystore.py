"""Host keystore: 0600 file in a 0700 directory, secrets created once per node, refused when
readable by others."""

from __future__ import annotations

import json
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


def test_command_counters_rise_by_one_from_the_clock_and_survive_a_rotation(tmp_path):
    ks = Keystore(tmp_path / "keystore.json")
    ks.secrets_for("n")
    t = 1_800_000_000
    assert ks.next_counter("n", now=t) == t  # the first: the clock (a node at 0 takes up to 2**32)
    assert [ks.next_counter("n", now=t) for _ in range(3)] == [t + 1, t + 2, t + 3]  # one second, four
    assert ks.next_counter("n", now=t + 60) == t + 60  # later: the clock again
    ks.rotate("n")
    assert ks.next_counter("n", now=t) == t + 61, "a new key keeps the counter: the node keeps its highest"
    # a keystore restored from an old backup: its counter went back, the clock has not
    data = json.loads(ks.path.read_text())
    data["n"]["cmd_ctr"] = 7
    ks._save(data)
    assert ks.next_counter("n", now=t + 120) == t + 120
    # a node whose key was given on the command line: its counter in an entry of its own,
    # which never passes for the node's secrets
    assert ks.next_counter("m", now=t) == t and ks.next_counter("m", now=t) == t + 1
    assert ks.get("m") is None and "cmd_key" in ks.secrets_for("m")


def test_command_lines_become_the_ops_arguments_or_one_error_naming_what_is_wrong():
    from umeter.command import parse_args

    assert parse_args("set", ["telemetry_s", "30"]) == {"key": "telemetry_s", "value": 30}
    assert parse_args("set", ["telemetry_s", "0.5"]) == {"key": "telemetry_s", "value": 0.5}
    assert parse_args("relay", ["off"]) == {"on": False}
    assert parse_args("valve", ["cjt188-10-1", "close"]) == {"meter": "cjt188-10-1", "valve": "close"}
    assert parse_args("time", ["1800000000"]) == {"epoch": 1800000000}
    assert parse_args("status", []) == {}
    for op, words, what in [
        ("set", ["telemetry_s"], "set takes KEY VALUE, got 1 word"),
        ("set", ["telemetry_s", "fast"], "set value 'fast' is not a number"),
        ("relay", ["maybe"], "relay takes on or off, not 'maybe'"),
        ("time", ["tomorrow"], "time takes UNIX seconds or `now`"),
        ("valve", ["m", "shut"], "valve takes open or close, not 'shut'"),
        ("status", ["now"], "status takes no arguments, got 1 word"),
        ("format", [], "unknown command 'format'"),
    ]:
        with pytest.raises(ConfigError, match="^" + __import__("re").escape(what)):
            parse_args(op, words)
