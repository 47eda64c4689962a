"""The unix port's argument limit: a command-line argument or MICROPYPATH entry longer than 255
bytes aborts it with "FATAL: uncaught NLR" and nothing else; umeter.unixport refuses such a
command up front with an error that names the argument and what to do."""

import os
import subprocess

import pytest

from umeter import unixport
from umeter.errors import ConfigError

LIMIT = unixport.ARG_MAX_BYTES


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def test_the_port_aborts_past_the_limit_and_runs_at_it():
    # What the check stands on: if a later port takes longer arguments, this fails and the
    # check can go.
    mp = unixport.micropython_path()
    ok = _run([mp, "-c", "import sys; print(len(sys.argv[1]))", "x" * LIMIT])
    assert ok.returncode == 0 and ok.stdout.split() == [str(LIMIT)], ok.stdout + ok.stderr
    bad = _run([mp, "-c", "print(1)", "x" * (LIMIT + 1)])
    assert bad.returncode != 0 and "uncaught NLR" in bad.stdout + bad.stderr


def test_a_long_micropypath_entry_aborts_the_port_too(tmp_path):
    deep = tmp_path / ("d" * (LIMIT + 1 - len(str(tmp_path)) - 1))
    deep.mkdir()
    assert len(str(deep)) == LIMIT + 1
    (deep / "m.py").write_text("X = 7\n")
    mp = unixport.micropython_path()
    r = _run([mp, "-c", "import m; print(m.X)"], env=dict(os.environ, MICROPYPATH=str(deep)))
    assert r.returncode != 0 and "uncaught NLR" in r.stdout + r.stderr
    with pytest.raises(ConfigError, match=r"a MICROPYPATH entry is 256 bytes long"):
        unixport.micropypath(deep)


def test_command_names_the_argument_that_is_too_long(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys; print(sys.argv[1][-3:])\n")
    argv = unixport.command(script, "a" * (LIMIT - 3) + "end")  # at the limit: runs
    r = _run(argv)
    assert r.returncode == 0 and r.stdout.strip() == "end", r.stdout + r.stderr
    with pytest.raises(ConfigError, match=r"argument 2 is 256 bytes long") as e:
        unixport.command(script, "ok", "b" * (LIMIT + 1))
    assert "shorter path" in e.value.hint
    # bytes, not characters: 128 two-byte characters are 256 bytes
    with pytest.raises(ConfigError, match=r"argument 1 is 256 bytes long"):
        unixport.command(script, "é" * 128)
    with pytest.raises(ConfigError, match=r"the script's path is \d+ bytes long"):
        unixport.command(tmp_path / ("s" * LIMIT + ".py"))
