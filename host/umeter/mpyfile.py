"""What loading a compiled module (`.mpy`, MicroPython's format version 6) puts in a board's
memory: the bytecode and the machine code of each function, read from the file.

Written from MicroPython's description of the format (docs/reference/mpyfiles.rst) and its
loader (py/persistentcode.c, v1.29 preview): a 4-byte header (b"M", version 6, features =
arch << 2 | sub-version, small-int bits), the module's qstr table and constant objects, then
its raw code, a tree: each function is `kind_len` (kind in the low 2 bits, "has children" in
bit 2, the length of its data above), its data (bytecode, or machine code with its prelude),
for machine code its scope flags (and a viper function's rodata and bss sizes, its rodata),
its children, and last a viper function's relocations (ending in 0xff). The reader walks the
whole file and fails naming the file and offset if a byte is left over or missing, so a
format it misreads does not pass for a size.

Why it matters: the unix port puts machine code in memory it maps itself (not in the gc heap,
so `benchmarks/memory.py` does not see it); the esp32 port copies it into IRAM (the heap its
IDF allocator keeps for executable code, not MicroPython's); but the rp2 port and the other ARM
ports (no `MP_PLAT_ALLOC_EXEC`) keep it in the gc heap for as long as the module is loaded.
`gc_heap_bytes()` is what a node's viper kernels cost there (docs/memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# mpy native arch codes (header byte 2 >> 2, sys.implementation._mpy >> 10), py/persistentcode.h
ARCH_CODE = {"x86": 1, "x64": 2, "armv6": 3, "armv6m": 4, "armv7m": 5, "armv7em": 6, "armv7emsp": 7,
             "armv7emdp": 8, "xtensa": 9, "xtensawin": 10, "rv32imc": 11, "rv64imc": 12}  # fmt: skip
ARCH_NAME = {v: k for k, v in ARCH_CODE.items()}
# where a port puts the machine code it loads from a .mpy (py/persistentcode.c load_raw_code):
# in the gc heap where the port defines neither MP_PLAT_ALLOC_EXEC nor MP_PLAT_COMMIT_EXEC
# (rp2, stm32, the other bare-metal ARM and RISC-V ports); esp32 and esp8266 commit it to IRAM,
# the unix port to memory it maps
IN_GC_HEAP = frozenset({"armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "rv32imc"})
KINDS = ("bytecode", "native", "viper", "asm")
_RELOC, _RODATA, _BSS = 0x10, 0x20, 0x40  # MP_SCOPE_FLAG_VIPER* (py/runtime0.h)
_OBJ_NOLEN = 5  # constant objects 0..4 (fun table, None, False, True, Ellipsis) carry no data
_OBJ_STR, _OBJ_BYTES, _OBJ_TUPLE = 5, 6, 10


@dataclass
class Code:
    kind: str  # one of KINDS
    size: int  # bytes of bytecode or machine code (with its prelude)
    data: int = 0  # a viper function's rodata + bss


@dataclass
class Mpy:
    path: str
    arch: str | None  # None: bytecode only
    small_int_bits: int
    qstrs: list[str | None] = field(default_factory=list)  # None: a static (firmware) qstr
    n_obj: int = 0  # constant objects (str, bytes, float, big int, tuple, ...) in its table
    codes: list[Code] = field(default_factory=list)

    def machine_code(self) -> int:
        """Bytes of machine code and viper data this module loads."""
        return sum(c.size + c.data for c in self.codes if c.kind != "bytecode")

    def gc_heap_bytes(self, arch: str | None = None, word: int = 4) -> int:
        """What its machine code holds in the gc heap of a port of `arch` (its own by default):
        each function's code and its viper data, in the heap's blocks (4 words); 0 where the
        port keeps machine code elsewhere."""
        if (arch or self.arch) not in IN_GC_HEAP:
            return 0
        block = 4 * word
        return sum(_up(c.size, block) + _up(c.data, block) for c in self.codes if c.kind != "bytecode")


def _up(n: int, block: int) -> int:
    return 0 if n == 0 else (n + block - 1) // block * block


class _Reader:
    def __init__(self, data: bytes, name: str) -> None:
        self.b, self.i, self.name = data, 0, name

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.name}: not a .mpy this reader understands: {what} at byte {self.i}")

    def byte(self) -> int:
        if self.i >= len(self.b):
            raise self.fail("the file ends early")
        self.i += 1
        return self.b[self.i - 1]

    def uint(self) -> int:
        n = 0
        while True:
            c = self.byte()
            n = (n << 7) | (c & 0x7F)
            if not c & 0x80:
                return n

    def skip(self, n: int) -> bytes:
        if self.i + n > len(self.b):
            raise self.fail(f"{n} bytes wanted, the file ends early")
        self.i += n
        return self.b[self.i - n : self.i]


def read(path: str | Path, data: bytes | None = None) -> Mpy:
    """Parse a .mpy file (or its bytes); ValueError naming the file when it is not one."""
    r = _Reader(Path(path).read_bytes() if data is None else data, str(path))
    head = r.skip(4)
    if head[0:1] != b"M" or head[1] != 6:
        raise r.fail(f"header {head.hex()} (want 'M', version 6)")
    code = (head[2] >> 2) & 0x2F
    if code and code not in ARCH_NAME:
        raise r.fail(f"unknown arch code {code}")
    if head[2] & 0x40:  # arch flags (RISC-V extensions)
        r.uint()
    m = Mpy(str(path), ARCH_NAME.get(code), head[3])
    n_qstr, m.n_obj = r.uint(), r.uint()
    for _ in range(n_qstr):
        v = r.uint()
        if v & 1:
            m.qstrs.append(None)
        else:
            m.qstrs.append(r.skip(v >> 1).decode("utf-8", "replace"))
            r.skip(1)
    for _ in range(m.n_obj):
        _obj(r)
    _raw_code(r, m)
    if r.i != len(r.b):
        raise r.fail(f"{len(r.b) - r.i} bytes after the module's code")
    return m


def _obj(r: _Reader) -> None:
    t = r.byte()
    if t < _OBJ_NOLEN:
        return
    n = r.uint()
    if t == _OBJ_TUPLE:
        for _ in range(n):
            _obj(r)
        return
    r.skip(n)
    if t in (_OBJ_STR, _OBJ_BYTES):
        r.skip(1)  # the NUL after the data


def _raw_code(r: _Reader, m: Mpy) -> None:
    kind_len = r.uint()
    kind = kind_len & 3
    code = Code(KINDS[kind], kind_len >> 3)
    r.skip(code.size)
    flags = 0
    if kind == 1:
        r.uint()  # the prelude's offset in the machine code
    elif kind > 1:
        flags = r.uint()
        if kind == 3:
            r.uint(), r.uint()  # positional args, type signature
    if kind == 2:
        rodata = r.uint() if flags & _RODATA else 0
        bss = r.uint() if flags & _BSS else 0
        if rodata + bss:
            code.data = rodata + _up(bss, 4)
        r.skip(rodata)
    m.codes.append(code)
    if kind_len & 4:
        for _ in range(r.uint()):
            _raw_code(r, m)
    if kind > 1 and flags & _RELOC:
        while (op := r.byte()) != 0xFF:
            if op & 1:
                r.uint()  # where the next adjustments are
            op >>= 1
            if op <= 5 and op & 1:
                r.uint()  # how many adjacent ones
