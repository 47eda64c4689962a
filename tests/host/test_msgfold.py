"""Messages moved out of the modules at build time (host/umeter/msgfold.py): into one string per
module (frozen modules) or the package's msgs.txt, read when used (`.mpy` files, the build's
default). Every moved literal reads back the same text, lines stay where they were, what runs
at import or is not a message is left alone, the built package prints the same errors and log
lines on MicroPython as the source (from files, from a ROMFS image, frozen texts) while
holding less heap, and a node whose msgs.txt is gone still reports each error."""

from __future__ import annotations

import ast
from pathlib import Path

from builtrun import package, run_main, run_on_build

from umeter import romfs, unixport
from umeter.build import build
from umeter.msgfold import BOOK_FILE, NAME, Book, fold_messages, messages

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
    if x == 10:
        return {"ok": False, "why": "refused: a reason handed back", "status": "rejected here"}
    if x == 11:
        d["error"] = "gone: a reason set by key"
        d["state"] = "a long state value kept"
        why = "stalled: a reason in a variable %d" % x
        d["why"] = why
    if x == 12:
        try:
            d["buf"] = bytearray(x)
        except MemoryError:  # the heap has run out: what the handler says stays in RAM
            log("no room for the buffer: kept in RAM")
        d["why"] = d.get("a_key_read_on_the_way") or "unknown"  # a key read on the way: kept
    return d, b"some long bytes here"
"""

MAIN = """\
import sys
from meternode import m
for x in (3, -1, 7, 8, 9, 10, 11, 12, 101):
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
        "refused: a reason handed back",
        "gone: a reason set by key",
        "stalled: a reason in a variable %d",
    ]
    bound = ast.parse(out).body[0].value.value
    assert bound.count("x must be 0 or more") == 1, "a repeated message is stored once"
    for kept in ('"a/long/topic/name"', '"module-level message kept"', 'f"x is {x}, over the limit"', '"short one"',
                 '"a_long_dict_key"', '"over two lines: kept"', 'b"some long bytes here"', '"rejected here"',
                 '"a long state value kept"', '"no room for the buffer: kept in RAM"',
                 '"a_key_read_on_the_way"'):  # fmt: skip
        assert kept in out, kept
    # fewer than two messages, or the name taken: nothing to gain, left as it is
    assert fold_messages('def f():\n    raise ValueError("only one message here")\n') is None
    assert fold_messages(f'{NAME} = 1\ndef f():\n    raise ValueError("a message here" + "and another one")\n') is None


def _calls(text: str, book: Book) -> list[tuple[int, str]]:
    # (line, text) of each _MSGS(a, b) in a module folded with a book
    out = []
    for n in ast.walk(ast.parse(text)):
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == NAME:
            out.append((n.lineno, n.col_offset, book.text(n.args[0].value, n.args[1].value)))
    return [(ln, s) for ln, _, s in sorted(out)]


def test_with_a_book_messages_leave_the_module_for_one_file() -> None:
    book = Book()
    out = fold_messages(MOD, book)
    assert out.count("\n") == MOD.count("\n")
    assert out.splitlines()[0] == f"from meternode import msg as {NAME}  # a module with messages"
    assert _calls(out, book) == [(c.lineno, c.value) for c in messages(ast.parse(MOD))]
    assert "x must be 0 or more" not in out and '"a/long/topic/name"' in out and 'f"x is' in out
    # a text in two modules is in the file once; a module with one message is folded too
    one = fold_messages('def f():\n    raise ValueError("x must be 0 or more, not %r" % 1)\n', book)
    assert one.startswith(f"def f():\n    raise ValueError({NAME}(") and book.data.count(b"x must be 0") == 1
    assert fold_messages("def f():\n    return 1\n", book) is None


