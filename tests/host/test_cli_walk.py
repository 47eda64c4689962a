"""One rule for the whole CLI, held for every command there is: bad input — an unknown option, a
value of the wrong type, a file that does not exist, an output path that cannot be written —
ends in ONE line on stderr, `umeter: error: <what> — <hint>`, exit 1 (2 for usage errors), and
never a traceback.

The commands are discovered from the click tree, so a command added later is walked too. Every
case runs the real `umeter` entry point in a subprocess, with a private UMETER_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from umeter.cli import main_group

UMETER = [sys.executable, "-m", "umeter"]
CASE_TIMEOUT = 30  # s: every case is bad input, so a command must fail at once


def leaves(group: click.Group = main_group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if isinstance(cmd, click.Group):
            out += leaves(cmd, (*path, name))
        else:
            out.append(((*path, name), cmd))
    return out


COMMANDS = leaves()
IDS = [" ".join(p) for p, _ in COMMANDS]


def _ext(p: click.Parameter) -> str:
    return {"plot_path": ".png", "db": ".sqlite", "inventory": ".toml", "image": ".bin"}.get(p.name, ".out")


def _dummy(p: click.Parameter, tmp: Path) -> list[str]:
    """A value of the right type for a required parameter that is not the one under test
    (it may still be wrong for the command: then that is the one-line error we check)."""
    t = p.type
    if isinstance(t, click.Path):
        if t.dir_okay and not t.file_okay:
            d = tmp / f"dir-{p.name}"
            d.mkdir(exist_ok=True)
            return [str(d)]
        f = tmp / f"file-{p.name}{_ext(p)}"
        f.write_text("x = 1\n")
        return [str(f)]
    if isinstance(t, click.Choice):
        return [str(t.choices[0])]
    if isinstance(t, click.types.IntParamType | click.types.FloatParamType):
        return ["1"]
    if p.name == "broker":
        return ["mqtt://127.0.0.1:9"]  # nothing listens on the discard port
    return ["x"]


def _argv(path: tuple[str, ...], cmd: click.Command, tmp: Path, under_test: click.Parameter | None, value: str):
    """argv with `value` for `under_test` and a dummy for every other required parameter."""
    opts: list[str] = []
    args: list[str] = []
    for p in cmd.params:
        if p is under_test:
            v = [value]
        elif p.required:
            v = _dummy(p, tmp)
        else:
            continue
        if isinstance(p, click.Argument):
            args += v
        else:
            opts += [p.opts[0], *v]
    return [*path, *opts, "--", *args] if args else [*path, *opts]


RUNNER = Path(__file__).with_name("cli_runner.py")


def _env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    return dict(
        os.environ, UMETER_HOME=str(home), UMETER_FLEET_DB=str(home / "campaigns.sqlite"),
        UMETER_KEYSTORE=str(home / "keys"), NO_COLOR="1", XDG_RUNTIME_DIR=str(tmp / "run"),
    )  # fmt: skip


def run_many(argvs: list[list[str]], tmp: Path) -> list[tuple[list[str], subprocess.CompletedProcess]]:
    """Every command line through the real entry point (cli_runner.py forks one child each)."""
    cases = [{"argv": a, "cwd": str(tmp), "timeout": CASE_TIMEOUT} for a in argvs]
    r = subprocess.run(
        [sys.executable, str(RUNNER)], input=json.dumps(cases), capture_output=True, text=True,
        env=_env(tmp), timeout=CASE_TIMEOUT * len(cases) + 30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [
        (x["argv"], subprocess.CompletedProcess(x["argv"], x["rc"], x["stdout"], x["stderr"]))
        for x in json.loads(r.stdout)
    ]


def _problems(argv: list[str], r: subprocess.CompletedProcess, usage: bool = False) -> list[str]:
    """What is wrong with how a command reported bad input ([] when it followed the rule)."""
    cmd = "umeter " + " ".join(argv)
    if r.returncode == -1:
        return [f"{cmd}: still running after {CASE_TIMEOUT} s on bad input"]
    text = r.stdout + r.stderr
    if "Traceback" in text:
        return [f"{cmd}: traceback\n{r.stderr[-1500:]}"]
    if r.returncode == 0:
        return []  # accepted (e.g. it made the missing directory): nothing to report
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln.lower()]
    lines = r.stderr.strip().splitlines()
    out = []
    if r.returncode not in ((2,) if usage else (1, 2)):
        out.append(f"{cmd}: exit {r.returncode}")
    if len(errors) != 1 or not lines or lines[-1] != errors[0]:
        out.append(f"{cmd}: stderr is not one error line at the end:\n{r.stderr[-800:]}")
    elif not errors[0].startswith("umeter: error: ") or " — " not in errors[0]:
        out.append(f"{cmd}: not `umeter: error: <what> — <hint>`: {errors[0]}")
    if "Usage:" in r.stderr:
        out.append(f"{cmd}: printed click's usage block")
    return out


_PATHLIKE = ("db", "out", "output", "plot", "file", "dir", "keystore", "inventory", "ca", "drive", "image", "list")


def _names_a_path(p: click.Parameter) -> bool:
    """A plain string option that takes a file name (e.g. monitor's --db)."""
    return isinstance(p.type, click.types.StringParamType) and any(w in (p.name or "") for w in _PATHLIKE)


def _cases(path, cmd, tmp: Path) -> list[tuple[list[str], bool]]:
    """(argv, is a usage error) for every kind of bad input this command takes."""
    cases = [([*path, "--no-such-option"], True)]
    for p in cmd.params:
        t = p.type
        if isinstance(p, click.Option) and (p.is_flag or p.count or p.name in ("help",)):
            continue
        if isinstance(t, click.types.IntParamType | click.types.FloatParamType):
            cases.append((_argv(path, cmd, tmp, p, "not-a-number"), True))
        elif isinstance(t, click.Path) or isinstance(p, click.Argument) or _names_a_path(p):
            ext = _ext(p)
            if not (isinstance(t, click.Path) and not t.file_okay):  # a directory may be made: no case
                cases.append((_argv(path, cmd, tmp, p, str(tmp / "absent" / f"missing{ext}")), False))
            cases.append((_argv(path, cmd, tmp, p, f"/proc/nope/x{ext}"), False))  # cannot be made, even by root
    return cases


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_every_bad_input_is_one_line_with_a_hint_and_no_traceback(path, cmd, tmp_path):
    cases = _cases(path, cmd, tmp_path)
    runs = run_many([argv for argv, _ in cases], tmp_path)
    problems = [msg for (argv, r), (_, usage) in zip(runs, cases, strict=True) for msg in _problems(argv, r, usage)]
    assert not problems, "\n\n".join(problems)


def test_the_walk_sees_every_command_module():
    names = {p[0] for p, _ in COMMANDS}
    mods = {
        m.stem.replace("_", "-")
        for m in Path(main_group.commands["sim"].callback.__code__.co_filename).parent.glob("*.py")
    }
    assert mods - {"--init--"} <= names, "a module under umeter/cli is not registered as a command"
    assert {"sim", "logs", "accuracy", "provision", "vboard"} <= names


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (
            ["sim", "--nodes", "0"],
            "umeter: error: sim: Invalid value for '--nodes' / '-n': 0 is not in the range 1<=x<=64",
        ),
        (["sim", "--duration", "0"], "umeter: error: sim: Invalid value for '--duration': 0.0 is not in the range x>0"),
        (["nosuchcommand"], "umeter: error: No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, want, tmp_path):
    [(_, r)] = run_many([argv], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(want) and r.stderr.rstrip().endswith("--help`"), r.stderr
