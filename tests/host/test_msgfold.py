"""Messages gathered into one string per module at build time (host/umeter/msgfold.py): every
moved literal reads back the same text, lines stay where they were, what runs at import or
is not a message is left alone, and the built package prints the same errors and log lines
on MicroPython as the source while holding less heap."""

from __future__ import annotations

import ast
from pathlib import Path

from builtrun import package, run_main, run_on_build

from umeter import unixport
from umeter.build import build
from umeter.msgfold import NAME, fold_messages, messages

MOD = """\
# a module with messages
import sys

TOPIC = "a/long/topic/name"  # module level: runs at import, kept
if len(sys.argv) > 99:
    raise SystemExit("module-level message kept")


def check(x, log=print):
    if x < 0:
        raise ValueError("x must be 0 or more, not %r" % x)
    if x > 100:
        raise ValueError(f"x is {x}, over the limit")  # an f-string: kept
    log("checked %d, under the limit" % x)
    log("short one")  # 9 characters: interned by the compiler, kept
    print("checked " "%d again" % x)  # implicit concatenation, one line
    d = {"a_long_dict_key": 1}  # not a message: kept
    if x == 7:
        raise KeyError("x must be 0 or more, not %r" % x)  # the same text: the same slice
    if x == 8:
        raise ValueError(
            "a message on its own line of a multi-line raise"
        )
    if x == 9:
        raise ValueError("one literal "
                         "over two lines: kept")
    return d, b"some long bytes here"
"""

MAIN = """\
import sys
from meternode import m
for x in (3, -1, 7, 8, 9, 101):
    try:
        print(m.check(x))
    except Exception as e:
        print(type(e).__name__, e)
try:
    m.check(-2)
except ValueError as e:
    sys.print_exception(e)
"""


def _slices(text: str) -> list[tuple[int, str]]:
    # (line, text) of each _MSGS[a:b] in a folded module, `_MSGS` evaluated from its binding
    tree = ast.parse(text)
    bound = next(
        n.value.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == NAME
    )
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Subscript) and getattr(n.value, "id", "") == NAME:
            out.append((n.lineno, n.col_offset, bound[n.slice.lower.value : n.slice.upper.value]))
    return [(ln, s) for ln, _, s in sorted(out)]


def test_fold_messages_moves_only_function_messages_and_keeps_lines() -> None:
    out = fold_messages(MOD)
    assert out is not None and out.count("\n") == MOD.count("\n")
    assert out.splitlines()[0].startswith(f"{NAME} = ") and out.splitlines()[0].endswith("# a module with messages")
    got = _slices(out)
    want = [(c.lineno, c.value) for c in messages(ast.parse(MOD))]
    assert got == want
    assert [s for _, s in got] == [
        "x must be 0 or more, not %r",
        "checked %d, under the limit",
        "checked %d again",
        "x must be 0 or more, not %r",
        "a message on its own line of a multi-line raise",
    ]
    bound = ast.parse(out).body[0].value.value
    assert bound.count("x must be 0 or more") == 1, "a repeated message is stored once"
    for kept in ('"a/long/topic/name"', '"module-level message kept"', 'f"x is {x}, over the limit"', '"short one"',
                 '"a_long_dict_key"', '"over two lines: kept"', 'b"some long bytes here"'):  # fmt: skip
        assert kept in out, kept
    # fewer than two messages, or the name taken: nothing to gain, left as it is
    assert fold_messages('def f():\n    raise ValueError("only one message here")\n') is None
    assert fold_messages(f'{NAME} = 1\ndef f():\n    raise ValueError("a message here" + "and another one")\n') is None


def test_every_firmware_message_reads_back_as_its_literal() -> None:
    root = unixport.firmware_root()
    moved = modules = 0
    for py in sorted((root / "meternode").rglob("*.py")):
        text = py.read_text()
        out = fold_messages(text)
        if out is None:
            continue
        modules += 1
        assert out.count("\n") == text.count("\n"), py
        want = [(c.lineno, c.value) for c in messages(ast.parse(text))]
        assert _slices(out) == want, py
        moved += len(want)
        compile(out, str(py), "exec")
    assert modules > 40 and moved > 250, (modules, moved)


def _tree(root: Path) -> Path:
    return package(root, {"m": MOD})


def _run(path: Path, tmp: Path) -> str:
    return run_main(path, MAIN, tmp)


def test_built_package_says_what_the_source_says_on_micropython(tmp_path) -> None:
    src = _tree(tmp_path / "fw")
    from_source = _run(src, tmp_path)
    built = build("sim", tmp_path / "out", src=src)
    from_build = _run(built.out / "lib", tmp_path)
    # the same lines but for the traceback's file name (the build's is the module name)
    assert [ln.split(",", 1)[-1] for ln in from_build.splitlines()] == [
        ln.split(",", 1)[-1] for ln in from_source.splitlines()
    ], (from_source, from_build)
    assert "ValueError x must be 0 or more, not -1" in from_build
    assert "KeyError x must be 0 or more, not 7" in from_build
    assert "checked 3 again" in from_build and "line 11, in check" in from_build


def test_firmware_built_with_messages_folded_holds_less(tmp_path) -> None:
    # the modules a node with the uplink and commands keeps, imported from both builds
    folded = build("sim", tmp_path / "f")
    plain = build("sim", tmp_path / "p", msgs=False)
    script = tmp_path / "q.py"
    script.write_text(
        "import gc\ngc.collect()\na = gc.mem_alloc()\n"
        "import meternode.node, meternode.link.service, meternode.link.commands, meternode.link.mqtt\n"
        "import meternode.link.outbox, meternode.store.log, meternode.supervisor, meternode.policy.service\n"
        "gc.collect()\nprint('held', gc.mem_alloc() - a)\n"
    )

    def held(out: Path) -> int:
        return int(run_on_build(out, script).split("held ")[1])

    hf, hp = held(folded.out), held(plain.out)
    assert hf < hp - 512, (hf, hp)