def test_every_firmware_message_reads_back_as_its_literal() -> None:
    root = unixport.firmware_root()
    moved = modules = 0
    book = Book()
    for py in sorted((root / "meternode").rglob("*.py")):
        text = py.read_text()
        want = [(c.lineno, c.value) for c in messages(ast.parse(text))]
        into_book = fold_messages(text, book)
        if into_book is not None:
            assert into_book.count("\n") == text.count("\n"), py
            assert _calls(into_book, book) == want, py
            compile(into_book, str(py), "exec")
        out = fold_messages(text)
        if out is None:
            continue
        modules += 1
        assert out.count("\n") == text.count("\n"), py
        assert _slices(out) == want, py
        moved += len(want)
        compile(out, str(py), "exec")
    assert modules > 40 and moved > 250, (modules, moved)
    assert 10_000 < len(book.data) < moved * 60, len(book.data)  # each text once


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


def test_without_its_messages_file_a_built_package_still_reports_each_error(tmp_path) -> None:
    # msgs.txt lost or unreadable: each message names its place in the file (which the build's
    # copy turns back into the text) and takes its arguments; no error becomes another
    built = build("sim", tmp_path / "out", src=_tree(tmp_path / "fw"))
    book = Book()
    book.data += (built.out / "lib" / "meternode" / BOOK_FILE).read_bytes()
    (built.out / "lib" / "meternode" / BOOK_FILE).unlink()
    out = _run(built.out / "lib", tmp_path)
    line = next(ln for ln in out.splitlines() if ln.startswith("ValueError message "))
    assert line.endswith(" (msgs.txt unreadable) -1"), out
    a, b = (int(x) for x in line.split()[2].split(".."))
    assert book.text(a, b) == "x must be 0 or more, not %r"
    assert "(msgs.txt unreadable) 3" in out and "line 11, in check" in out  # a log line, the traceback


def test_a_repeated_message_is_read_from_the_file_once(tmp_path) -> None:
    # a flood of one rejection (forged commands) must not read flash for each: the last
    # message read is kept; another message is read again
    built = build("sim", tmp_path / "out", src=_tree(tmp_path / "fw"))
    data = (built.out / "lib" / "meternode" / BOOK_FILE).read_bytes()
    one, two = (
        (data.index(t.encode()), data.index(t.encode()) + len(t))
        for t in ("x must be 0 or more, not %r", "checked %d, under the limit")
    )
    script = tmp_path / "q.py"
    script.write_text(
        "import os, meternode\n"
        f"print(meternode.msg{one} % 1)\n"
        f"os.remove(meternode.__file__.rsplit('/', 1)[0] + '/{BOOK_FILE}')\n"
        f"print(meternode.msg{one} % 2)\n"
        f"print(meternode.msg{two} % 3)\n"
    )
    out = run_on_build(built.out, script).splitlines()
    assert out[:2] == ["x must be 0 or more, not 1", "x must be 0 or more, not 2"], out
    assert out[2] == f"message {two[0]}..{two[1]} (msgs.txt unreadable) 3", out


def test_frozen_texts_and_a_romfs_image_say_what_the_source_says(tmp_path) -> None:
    src = _tree(tmp_path / "fw")
    from_source = _run(src, tmp_path)
    built = build("sim", tmp_path / "out", src=src, romfs=True, freeze=True)
    # frozen: every module's messages in its own string (no msgs.txt in a firmware image)
    frozen = _run(built.out / "frozen", tmp_path)
    assert [ln.split(",", 1)[-1] for ln in frozen.splitlines()] == [
        ln.split(",", 1)[-1] for ln in from_source.splitlines()
    ]
    # ROMFS: msgs.txt is in the image, read in place like the code
    mount = (  # on MAIN's first line, so the script's line numbers stay
        f"import sys, vfs; buf = open({str(built.out / 'romfs.img')!r}, 'rb').read(); "
        "vfs.mount(vfs.VfsRom(buf), '/rom'); sys.path.insert(0, '/rom/lib')"
    )
    assert MAIN.startswith("import sys\n")
    rom = run_main(tmp_path / "nothing", mount + MAIN[len("import sys") :], tmp_path)
    assert [ln.split(",", 1)[-1] for ln in rom.splitlines()] == [
        ln.split(",", 1)[-1] for ln in from_source.splitlines()
    ], rom
    assert "unreadable" not in rom and "x must be 0 or more, not -1" in rom  # MICROPYPATH: nothing
    assert f"lib/meternode/{BOOK_FILE}" in romfs.read_image((built.out / "romfs.img").read_bytes())


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
