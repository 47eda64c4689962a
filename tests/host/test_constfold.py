"""Cross-module constant folding at build time (host/umeter/constfold.py): the built package
behaves as the source does on MicroPython, interns fewer names, and keeps its line numbers;
names read in ways the folder cannot see keep their globals."""

from __future__ import annotations

from pathlib import Path

from builtrun import package, run_main, run_on_build

from umeter.build import build
from umeter.constfold import fold

A = """\
from micropython import const

X = const(5)
Y = const(7)
Z = const(9)
W = const(11)
_P = const(1)
_Y = const(3)  # a private name taken: Y becomes another one


def total():
    return X + Y + Z + W + _Y
"""
B = """\
from meternode import a
from meternode.a import (
    X,
    total,
)


def f():
    return X * 100 + a.Y, total()


def boom():
    raise ValueError(a.Y)
"""
C = """\
import meternode.a


def g():
    return meternode.a.Z  # not an import-bound alias: Z keeps its global
"""
D = """\
from meternode.a import W


def h(W=3):  # W is also an argument here: not folded, W keeps its global
    return W
"""
E = """\
X = "own"  # this module's own X: not a.X


def k():
    return X
"""
MAIN = """\
import sys
from meternode import a, b, c, d, e
print("f", b.f())
print("g", c.g(), d.h(), d.h(4), e.k())
print("globals", sorted(k for k in ("X", "Y", "Z", "W", "_P") if hasattr(a, k)))
try:
    b.boom()
except ValueError as e:
    sys.print_exception(e)
"""


def _tree(root: Path) -> Path:
    return package(root, {"a": A, "b": B, "c": C, "d": D, "e": E})


def _run(path: Path, tmp: Path) -> str:
    return run_main(path, MAIN, tmp)


def test_fold_rewrites_reads_and_keeps_lines() -> None:
    mods = {"meternode": "", "meternode.a": A, "meternode.b": B, "meternode.c": C, "meternode.d": D, "meternode.e": E}
    out = fold(mods, {"meternode"})
    b = out["meternode.b"]
    assert "return 5 * 100 + 7, total()" in b  # both forms of read folded
    assert "from meternode.a import total" in b  # the constant left the import list
    assert b.count("\n") == B.count("\n")  # a multi-line import keeps its lines
    a = out["meternode.a"]
    # nobody reads X or Y unfolded: private now (the compiler erases them); Z and W are
    # read in ways the folder leaves alone (a package attribute chain, a shadowing argument)
    assert "_X = const(5)" in a and "_Y_ = const(7)" in a and "_Y = const(3)" in a
    assert "\nZ = const(9)" in a and "\nW = const(11)" in a
    assert "return _X + _Y_ + Z + W + _Y" in a
    assert "meternode.c" not in out and "meternode.e" not in out  # nothing to fold there
    assert "return W" in out.get("meternode.d", D)


def test_built_package_behaves_as_source_on_micropython(tmp_path) -> None:
    src = _tree(tmp_path / "fw")
    from_source = _run(src, tmp_path)
    built = build("sim", tmp_path / "out", src=src)
    from_build = _run(built.out / "lib", tmp_path)
    unfolded = build("sim", tmp_path / "plain", src=src, fold=False)
    assert _run(unfolded.out / "lib", tmp_path).splitlines()[:2] == from_source.splitlines()[:2]
    # the same results, the same traceback line, fewer globals
    assert from_source.splitlines()[:2] == from_build.splitlines()[:2] == ["f (507, 35)", "g 9 3 4 own"]
    assert "globals ['W', 'X', 'Y', 'Z']" in from_source
    assert "globals ['W', 'Z']" in from_build
    line = "line 13, in boom"
    assert line in from_source and line in from_build
    assert 'File "meternode.b", line 13' in from_build  # the source name is the module name


def test_firmware_folds_and_interns_fewer_names(tmp_path) -> None:
    # the real package: folding changes a few dozen modules, and a node built both ways
    # imports the same modules; the folded one interns fewer names
    folded = build("sim", tmp_path / "f")
    plain = build("sim", tmp_path / "p", fold=False)
    script = tmp_path / "q.py"
    script.write_text(
        "import micropython\n"
        "import meternode.node, meternode.link.service, meternode.link.commands, meternode.policy.service\n"
        "micropython.qstr_info()\n"
    )

    def qstrs(out: Path) -> int:
        return int(run_on_build(out, script).split("n_qstr=")[1].split(",")[0])

    nf, np_ = qstrs(folded.out), qstrs(plain.out)
    assert nf < np_ - 20, (nf, np_)
