"""`umeter policy` / `umeter ota` on the command line: results on stdout, one-line errors
naming the bad key with a hint, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

UMETER = [sys.executable, "-m", "umeter"]

SRC = """
name = "flat"
tariffs = ["std", "night"]
[[seasons]]
start = "01-01"
weekday = [["00:00", "night"], ["06:00", "std"]]
"""


def main(args: list[str], env: dict | None = None) -> int:
    global _last
    _last = subprocess.run([*UMETER, *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ))
    return _last.returncode


class _Out:
    # The last command's output, read like pytest's capsys (rich binds stdout at import, so
    # the CLI runs in a subprocess, as a user runs it).
    def readouterr(self):
        return type("Captured", (), {"out": _last.stdout, "err": _last.stderr})


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_validate_ok_and_json(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.toml", SRC)
    assert main(["policy", "validate", str(p)]) == 0
    out = _Out().readouterr().out
    assert "a.toml: ok — 'flat', 2 tariffs, 1 seasons" in out
    assert main(["policy", "validate", "--json", str(p)]) == 0
    assert json.loads(_Out().readouterr().out)["t"] == ["std", "night"]


def test_validate_bad_key_is_one_line_with_a_hint(tmp_path: Path) -> None:
    p = _write(tmp_path, "bad.toml", SRC.replace('"night"],', '"nite"],'))
    assert main(["policy", "validate", str(p)]) == 1
    err = _Out().readouterr().err.strip()
    assert err.startswith("umeter: error: ")
    assert "policy.seasons[0].weekday[0] tariff must be one of std/night, not 'nite'" in err
    assert err.endswith("see docs/policy.md for the policy format")
    assert len(err.splitlines()) == 1


def test_diff_keygen_sign_and_bad_usage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UMETER_KEYSTORE", str(tmp_path / "keys"))
    monkeypatch.setenv("NO_COLOR", "1")
    a = _write(tmp_path, "a.toml", SRC)
    b = _write(tmp_path, "b.toml", SRC.replace('"06:00"', '"07:00"'))
    assert main(["policy", "diff", str(a), str(b)]) == 0
    assert _Out().readouterr().out.strip() == (
        "season 01-01 weekday: 00:00=night 06:00=std  ->  00:00=night 07:00=std\n"
        "season 01-01 weekend: 00:00=night 06:00=std  ->  00:00=night 07:00=std\n"
        "season 01-01 holiday: 00:00=night 06:00=std  ->  00:00=night 07:00=std"
    )
    assert main(["policy", "keygen", "acme", "--group", "north"]) == 0
    ident = json.loads(_Out().readouterr().out)
    assert ident["name"] == "acme" and len(next(iter(ident["keys"].values()))) == 64
    out = tmp_path / "b.bundle"
    assert (
        main(["policy", "sign", str(b), "--fleet", "acme", "--version", "3", "--group", "north", "-o", str(out)]) == 0
    )
    assert "Signed policy 'flat' v3 for fleet acme" in _Out().readouterr().out
    m = json.loads(json.loads(out.read_bytes())["m"])
    assert (m["kind"], m["version"], m["target"]) == ("policy", 3, {"nodes": [], "groups": ["north"]})
    assert main(["policy", "diff", str(a), str(out)]) == 0  # bundles diff too
    _Out().readouterr()
    assert main(["policy", "sign", str(b), "--fleet", "acme", "--version", "4", "-o", str(out)]) == 1
    assert "no target — give --node, --group or --all" in _Out().readouterr().err
    assert main(["policy", "sign", str(b), "--fleet", "nokey", "--version", "4", "--all", "-o", str(out)]) == 1
    assert "umeter policy keygen nokey" in _Out().readouterr().err
    assert main(["policy", "sign", str(b), "--fleet", "acme", "--all", "-o", str(out)]) == 2  # --version missing


def test_a_policy_signed_to_move_the_billing_time_is_applied_by_a_node_in_another(tmp_path: Path, monkeypatch) -> None:
    # Almaty's nodes billed in UTC+6 until the country moved to UTC+5: the new policy, signed
    # with --move-billing-time, carries its time in the manifest; the firmware's agent on a
    # node billing in UTC+6 refuses it signed without, applies it signed with, and says so.
    from meternode import ticks
    from meternode.policy.agent import Agent

    monkeypatch.setenv("UMETER_KEYSTORE", str(tmp_path / "keys"))
    monkeypatch.setenv("NO_COLOR", "1")
    src = _write(tmp_path, "kz.toml", "utc_offset_min = 300\n" + SRC)
    assert main(["policy", "keygen", "acme"]) == 0
    ident = json.loads(_Out().readouterr().out)
    plain, moving = tmp_path / "plain.bundle", tmp_path / "moving.bundle"
    assert main(["policy", "sign", str(src), "--fleet", "acme", "--version", "2", "--all", "-o", str(plain)]) == 0
    assert "bill in" not in _Out().readouterr().err
    argv = ["policy", "sign", str(src), "--fleet", "acme", "--version", "2", "--all", "-o", str(moving)]
    assert main([*argv, "--move-billing-time"]) == 0
    assert "nodes that apply it bill in UTC+05:00 from then on" in _Out().readouterr().err
    man = json.loads(json.loads(moving.read_bytes())["m"])
    assert man["billing_tz"] == 300 and "billing_tz" not in json.loads(json.loads(plain.read_bytes())["m"])

    class Clock:
        def time(self):
            import time

            return time.time()

    events: list = []
    agent = Agent("kz1", ident, str(tmp_path / "node"), Clock(), event=lambda k, t: events.append(t))
    ticks.LOCAL_S = 360 * 60
    try:
        r = agent.handle_policy(plain.read_bytes())
        assert r["why"] == (
            "bad policy: utc_offset_min 300, the node bills in 360 (to move it there: sign with --move-billing-time)"
        )
        r = agent.handle_policy(moving.read_bytes())
    finally:
        ticks.LOCAL_S = 0
    assert (r["ok"], r["status"], r["version"]) == (True, "applied", 2)
    assert "billing time 300 min, was 360" in events


def test_ota_sign_checks_the_build_manifest(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UMETER_KEYSTORE", str(tmp_path / "keys"))
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["policy", "keygen", "acme"]) == 0
    build = tmp_path / "build"
    (build / "meternode").mkdir(parents=True)
    (build / "meternode" / "__init__.py").write_text('VERSION = "2.0"\n')
    import hashlib

    h = hashlib.sha256(b'VERSION = "2.0"\n').hexdigest()
    (build / "manifest.json").write_text(
        json.dumps({"version": "2.0", "files": {"meternode/__init__.py": {"sha256": h, "size": 16}}})
    )
    out = tmp_path / "fw.bundle"
    assert main(["ota", "sign", str(build), "--fleet", "acme", "--version", "2", "--all", "-o", str(out)]) == 0
    m = json.loads(json.loads(out.read_bytes())["m"])
    assert (m["kind"], m["build"], list(m["files"])) == ("firmware", {"version": "2.0"}, ["meternode/__init__.py"])
    (build / "meternode" / "__init__.py").write_text('VERSION = "2.1"\n')
    _Out().readouterr()
    assert main(["ota", "sign", str(build), "--fleet", "acme", "--version", "3", "--all", "-o", str(out)]) == 1
    assert "does not match the build manifest's hash" in _Out().readouterr().err


def test_ota_sign_an_app_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UMETER_KEYSTORE", str(tmp_path / "keys"))
    assert main(["policy", "keygen", "acme"]) == 0
    img = tmp_path / "micropython-1.29.bin"
    img.write_bytes(b"\xe9" + bytes(4000))
    out = tmp_path / "img.bundle"
    assert main(["ota", "sign", str(img), "--fleet", "acme", "--version", "7", "--all", "-o", str(out)]) == 0
    m = json.loads(json.loads(out.read_bytes())["m"])
    assert m["build"] == {"version": "micropython-1.29", "image": "app"}
    assert list(m["files"]) == ["micropython-1.29.bin"] and m["files"]["micropython-1.29.bin"]["size"] == 4001


def test_ota_sign_of_a_directory_that_is_not_a_build_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("UMETER_KEYSTORE", str(tmp_path / "keys"))
    assert main(["policy", "keygen", "acme"]) == 0
    junk = tmp_path / "tmpdir"
    (junk / "sub").mkdir(parents=True)
    (junk / "sub" / "notes.txt").write_text("x")
    (junk / "a.py").write_text("x = 1\n")
    out = tmp_path / "x.bundle"
    assert main(["ota", "sign", str(junk), "--fleet", "acme", "--version", "1", "--all", "-o", str(out)]) == 1
    err = _Out().readouterr().err
    assert err.strip() == (
        f"umeter: error: {junk} is not a build directory (no manifest.json, and it holds files that are not firmware "
        "modules, e.g. sub/notes.txt) — give the output directory of `umeter build`, or an app image .bin"
    )
    assert not out.exists()
