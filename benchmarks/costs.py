"""What one construct of firmware code costs in a board's heap, measured side by side on the
MicroPython unix port in use (the pip 64-bit one, or a 32-bit board-like build with
UMETER_MICROPYTHON=...), loaded from a .mpy file and run in place from a ROMFS image.

Each case is a module of N copies of one construct, compiled with our build's mpy-cross
settings for the port; the figure is the heap it holds once imported (gc.mem_alloc() after a
collection, the module's own cost, over an empty module's), divided by N:

- function: a module-level `def` (raw code + function object + its name + its global);
- method: a method of a class (the same in the class's dict);
- comprehension: `[... for ...]` inside a function: a hidden function of its own (raw code);
  `loop` is the same work written as a for loop (no hidden function);
- float: a float literal (a heap object each: a board's floats are boxed);
- name: one more distinct attribute name (an interned qstr: its string and pool entry);
- string: one more distinct string literal of 25 characters, as the firmware's messages are
  (over 10 characters the compiler does not intern it: a str object in the module's constants);
- module: one more module, beyond its code: N modules of one function each (compiled with
  their dotted names as our build does) against the same N functions in one module.

    python benchmarks/costs.py [--n 200]
    UMETER_MICROPYTHON=/path/to/micropython32 python benchmarks/costs.py

The last line is one JSON object: bytes per construct for each load. docs/memory.md uses
these figures to say what the design rules save.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from umeter import unixport
from umeter.build import SMALL_INT_BITS, mpy_cross_path
from umeter.romfs import build_image

CASES = {
    "function": lambda n: "".join(f"def fn_{i}(a, b):\n    return a + b + {i}\n" for i in range(n)),
    "method": lambda n: "class K:\n" + "".join(f"    def mt_{i}(self, a):\n        return a + {i}\n" for i in range(n)),
    "comprehension": lambda n: (
        "def f(x):\n" + "".join(f"    y{i} = [v + {i} for v in x]\n" for i in range(n)) + "    return 0\n"
    ),
    "loop": lambda n: (
        "def f(x):\n"
        + "".join(f"    y{i} = []\n    for v in x:\n        y{i}.append(v + {i})\n" for i in range(n))
        + "    return 0\n"
    ),
    "float": lambda n: "def f(x):\n" + "".join(f"    x = x * {i}.5\n" for i in range(n)) + "    return x\n",
    "name": lambda n: "def f(o):\n" + "".join(f"    o.attr_{i:04d} = 0\n" for i in range(n)) + "    return o\n",
    "string": lambda n: (
        "def f(o):\n" + "".join(f"    o.attr = 'the event {i:04d} went wrong'\n" for i in range(n)) + "    return o\n"
    ),
    "base": lambda n: "def f(o):\n" + "".join("    o.attr = 0\n" for i in range(n)) + "    return o\n",
}

SCRIPT = r"""
import gc, sys, os
mode, name, where = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "romfs":
    import vfs
    n = os.stat(where)[6]
    buf = bytearray(n)
    with open(where, "rb") as f:
        f.readinto(buf)
    vfs.mount(vfs.VfsRom(buf), "/rom")
    sys.path.insert(0, "/rom")
else:
    sys.path.insert(0, where)
__import__("c_empty")
gc.collect()
a = gc.mem_alloc()
if name == "c_pkg":
    for i in range(int(sys.argv[4])):
        __import__("c_pkg.m_%d" % i)
else:
    m = __import__(name)
gc.collect()
print("RESULT", gc.mem_alloc() - a)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="copies of each construct")
    a = ap.parse_args(argv)
    arch = unixport.native_arch()
    bits = SMALL_INT_BITS.get(arch, 31)
    res: dict = {"port": {"arch": arch, "word_bytes": unixport.word_bytes()}, "n": a.n, "mpy": {}, "romfs": {}}
    with tempfile.TemporaryDirectory(prefix="umeter-costs-") as d:
        work = Path(d)
        lib = work / "lib"
        lib.mkdir()
        files = {}
        for name, make in {"empty": lambda n: "", **CASES}.items():
            src = work / f"c_{name}.py"
            src.write_text(make(a.n))
            out = lib / f"c_{name}.mpy"
            argv_ = [mpy_cross_path(), f"-march={arch}", f"-msmall-int-bits={bits}", "-o", str(out), str(src)]
            subprocess.run(argv_, check=True)
            files[out.name] = out.read_bytes()
        # the module case: a package of a.n modules, each one function of the "function" case
        (lib / "c_pkg").mkdir()
        for i in range(-1, a.n):
            mod, text = ("__init__", "") if i < 0 else (f"m_{i}", f"def fn_{i}(a, b):\n    return a + b + {i}\n")
            src = work / f"{mod}.py"
            src.write_text(text)
            out = lib / "c_pkg" / f"{mod}.mpy"
            dotted = "c_pkg" if i < 0 else f"c_pkg.{mod}"
            subprocess.run(
                [
                    mpy_cross_path(),
                    f"-march={arch}",
                    f"-msmall-int-bits={bits}",
                    "-s",
                    dotted,
                    "-o",
                    str(out),
                    str(src),
                ],
                check=True,
            )
            files[f"c_pkg/{mod}.mpy"] = out.read_bytes()
        image = work / "costs.img"
        image.write_bytes(build_image(files))
        script = work / "costs.py"
        script.write_text(SCRIPT)
        for load, where in (("mpy", lib), ("romfs", image)):
            for name in [*CASES, "pkg"]:
                p = subprocess.run(
                    unixport.command(script, load, f"c_{name}", str(where), str(a.n), heap="4m"),
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=dict(os.environ),
                )
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    raise SystemExit(f"{name} ({load}) failed:\n{p.stdout}{p.stderr}")
                res[load][name] = int(line[0].split()[1])
    per = {load: {k: round(v / a.n, 1) for k, v in res[load].items()} for load in ("mpy", "romfs")}
    for load in per:  # a distinct name (a string) over the same code with one name (a small int)
        per[load]["name"] = round((res[load]["name"] - res[load]["base"]) / a.n, 1)
        per[load]["string"] = round((res[load]["string"] - res[load]["base"]) / a.n, 1)
        del per[load]["base"]
        per[load]["module"] = round((res[load]["pkg"] - res[load]["function"]) / a.n, 1)
        del per[load]["pkg"]
    p = res["port"]
    print(f"heap bytes per construct, unix port {arch} ({p['word_bytes'] * 8}-bit), {a.n} of each")
    print(f"{'construct':<15}{'.mpy':>8}{'ROMFS':>8}")
    for k in per["mpy"]:
        print(f"{k:<15}{per['mpy'][k]:>8}{per['romfs'][k]:>8}")
    print(
        f"a comprehension costs {per['mpy']['comprehension'] / max(per['mpy']['loop'], 0.1):.1f}x its loop from .mpy,"
        f" {per['romfs']['comprehension'] - per['romfs']['loop']:.0f} bytes more from ROMFS"
    )
    print(json.dumps({"port": p, "n": a.n, "bytes_per": per}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
