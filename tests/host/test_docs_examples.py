"""The shell examples of README.md and docs/*.md run, as written, so a doc cannot drift from the
commands again.

Each document runs in its own scratch directory (the repository's folders linked in, a private
UMETER_HOME), its code blocks in order. In a shell block (no language, sh, bash, console) a
line is a command when it starts with `$ ` or, in a block without prompts, with a program
(`umeter`, `python`, `mpremote`, `sqlite3`, `pytest`); everything else is output or prose and
is not run. `# …` comments are dropped. A command must exit 0 with no traceback and no
`umeter: error:` line. A command that runs until Ctrl-C (`umeter sim` without `--duration`,
`umeter vboard start`, `umeter monitor` without `--seconds`, `umeter logs` without
`--duration`) runs until it has printed something and a few seconds more, then gets SIGINT and
must stop cleanly — at the next command, or at the end of its block when the block is marked
`together` (later commands use it).

Markers, in an HTML comment on the line before a block (invisible on the rendered page):
  <!-- docs-test: skip — why -->      the block is not run (hardware, a broker, the suite itself)
  <!-- docs-test: file NAME -->       the block is written to NAME (a TOML inventory, a policy)
  <!-- docs-test: together -->        long-running commands stay up until the block ends
  <!-- docs-test: exit N -->          the block's commands are meant to exit N (a failing point, say)
A runnable line with a placeholder (`…`, `[--opt]`, `<arg>`, `HOST:PORT`) fails the test: write
a real example, or mark the block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("umeter", "python", "python3", "mpremote", "sqlite3", "pytest")
SHELL = ("", "sh", "bash", "shell", "console")
PLACEHOLDER = re.compile(r"…|\[--|<[a-z][a-z _-]*>|HOST:PORT|mqtt://H:P")
LONG_RUNNING = (
    (re.compile(r"^umeter sim\b"), "--duration"),
    (re.compile(r"^umeter vboard start\b"), None),
    (re.compile(r"^umeter monitor\b"), "--seconds"),
    (re.compile(r"^umeter logs\b"), "--duration"),
    (re.compile(r"^umeter policy simulate\b"), None),
)
RUN_AFTER_READY_S = 2.0  # a long-running command keeps running this long after its first output
READY_TIMEOUT_S = 90.0
COMMAND_TIMEOUT_S = 240.0


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str
    marks: list[str] = field(default_factory=list)

    def mark(self, name: str) -> str | None:
        for m in self.marks:
            if m == name or m.startswith(name + " "):
                return m[len(name) :].strip(" —-") or name
        return None

    def commands(self) -> list[tuple[int, str]]:
        lines = self.text.splitlines()
        prompts = any(ln.startswith("$ ") for ln in lines)
        out = []
        k = -1
        while k + 1 < len(lines):
            k += 1
            ln = lines[k]
            first = k
            while ln.endswith("\\") and k + 1 < len(lines):  # a command continued on the next line
                k += 1
                ln = ln[:-1] + " " + lines[k].strip()
            if prompts:
                if not ln.startswith("$ "):
                    continue
                ln = ln[2:]
            elif ln.split(" ", 1)[0] not in PROGRAMS:
                continue
            cmd = strip_comment(ln).strip()
            if cmd:
                out.append((self.line + 1 + first, cmd))
        return out


def strip_comment(line: str) -> str:
    """The command without a trailing `# comment` (a # inside quotes stays)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k]
    return line


def blocks(doc: Path) -> list[Block]:
    out: list[Block] = []
    lines = doc.read_text().splitlines()
    k = 0
    while k < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[k])
        if not m:
            k += 1
            continue
        start = k
        k += 1
        body = []
        while k < len(lines) and not lines[k].startswith("```"):
            body.append(lines[k])
            k += 1
        marks = []
        j = start - 1
        while j >= 0 and (c := re.match(r"^<!-- docs-test: (.*?) -->$", lines[j])):
            marks.insert(0, c.group(1).strip())
            j -= 1
        out.append(Block(doc, start + 1, m.group(1), "\n".join(body) + "\n", marks))
        k += 1
    return out


def _long_running(cmd: str) -> bool:
    return any(rx.search(cmd) and (flag is None or flag not in cmd) for rx, flag in LONG_RUNNING)


