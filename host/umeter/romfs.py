"""ROMFS images: MicroPython's read-only, memory-mappable filesystem (`vfs.VfsRom`, v1.25+).

A board with a ROMFS partition mounts it at /rom at boot and puts /rom and /rom/lib on
`sys.path`; `.mpy` files imported from it run in place: their bytecode, string data and
interned names stay in flash instead of being copied into the heap (docs/memory.md).

The format (MicroPython's extmod/vfs_rom.c, docs/reference/romfs.rst) is a tree of records.
A record is a varuint kind, a varuint payload length, then the payload. A varuint is
big-endian, 7 bits per byte, the high bit set on every byte but the last; leading 0x80
bytes are allowed and change nothing. Kinds:

    0x14a6b1  the filesystem (encodes as d2 cd 31, "RM1"): payload = records
    1         padding: payload ignored
    2         verbatim data: payload = the file's bytes
    4         directory: varuint name length, name, then records (its entries)
    5         file: varuint name length, name, then records (its data record)

The whole image must be an even number of bytes. This writer gives every directory and file
record a fixed-width (4-byte) length, so the position of each record is known before its
content is, and pads the length of each data record so a file's bytes start on a 4-byte
boundary of the image (the partition is block-aligned, so they are word-aligned in flash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from .errors import ConfigError

HEADER = b"\xd2\xcd\x31"
KIND_FS = 0x14A6B1
KIND_PAD = 1
KIND_DATA = 2
KIND_DIR = 4
KIND_FILE = 5
_WIDTH = 4  # bytes of every directory/file record length (payloads up to 256 MiB)
ALIGN = 4


class RomfsError(ConfigError):
    """Bytes that are not a ROMFS image, or names a ROMFS cannot hold."""


def varuint(n: int, width: int = 0) -> bytes:
    """`n` as a varuint, left-padded with 0x80 bytes to `width` bytes."""
    if n < 0:
        raise ValueError("varuint of a negative number")
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    if width and len(out) > width:
        raise ValueError(f"{len(out)}-byte varuint does not fit in {width}")
    out += [0x80] * (width - len(out))
    return bytes(reversed(out))


def read_varuint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it); RomfsError past `end`."""
    n = 0
    while True:
        if pos >= end:
            raise RomfsError("ROMFS image is truncated inside a number", hint="rebuild it")
        b = data[pos]
        pos += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            return n, pos


def _tree(files: Mapping[str, bytes]) -> dict:
    root: dict = {}
    for path, data in files.items():
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise RomfsError(f"ROMFS path {path!r} names no file", hint="give paths like lib/pkg/mod.mpy")
        d = root
        for p in parts[:-1]:
            sub = d.setdefault(p, {})
            if not isinstance(sub, dict):
                raise RomfsError(f"ROMFS path {path!r}: {p} is a file", hint="a name is a file or a directory")
            d = sub
        if parts[-1] in d:
            raise RomfsError(f"ROMFS path {path!r} is given twice", hint="one file per path")
        d[parts[-1]] = bytes(data)
    return root


def _name(n: str) -> bytes:
    try:
        b = n.encode("ascii")
    except UnicodeEncodeError:
        raise RomfsError(f"ROMFS name {n!r} is not ASCII", hint="rename the file") from None
    return varuint(len(b)) + b


def _entries(d: dict, pos: int) -> bytes:
    # The records of directory `d`, the first starting at image offset `pos`.
    out = bytearray()
    for name in sorted(d):
        v = d[name]
        head = pos + len(out) + 1 + _WIDTH  # where the payload of this record starts
        nm = _name(name)
        if isinstance(v, dict):
            body = nm + _entries(v, head + len(nm))
            out += varuint(KIND_DIR) + varuint(len(body), _WIDTH) + body
        else:
            at = head + len(nm) + 1  # the data record's length field starts here
            w = len(varuint(len(v)))
            while (at + w) % ALIGN:
                w += 1
            body = nm + varuint(KIND_DATA) + varuint(len(v), w) + v
            out += varuint(KIND_FILE) + varuint(len(body), _WIDTH) + body
    return bytes(out)


def build_image(files: Mapping[str, bytes]) -> bytes:
    """A ROMFS image holding `files` ({"lib/pkg/mod.mpy": bytes, ...})."""
    head = len(HEADER) + _WIDTH
    payload = _entries(_tree(files), head)
    if (head + len(payload)) % 2:
        payload += varuint(KIND_PAD) + b"\x80\x00"  # a 3-byte padding record: even size
    return HEADER + varuint(len(payload), _WIDTH) + payload


def _records(data: bytes | memoryview, pos: int, end: int):
    while pos < end:
        kind, pos = read_varuint(data, pos, end)
        n, pos = read_varuint(data, pos, end)
        if kind == 0:
            raise RomfsError("ROMFS image has an unused (zero) record: corrupt", hint="rebuild it")
        if pos + n > end:
            raise RomfsError("ROMFS record runs past its parent", hint="rebuild it")
        yield kind, pos, pos + n
        pos += n


def image_size(data: bytes | memoryview) -> int:
    """Bytes of the image at the start of `data` (a partition may hold more); RomfsError if
    `data` does not start with a ROMFS image."""
    if bytes(data[:3]) != HEADER:
        raise RomfsError("not a ROMFS image (no RM1 header)", hint="build one with `umeter build --romfs`")
    n, pos = read_varuint(data, 3, len(data))
    if pos + n > len(data):
        raise RomfsError("ROMFS image is truncated", hint="rebuild or redeploy it")
    return pos + n


def read_image(data: bytes | memoryview) -> dict[str, bytes]:
    """Every file of an image: {path: bytes}. Unknown record kinds are skipped, as
    MicroPython does."""
    end = image_size(data)
    _, pos = read_varuint(data, 3, end)
    out: dict[str, bytes] = {}

    def walk(pos: int, end: int, prefix: str) -> None:
        for kind, a, b in _records(data, pos, end):
            if kind not in (KIND_DIR, KIND_FILE):
                continue
            n, p = read_varuint(data, a, b)
            name = bytes(data[p : p + n]).decode("ascii")
            p += n
            if kind == KIND_DIR:
                walk(p, b, prefix + name + "/")
                continue
            for k, x, y in _records(data, p, b):
                if k == KIND_DATA:
                    out[prefix + name] = bytes(data[x:y])
                    break
            else:
                raise RomfsError(f"ROMFS file {prefix + name} has no data record", hint="rebuild the image")

    walk(pos, end, "")
    return out


def digest(data: bytes) -> str:
    """sha256 hex of an image (what provisioning compares with the board's partition)."""
    return hashlib.sha256(data).hexdigest()
