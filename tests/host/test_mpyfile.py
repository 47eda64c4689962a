"""umeter.mpyfile reads every module of every board's build to its last byte, finds the machine
code where mpy-cross put it (the viper kernels, and nothing else a node loads), and the
budget's NATIVE_KB is what the rp2 build's kernels hold in the gc heap."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from umeter import budget, mpyfile, unixport
from umeter.build import build, compile_one

BOARDS = ("sim", "pico_w", "esp32_devkitc")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mpyfile")
    return {b: build(b, root / b).out for b in BOARDS}


def test_every_module_of_every_board_build_reads_to_its_last_byte(builds):
    for board, out in builds.items():
        arch = json.loads((out / "manifest.json").read_text())["arch"]
        files = sorted((out / "lib").rglob("*.mpy"))
        assert len(files) > 50
        machine = {}
        for f in files:
            m = mpyfile.read(f)  # raises on a byte left over or missing
            assert m.small_int_bits in (31, 63)
            assert all(c.size > 0 for c in m.codes)
            assert m.codes[0].kind == "bytecode"  # the module's top level
            if m.machine_code():
                assert m.arch == arch, f
                machine[f.relative_to(out / "lib").as_posix()] = [c.kind for c in m.codes if c.kind != "bytecode"]
        # the viper kernels a node runs, and the reference ones only tests and benchmarks load
        assert machine == {
            "meternode/metrology/kernels.mpy": ["viper"] * 6,
            "meternode/metrology/refkernels.mpy": ["viper"] * 2,
        }, board


def test_machine_code_is_in_the_gc_heap_on_rp2_only_and_the_budget_counts_it(builds):
    kernels = {b: mpyfile.read(out / "lib" / "meternode" / "metrology" / "kernels.mpy") for b, out in builds.items()}
    rp2 = kernels["pico_w"]
    assert rp2.arch == "armv6m" and rp2.machine_code() > 4096
    # each function's code is one heap allocation, in 16-byte blocks
    assert rp2.machine_code() <= rp2.gc_heap_bytes() < rp2.machine_code() + 16 * 6
    assert budget.NATIVE_KB["armv6m"] == math.ceil(rp2.gc_heap_bytes() / 1024)
    assert kernels["esp32_devkitc"].gc_heap_bytes() == 0  # IRAM
    if kernels["sim"].arch not in mpyfile.IN_GC_HEAP:  # x64, x86: an ARM unix port's is an rp2's arch
        assert kernels["sim"].gc_heap_bytes() == 0  # the unix port maps it
    archs = {json.loads(p.read_text()).get("arch") for p in unixport.boards_dir().glob("*.json")}
    for arch in mpyfile.IN_GC_HEAP & archs:
        assert arch in budget.NATIVE_KB, f"boards/ has an {arch} board: measure its machine code into NATIVE_KB"
    # a board of that arch needs it on top of what the node holds and the margin
    assert budget.board_need("+store", arch="armv6m") == budget.heap_for("+store", words=4) + 6 * 1024
    assert budget.board_need("+store", arch="xtensawin") == budget.heap_for("+store", words=4)
    assert budget.board_need("+store", arch="x64") == budget.heap_for("+store", words=8)


def test_a_module_with_rodata_constants_and_nested_code_reads_and_its_sizes_add_up(tmp_path):
    # a viper function with a bytes constant, a nested closure, a class, a float, a tuple, a
    # big int: every kind of constant and child the reader must step over
    src = tmp_path / "m.py"
    src.write_text(
        "import micropython\n"
        "T = (1, 'two', b'three', 4.5, 10**30, ...)\n"
        "@micropython.viper\n"
        "def v(a: ptr8, n: int) -> int:\n"
        "    s = 0\n"
        "    for i in range(n):\n"
        "        s += a[i]\n"
        "    return s\n"
        "@micropython.native\n"
        "def nat(x):\n"
        "    return x * 2\n"
        "class C:\n"
        "    def m(self):\n"
        "        def inner(y):\n"
        "            return y + 1\n"
        "        return inner\n"
    )
    for arch in ("x64", "armv6m", "xtensawin"):
        out = tmp_path / f"m-{arch}.mpy"
        compile_one(src, "m.py", out, arch)
        m = mpyfile.read(out)
        assert m.arch == arch
        kinds = sorted(c.kind for c in m.codes)
        assert kinds == ["bytecode"] * 4 + ["native", "viper"], (arch, kinds)
        assert "inner" in m.qstrs and "nat" in m.qstrs
        raw = out.read_bytes()
        with pytest.raises(ValueError, match=r"m-.*\.mpy: .*ends early"):
            mpyfile.read(out, raw[:-3])
        with pytest.raises(ValueError, match=r"2 bytes after the module's code"):
            mpyfile.read(out, raw + b"\0\0")
    with pytest.raises(ValueError, match=r"header 4d05.*version 6"):
        mpyfile.read("old.mpy", b"M\x05\x00\x1f\x00\x00")


def test_the_unix_port_loads_what_the_reader_reads(tmp_path):
    # the interpreter's own loader is the oracle for the file being whole: a file the reader
    # accepts imports; one cut short the reader refuses, and so does the loader
    src = tmp_path / "m.py"
    src.write_text("def f(a, b=2):\n    return [a, b, 'x' * 3]\nprint(f(1))\n")
    arch = unixport.native_arch() or "x64"
    out = tmp_path / "lib" / "m.mpy"
    out.parent.mkdir()
    compile_one(src, "m.py", out, arch)
    m = mpyfile.read(out)
    assert [c.kind for c in m.codes] == ["bytecode", "bytecode"]
    r = subprocess.run(unixport.command("-c", "import sys; sys.path.insert(0, 'lib'); import m"),
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.stdout.strip() == "[1, 2, 'xxx']", r.stderr
    out.write_bytes(out.read_bytes()[: len(out.read_bytes()) - 4])
    with pytest.raises(ValueError, match="ends early"):
        mpyfile.read(out)
    r = subprocess.run(unixport.command("-c", "import sys; sys.path.insert(0, 'lib'); import m"),
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode != 0