def _scratch(tmp: Path) -> tuple[Path, dict[str, str]]:
    work = tmp / "work"
    work.mkdir()
    for name in ("host", "firmware", "boards", "hil", "tests", "benchmarks", "docs", "README.md", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    bin_dir = str(Path(sys.executable).parent)
    env = dict(
        os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), UMETER_HOME=str(tmp / "home"),
        UMETER_FLEET_DB=str(tmp / "home" / "campaigns.sqlite"), XDG_RUNTIME_DIR=str(tmp / "run"), NO_COLOR="1",
        COLUMNS="100", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    env.pop("UMETER_KEYSTORE", None)
    (tmp / "run").mkdir()
    return work, env


def _problem(where: str, cmd: str, rc: int | None, out: str, err: str, ok_codes=(0,)) -> str | None:
    text = out + err
    if "Traceback (most recent call last)" in text:
        return f"{where}: `{cmd}` printed a traceback:\n{err[-2000:]}"
    if "umeter: error:" in err:
        return f"{where}: `{cmd}` failed: {next(ln for ln in err.splitlines() if 'umeter: error:' in ln)}"
    if rc not in ok_codes:
        return f"{where}: `{cmd}` exited {rc}:\n{(err or out)[-1500:]}"
    return None


class _Background:
    """A long-running command: started, given time to show it works, then stopped with SIGINT."""

    def __init__(self, where: str, cmd: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.where, self.cmd = where, cmd
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        self.proc = subprocess.Popen(
            ["bash", "-c", cmd], cwd=cwd, env=env, stdout=self.out.open("w"), stderr=self.err.open("w"),
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self) -> str | None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self.stop()  # it ended by itself: judge it as any command
            if self.out.stat().st_size or self.err.stat().st_size:
                # keep it going a little, then check it is still healthy
                until = time.monotonic() + RUN_AFTER_READY_S
                while time.monotonic() < until and self.proc.poll() is None:
                    time.sleep(0.1)
                if self.proc.poll() is not None:
                    return self.stop()
                return None
            time.sleep(0.1)
        return f"{self.where}: `{self.cmd}` printed nothing in {READY_TIMEOUT_S:.0f} s"

    def stop(self) -> str | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                return f"{self.where}: `{self.cmd}` did not stop on Ctrl-C"
        out, err = self.out.read_text(errors="replace"), self.err.read_text(errors="replace")
        # stopped by Ctrl-C: 0 (the command handles it) or 130 (interrupted)
        return _problem(self.where, self.cmd, self.proc.returncode, out, err, ok_codes=(0, 130))


def run_doc(doc: Path, tmp: Path) -> tuple[list[str], int]:
    work, env = _scratch(tmp)
    problems: list[str] = []
    ran = 0
    for b in blocks(doc):
        name = b.mark("file")
        if name and name != "file":
            (work / name).write_text(b.text)
            continue
        if b.lang not in SHELL or b.mark("skip"):
            continue
        background: list[_Background] = []
        for lineno, cmd in b.commands():
            where = f"{doc.relative_to(ROOT)}:{lineno}"
            if PLACEHOLDER.search(cmd):
                problems.append(f"{where}: `{cmd}` has a placeholder: write a real example or mark the block")
                continue
            prog = cmd.split()[0]
            if shutil.which(prog, path=env["PATH"]) is None:
                problems.append(f"{where}: `{prog}` is not installed here")
                continue
            if not b.mark("together"):
                problems += [p for bg in background if (p := bg.stop())]
                background = []
            ran += 1
            if _long_running(cmd):
                bg = _Background(where, cmd, work, env, tmp / f"bg{ran}")
                p = bg.wait_ready()
                if p:
                    problems.append(p)
                elif bg.proc.poll() is None:
                    background.append(bg)
                continue
            try:
                r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=work, env=env, capture_output=True,
                                   text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL)  # fmt: skip
            except subprocess.TimeoutExpired:
                problems.append(f"{where}: `{cmd}` still running after {COMMAND_TIMEOUT_S:.0f} s")
                continue
            want = int(b.mark("exit") or 0)
            if want:  # meant to fail: with that code, one error line, no traceback
                if r.returncode != want or "Traceback" in r.stdout + r.stderr:
                    problems.append(f"{where}: `{cmd}` exited {r.returncode}, the doc says {want}:\n{r.stderr[-800:]}")
            elif p := _problem(where, cmd, r.returncode, r.stdout, r.stderr):
                problems.append(p)
        problems += [p for bg in background if (p := bg.stop())]
    return problems, ran


@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_the_shell_examples_run_as_written(doc, tmp_path):
    problems, ran = run_doc(doc, tmp_path)
    assert not problems, "\n\n".join(problems)
    runnable = [c for b in blocks(doc) if b.lang in SHELL and not b.mark("skip") for c in b.commands()]
    assert ran == len(runnable)


def test_markers_and_commands_are_read_as_documented(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n<!-- docs-test: skip — needs a board -->\n```\numeter flash --port /dev/ttyUSB0\n```\n"
        "<!-- docs-test: file a.toml -->\n```toml\nx = 1\n```\n"
        "```sh\numeter sim --duration 1   # a comment\nnode-01 house V=231\n```\n"
        "```\n$ umeter build --board sim\nBuilt 58 files\n```\n"
        "```\numeter sim -n 2 \\\n    --duration 3\n```\n"
    )
    b = blocks(doc)
    assert [x.mark("skip") for x in b] == ["needs a board", None, None, None, None]
    assert b[0].mark("exit") is None
    assert b[1].mark("file") == "a.toml"
    assert [c for _, c in b[2].commands()] == ["umeter sim --duration 1"]
    assert [c for _, c in b[3].commands()] == ["umeter build --board sim"]
    assert b[4].commands() == [(b[4].line + 1, "umeter sim -n 2  --duration 3")]
    assert strip_comment("sqlite3 m.sqlite \"select '#x'\"  # why") == "sqlite3 m.sqlite \"select '#x'\"  "
    assert _long_running("umeter sim -n 2") and not _long_running("umeter sim --duration 3")
    assert PLACEHOLDER.search("umeter monitor [--json]") and PLACEHOLDER.search("umeter decode lora 2107…")
    assert not PLACEHOLDER.search("umeter sim --broker mqtt://127.0.0.1:1883")
