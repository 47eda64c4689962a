"""`umeter build`: mpy-cross per board architecture, viper included, a manifest with a sha256
per file, and a build for the unix port (x64 for the pip one) that it imports and runs."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from umeter import mpyfile, unixport
from umeter.build import BuildError, build, compile_one, read_manifest
from umeter.errors import ConfigError

# mpy header byte 2 = (native arch << 2) | sub-version (py/persistentcode.h MP_NATIVE_ARCH_*)
ARCH_CODE = {"x64": 2, "armv6m": 4, "xtensawin": 10}

KERNEL = """\
import micropython

@micropython.viper
def sum_sq(buf, n: int, mid: int, out):
    p = ptr16(buf)
    o = ptr32(out)
    acc = 0
    for i in range(n):
        v = int(p[i]) - mid
        acc += v * v
    o[0] = acc
"""


@pytest.fixture
def fw(tmp_path) -> Path:
    """A small firmware tree: the meternode package with one viper kernel."""
    src = tmp_path / "fw"
    (src / "meternode").mkdir(parents=True)
    (src / "meternode" / "__init__.py").write_text('VERSION = "9.8.7"\n')
    (src / "meternode" / "kern.py").write_text(KERNEL)
    (src / "main.py").write_text("print('main')\n")
    return src


def run_mp(code: str, path: Path) -> str:
    env = dict(os.environ, MICROPYPATH=str(path))
    r = subprocess.run([unixport.micropython_path(), "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_x64_build_of_a_viper_kernel_imports_as_mpy_and_runs_on_the_unix_port(fw, tmp_path):
    # x64 on the pip unix port; the sim board is built for whichever port runs the tests
    # (x86 or an ARM build: tests run there too)
    res = build("sim", tmp_path / "out", src=fw)
    assert res.arch == unixport.native_arch() and res.arch is not None
    mpy = tmp_path / "out" / "lib" / "meternode" / "kern.mpy"
    assert mpy.read_bytes()[2] >> 2 == mpyfile.ARCH_CODE[res.arch]
    out = run_mp(
        "import array\nfrom meternode import kern\nprint(kern.__file__)\n"
        "b = array.array('H', [2048 + 100, 2048 - 100, 2048 + 7])\no = array.array('i', [0])\n"
        "kern.sum_sq(b, 3, 2048, o)\nprint(o[0])",
        tmp_path / "out" / "lib",
    )
    lines = out.split()
    assert lines[0].endswith("meternode/kern.mpy")
    assert int(lines[1]) == 100 * 100 * 2 + 49


@pytest.mark.parametrize("board,arch", [("esp32_devkitc", "xtensawin"), ("pico_w", "armv6m")])
def test_board_arch_selects_the_native_code_in_the_mpy(fw, tmp_path, board, arch):
    res = build(board, tmp_path / board, src=fw)
    assert res.arch == arch
    assert (tmp_path / board / "lib" / "meternode" / "kern.mpy").read_bytes()[2] >> 2 == ARCH_CODE[arch]


def test_manifest_lists_every_file_with_its_sha256_and_the_version(fw, tmp_path):
    out = tmp_path / "out"
    build("sim", out, src=fw, version="1.2.3")
    man = read_manifest(out)
    assert man["version"] == "1.2.3" and man["board"] == "sim" and man["arch"] == unixport.native_arch()
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(man["files"]) == on_disk
    assert {"board.json", "main.py", "lib/meternode/__init__.mpy", "lib/meternode/kern.mpy"} <= on_disk
    for rel, meta in man["files"].items():
        data = (out / rel).read_bytes()
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert json.loads((out / "board.json").read_text())["name"] == "sim"


def test_a_package_whose_init_only_describes_it_ships_without_one_and_imports(fw, tmp_path):
    # a comment-only __init__.py costs a running node a module (docs/memory.md); MicroPython
    # imports the directory as a package without it. One with code is compiled.
    (fw / "meternode" / "sub").mkdir()
    (fw / "meternode" / "sub" / "__init__.py").write_text('# what the package is\n"""and its docstring"""\n')
    (fw / "meternode" / "sub" / "leaf.py").write_text("X = 41\n")
    (fw / "meternode" / "code").mkdir()
    (fw / "meternode" / "code" / "__init__.py").write_text("# with code\nY = 1\n")
    out = tmp_path / "out"
    res = build("sim", out, src=fw)
    assert "lib/meternode/sub/leaf.mpy" in res.files and "lib/meternode/code/__init__.mpy" in res.files
    assert not (out / "lib" / "meternode" / "sub" / "__init__.mpy").exists()
    got = run_mp("from meternode.sub import leaf\nimport meternode.code\nprint(leaf.X + meternode.code.Y)", out / "lib")
    assert got.split() == ["42"]


def test_a_source_error_names_the_file_and_line(fw, tmp_path):
    (fw / "meternode" / "bad.py").write_text("x = 1\ndef f(:\n")
    with pytest.raises(BuildError, match=rf"meternode/bad.py does not compile for {unixport.native_arch()}.*line 2"):
        build("sim", tmp_path / "out", src=fw)


def test_viper_literal_beyond_31_bits_is_rejected_for_an_mcu_but_not_for_the_unix_port(fw, tmp_path):
    (fw / "meternode" / "wide.py").write_text(
        "import micropython\n@micropython.viper\ndef f(x: int) -> int:\n    h = 1 << 31\n    return x ^ h\n"
    )
    with pytest.raises(BuildError, match="ViperTypeError"):
        build("esp32_devkitc", tmp_path / "out", src=fw)
    if unixport.word_bytes() == 8:
        build("sim", tmp_path / "out64", src=fw)  # 63-bit small ints on the 64-bit unix port
    else:  # a 32-bit unix port has a board's 31-bit small ints: its build refuses it too
        with pytest.raises(BuildError, match="ViperTypeError"):
            build("sim", tmp_path / "out32", src=fw)


def test_unknown_board_is_a_config_error_naming_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown board 'nope'") as e:
        build("nope", tmp_path / "out")
    assert "sim" in e.value.hint


def test_repository_firmware_x64_build_runs_its_viper_kernels(tmp_path):
    out = tmp_path / "sim"
    build("sim", out)
    code = (
        "import array\nfrom meternode.metrology import refkernels as k\nprint(k.__file__)\n"
        "b = array.array('H', [2048 + 10, 2048 - 10] * 8)\no = array.array('i', [0] * 4)\n"
        "k.chan_sums(b, 0, 8, 2, 0, 2048, o, 0)\nprint(o[0], o[1])"
    )
    lines = run_mp(code, out / "lib").split()
    assert lines[0].endswith("refkernels.mpy")
    assert (int(lines[1]), int(lines[2])) == (80, 800)


@pytest.mark.parametrize("board", ["esp32_devkitc", "pico_w"])
def test_repository_firmware_builds_for_the_mcu_boards(tmp_path, board):
    res = build(board, tmp_path / board, romfs=True)
    assert (res.out / "lib" / "meternode" / "metrology" / "kernels.mpy").exists()
    # the flash budget: the whole package as a ROMFS image fits a 256-KiB partition (2026-12-07:
    # pico_w 248.0 KiB, esp32_devkitc 249.5; the 64-bit unix port's sim image, 256.9)
    size = (res.out / "romfs.img").stat().st_size
    assert size <= 256 * 1024, f"{board}'s ROMFS image is {size / 1024:.1f} KiB, over a 256-KiB partition"


def test_freeze_manifest_freezes_the_texts_the_mpy_files_were_compiled_from(tmp_path):
    # --manifest: frozen/meternode/**.py are the constant-folded texts (constfold.py), not the
    # plain sources, so a frozen package's module globals are the .mpy build's; each one
    # compiles to the very .mpy the build ships, but for its messages: a frozen module keeps
    # them in a string of its own (in flash) where the .mpy reads them from msgs.txt
    # (msgfold.py); frozen/ is not part of the provisioned files
    from umeter.msgfold import NAME, messages

    res = build("pico_w", tmp_path / "pico", freeze=True)
    frozen = res.out / "frozen"
    rels = sorted(p.relative_to(frozen).as_posix() for p in frozen.rglob("*.py"))
    assert rels == sorted(p.relative_to(res.out / "lib").with_suffix(".py").as_posix()
                          for p in (res.out / "lib").rglob("*.mpy"))  # fmt: skip
    src = Path(unixport.firmware_root())
    changed = [r for r in rels if (frozen / r).read_bytes() != (src / r).read_bytes()]
    assert "meternode/node.py" in changed, "node.py reads records.EV_* constants the build folds"
    # the package's VERSION is the build's, commit included: `umeter provision` reads it off a
    # board to tell which build its firmware holds; the line stays where it was
    init = (frozen / "meternode/__init__.py").read_text().splitlines()
    plain = (src / "meternode/__init__.py").read_text().splitlines()
    at = [i for i, ln in enumerate(plain) if ln.startswith("VERSION = ")]
    assert "+" in res.version and [init[i] for i in at] == [f'VERSION = "{res.version}"'], res.version
    (tmp_path / "unstamped").mkdir()
    (tmp_path / "unstamped" / "__init__.py").write_text("\n".join([*init[: at[0]], plain[at[0]], *init[at[0] + 1 :]]))
    with_msgs = 0
    for rel in rels:
        out = tmp_path / "again" / rel
        compile_one(tmp_path / "unstamped" / "__init__.py" if rel == "meternode/__init__.py" else frozen / rel, rel,
                    out.with_suffix(".mpy"), res.arch)  # fmt: skip
        built = res.out / "lib" / Path(rel).with_suffix(".mpy")
        text = (frozen / rel).read_text()
        assert f"{NAME}(" not in text, f"frozen/{rel} reads msgs.txt"
        # a module with messages (in a string of its own, or one message left in place)
        if rel != "meternode/__init__.py" and (f"{NAME} = " in text or messages(ast.parse(text))):
            with_msgs += 1
            assert out.with_suffix(".mpy").read_bytes() != built.read_bytes()
        else:
            assert out.with_suffix(".mpy").read_bytes() == built.read_bytes(), f"frozen/{rel} is not {built}'s source"
    assert with_msgs > 40, with_msgs
    assert not any(f.startswith("frozen/") or f == "manifest.py" for f in read_manifest(res.out)["files"])
    text = res.freeze_manifest.read_text()
    assert 'package("meternode", base_path="frozen")' in text and "make -C ports/rp2 BOARD=RPI_PICO_W" in text


def test_every_module_gets_a_constant_object_so_its_tables_keep_no_neighbour_alive(fw, tmp_path):
    # A module without constant objects has its object table pointed one past the end of its
    # qstr table (py/bc.h); when that table fills its heap blocks exactly, the collector keeps
    # the next block alive with all it refers to (umeter.build._with_a_constant). The build
    # gives such a module an empty bytes constant, appended: lines and tracebacks unchanged.
    (fw / "meternode" / "plain.py").write_text("def f(x):\n    return x + 1\n\n\ndef g():\n    raise ValueError(x)\n")
    out = tmp_path / "out"
    build("sim", out, src=fw)
    for f in (out / "lib").rglob("*.mpy"):
        assert mpyfile.read(f).n_obj >= 1, f
    assert not list(out.rglob("*.const.py"))  # the padded source is not shipped
    # mpy-cross alone gives it none (what the build mends)
    bare = tmp_path / "bare.mpy"
    compile_one(fw / "meternode" / "plain.py", "meternode/plain.py", bare, "x64")
    assert mpyfile.read(bare).n_obj == 0
    got = run_mp(
        "from meternode import plain\nprint(plain.f(1))\ntry:\n    plain.g()\nexcept NameError as e:\n"
        "    import sys\n    sys.print_exception(e)\n",
        out / "lib",
    )
    assert got.splitlines()[0] == "2"
    assert 'File "meternode.plain", line 6, in g' in got
