"""`umeter.dr` without a node: the frames it writes checked against the format read with the
standard library (struct, hmac) rather than our own HMAC; the keystore's frame counters; and
each value the node would refuse refused on the host first, naming it."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import json
import struct
import sys
import time

import pytest

from umeter import dr, ui
from umeter.cli import main
from umeter.errors import ConfigError
from umeter.keystore import Keystore
from umeter.when import parse_when

KEY = bytes(range(32))
NOW = 1796000000


def _open(frame: bytes, node: str, key: bytes = KEY) -> tuple[int, int, bytes]:
    """-> (op, counter, body after the counter), after checking the tag with hmac."""
    body, tag = frame[:-8], frame[-8:]
    want = hmac.new(key, b"umeter-lora-v1" + node.encode() + body, hashlib.sha256).digest()[:8]
    assert hmac.compare_digest(tag, want), "tag is HMAC-SHA256 over domain + node id + frame, truncated to 8"
    assert body[0] >> 4 == 1, "format 1"
    return body[0] & 15, struct.unpack(">I", body[1:5])[0], body[5:]


def test_frames_carry_the_values_in_the_documented_layout() -> None:
    f = dr.price(0.4213, 7200).encode(KEY, "n7", 5)
    assert len(f) == 19
    op, ctr, body = _open(f, "n7")
    assert (op, ctr, struct.unpack(">IH", body)) == (1, 5, (4213, 120))
    f = dr.event(NOW + 600, 1800, 3, now=NOW).encode(KEY, "n7", 6)
    assert len(f) == 20
    op, ctr, body = _open(f, "n7")
    assert (op, ctr, struct.unpack(">IHB", body)) == (2, 6, (NOW + 600, 1800, 3))
    op, _, body = _open(dr.event(NOW, 60, now=NOW).encode(KEY, "n7", 7), "n7")
    assert body[-1] == 255, "no rule: every event rule"
    op, ctr, body = _open(dr.cancel().encode(KEY, "n7", 8), "n7")
    assert (op, ctr, body) == (3, 8, b"")
    with pytest.raises(AssertionError):
        _open(dr.cancel().encode(KEY, "n7", 8), "n8")  # the node id is under the tag


def test_keystore_frame_counters_go_up_by_one_per_node_and_survive_a_new_key(tmp_path) -> None:
    ks = Keystore(tmp_path / "ks.json")
    ks.secrets_for("a")
    assert [ks.next_frame_counter("a") for _ in range(3)] == [1, 2, 3]
    assert ks.next_frame_counter("b") == 1, "per node (b's key not here: kept apart)"
    assert Keystore(tmp_path / "ks.json").next_frame_counter("a") == 4, "kept in the file"
    ks.rotate("a")
    assert ks.next_frame_counter("a") == 5, "a new key keeps the node's counter"
    ks.set_frame_counter("a", 70000)
    assert ks.next_frame_counter("a") == 70001
    ks.set_frame_counter("a", 0xFFFFFFFF)
    with pytest.raises(ConfigError, match="frame counter space"):
        ks.next_frame_counter("a")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: dr.price(-0.1, 3600), "outside 0"),
        (lambda: dr.price(500000.0, 3600), "outside 0"),
        (lambda: dr.price(0.12345, 3600), "more than 4 decimals"),
        (lambda: dr.price(0.1, 90), "whole number of minutes"),
        (lambda: dr.price(0.1, 0), "whole number of minutes"),
        (lambda: dr.price(0.1, 0x10000 * 60), "whole number of minutes"),
        (lambda: dr.event(NOW, 0, now=NOW), "duration 0 s"),
        (lambda: dr.event(NOW, 70000, now=NOW), "duration 70000 s"),
        (lambda: dr.event(NOW, 60, 255, now=NOW), "rule 255"),
        (lambda: dr.event(NOW + 86401, 60, now=NOW), "more than a day ahead"),
        (lambda: dr.event(NOW - 3700, 60, now=NOW), "ended 3640 s ago"),
    ],
)
def test_what_the_node_would_refuse_is_refused_here(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_the_edges_the_node_takes_are_taken() -> None:
    assert dr.price(0, 60).values == (0, 1)
    assert dr.price(dr.PRICE_MAX, 0xFFFF * 60).values[1] == 0xFFFF
    assert dr.event(NOW + 86400, 0xFFFF, now=NOW).values == (NOW + 86400, 0xFFFF, 255)
    assert dr.event(NOW - 3600 - 60, 60, 0, now=NOW).values[2] == 0


def test_times(monkeypatch) -> None:
    assert parse_when("now", NOW) == NOW
    assert parse_when("+15m", NOW) == NOW + 900
    assert parse_when(str(NOW + 5), NOW) == NOW + 5
    utc16 = calendar.timegm((2026, 12, 8, 16, 0, 0))
    assert parse_when("2026-12-08T17:00+01:00", NOW) == utc16
    monkeypatch.setenv("TZ", "UTC-2")  # POSIX: two hours east of UTC
    time.tzset()
    try:
        assert parse_when("2026-12-08T18:00", NOW) == utc16, "no offset: this host's local time"
    finally:
        monkeypatch.undo()
        time.tzset()
    with pytest.raises(ConfigError, match="bad time 'tomorrow'"):
        parse_when("tomorrow", NOW)


def test_lora_downlinks_from_the_command_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("UMETER_HOME", str(tmp_path))
    monkeypatch.setattr(ui.out, "file", sys.stdout)  # (bound when ui was imported)
    monkeypatch.setattr(ui.err, "file", sys.stderr)
    ks = Keystore(tmp_path / "keystore.json")
    keys = {n: bytes.fromhex(ks.secrets_for(n)["cmd_key"]) for n in ("m1", "m2")}
    argv = ["policy", "price", "0.35", "--valid", "30m", "--node", "m1", "--node", "m2", "--lora", "--fport", "12"]
    assert main([*argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(d["node"], d["fport"], d["counter"]) for d in rows] == [("m1", 12, 1), ("m2", 12, 1)]
    for d in rows:
        f = bytes.fromhex(d["hex"])
        assert base64.b64decode(d["base64"]) == f
        op, ctr, body = _open(f, d["node"], keys[d["node"]])
        assert (op, ctr, struct.unpack(">IH", body)) == (1, d["counter"], (3500, 30))
    assert main(["policy", "cancel", "--node", "m1", "--lora"]) == 0
    out = capsys.readouterr()
    assert "cancel DR events: queue these as downlinks on port 10" in out.err
    line = out.out.strip()
    assert line.startswith("m1 counter 2: ")
    assert _open(bytes.fromhex(line.split()[3]), "m1", keys["m1"])[:2] == (3, 2)
    # a node the keystore has no key for, several nodes with one --key: refused before anything
    assert main(["policy", "cancel", "--node", "nokey", "--lora"]) == 1
    assert "no command key for node 'nokey'" in capsys.readouterr().err
    assert main(["policy", "cancel", "--node", "m1", "--node", "m2", "--key", "00" * 32, "--lora"]) == 1
    assert "--key is one node's key" in capsys.readouterr().err
    assert main(["policy", "price", "0.123456", "--node", "m1", "--lora"]) == 1
    assert "price 0.123456 has more than 4 decimals" in capsys.readouterr().err
    assert ks.get("m1")["lora_ctr"] == 2, "nothing taken by the refused ones"
