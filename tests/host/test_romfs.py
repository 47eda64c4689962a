"""ROMFS images (umeter.romfs) and `umeter build --romfs/--manifest`: images that MicroPython's
own VfsRom mounts and imports from, file data word-aligned in the image, a build's image that
holds exactly its .mpy files, and a freeze manifest that names the whole package."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from umeter import romfs, unixport
from umeter.build import build, empty_init, read_manifest

MOUNT = """
import sys, vfs, os, uctypes
with open(sys.argv[1], 'rb') as f:
    img = f.read()
vfs.mount(vfs.VfsRom(img), '/rom')
sys.path.append('/rom/lib')
"""


def run_mp(code: str, *args: str, path: str = ".frozen") -> list[str]:
    env = dict(os.environ, MICROPYPATH=path)
    script = Path(os.environ.get("TMPDIR", "/tmp")) / f"romfs-test-{os.getpid()}.py"
    script.write_text(code)
    try:
        r = subprocess.run([unixport.micropython_path(), str(script), *args], capture_output=True, text=True,
                           env=env, timeout=60)  # fmt: skip
    finally:
        script.unlink()
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split("\n")


def test_micropython_mounts_an_image_lists_it_and_imports_from_it(tmp_path):
    files = {
        "lib/pkg/__init__.py": b"",
        "lib/pkg/mod.py": b"X = 42\n",
        "lib/pkg/sub/deep.py": b"def f():\n    return 'deep'\n",
        "data.bin": bytes(range(7)),
    }
    img = tmp_path / "a.romfs"
    img.write_bytes(romfs.build_image(files))
    out = run_mp(
        MOUNT + "from pkg import mod\nfrom pkg.sub import deep\nprint(mod.X, deep.f(), mod.__file__)\n"
        "print(sorted(os.listdir('/rom')), sorted(os.listdir('/rom/lib/pkg')))\n"
        "print(open('/rom/data.bin', 'rb').read() == bytes(range(7)))\n",
        str(img),
    )
    assert out[0] == "42 deep /rom/lib/pkg/mod.py"
    assert out[1] == "['data.bin', 'lib'] ['__init__.py', 'mod.py', 'sub']"
    assert out[2] == "True"


def test_every_files_bytes_start_on_a_word_boundary_of_the_image(tmp_path):
    # names of every length shift the records; the data must stay 4-byte aligned anyway
    files = {f"d{'x' * k}/f{'y' * (k % 5)}.bin": bytes([k]) * (k * 7 + 1) for k in range(1, 13)}
    img = tmp_path / "b.romfs"
    img.write_bytes(romfs.build_image(files))
    code = (
        MOUNT
        + "base = uctypes.addressof(img)\n"
        + "for d in sorted(os.listdir('/rom')):\n"
        + "    for n in os.listdir('/rom/' + d):\n"
        + "        with open('/rom/%s/%s' % (d, n), 'rb') as f:\n"
        + "            print((uctypes.addressof(f) - base) % 4, len(f.read()))\n"
    )
    lines = [ln for ln in run_mp(code, str(img)) if ln]
    assert len(lines) == len(files)
    assert {ln.split()[0] for ln in lines} == {"0"}
    assert sorted(int(ln.split()[1]) for ln in lines) == sorted(len(v) for v in files.values())


@pytest.mark.parametrize("n", [0, 1, 2, 3, 100, 127, 128, 129, 16383, 16384])
def test_images_are_even_sized_and_read_back_identically(n):
    files = {"a": b"z" * n, "b/c": b"q" * (n // 2 + 1)}
    img = romfs.build_image(files)
    assert len(img) % 2 == 0
    assert romfs.image_size(img + b"\xff" * 64) == len(img)  # a partition holds more than the image
    assert romfs.read_image(img) == files


def test_varuints_are_big_endian_seven_bits_and_may_be_padded():
    assert romfs.varuint(0) == b"\x00"
    assert romfs.varuint(0x14A6B1) == romfs.HEADER
    assert romfs.varuint(300) == b"\x82\x2c"
    assert romfs.varuint(300, 4) == b"\x80\x80\x82\x2c"
    assert romfs.read_varuint(b"\x80\x80\x82\x2c", 0, 4) == (300, 4)


def test_not_an_image_or_a_truncated_one_is_a_clear_error():
    with pytest.raises(romfs.RomfsError, match="not a ROMFS image"):
        romfs.read_image(b"\xff" * 16)
    img = romfs.build_image({"a": b"x" * 100})
    with pytest.raises(romfs.RomfsError, match="truncated"):
        romfs.read_image(img[:50])
    with pytest.raises(romfs.RomfsError, match="given twice"):
        romfs.build_image({"a/b": b"1", "/a/b": b"2"})


def test_build_romfs_holds_exactly_the_compiled_package_and_the_node_imports_from_it(tmp_path):
    res = build("sim", tmp_path / "sim", romfs=True)
    man = read_manifest(res.out)
    img = (res.out / "romfs.img").read_bytes()
    assert man["romfs"] == {"file": "romfs.img", "sha256": romfs.digest(img), "size": len(img)}
    assert "romfs.img" not in man["files"]  # provisioning deploys it, it never copies it as a file
    lib = {p: (res.out / p).read_bytes() for p in man["files"] if p.startswith("lib/")}
    assert romfs.read_image(img) == lib
    out = run_mp(MOUNT + "from meternode import node\nprint(node.__file__)\n", str(res.out / "romfs.img"))
    assert out[0] == "/rom/lib/meternode/node.mpy"


def _eval_manifest(path: Path) -> list[tuple]:
    # MicroPython's manifest API (docs/reference/manifest.rst), recorded instead of frozen:
    # paths are relative to the manifest's directory.
    calls: list[tuple] = []
    env = {
        "include": lambda p, **kw: calls.append(("include", p)),
        "package": lambda p, files=None, base_path=".", opt=None: calls.append(
            ("package", p, (path.parent / base_path).resolve(), opt)
        ),
        "module": lambda p, base_path=".", opt=None: calls.append(("module", p)),
        "require": lambda name, **kw: calls.append(("require", name)),
    }
    exec(compile(path.read_text(), str(path), "exec"), env)
    return calls


@pytest.mark.parametrize(
    "board,include", [("pico_w", "$(BOARD_DIR)/manifest.py"), ("esp32_devkitc", "$(PORT_DIR)/boards/manifest.py")]
)
def test_build_manifest_freezes_the_whole_package_on_top_of_the_stock_boards_manifest(tmp_path, board, include):
    res = build(board, tmp_path / board, freeze=True)
    calls = _eval_manifest(res.freeze_manifest)
    assert calls[0] == ("include", include)  # the stock firmware keeps its frozen asyncio/networking
    (kind, pkg, base, _opt) = calls[1]
    assert (kind, pkg) == ("package", "meternode")
    frozen = sorted(p.relative_to(base).as_posix() for p in (base / "meternode").rglob("*.py"))
    fw = unixport.firmware_root()
    source = sorted(
        p.relative_to(fw).as_posix()
        for p in (fw / "meternode").rglob("*.py")
        if "__pycache__" not in p.parts and not empty_init(p)
    )
    assert frozen == source  # all but the packages' comment-only __init__.py (a directory is a package)
    assert "manifest.py" not in json.dumps(read_manifest(res.out)["files"])
