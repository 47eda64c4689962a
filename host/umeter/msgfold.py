"""Gather a module's error and log messages into one string at build time.

From a `.mpy` file MicroPython makes every string constant longer than 10 characters a str
object of its own when the module loads (shorter ones are interned names), and keeps it as
long as the module: 74 bytes held for a 25-character message on the 64-bit unix port, 53 on
32-bit, 40 and 20 run in place from ROMFS (`python benchmarks/costs.py`, "string"). A running
node's modules carry ~150 such messages, nearly all of them for errors and log lines that
come seldom or never.

`fold_messages(text)` returns the text `umeter build` compiles instead, in which the messages
of a module's functions -- string literals over 10 characters in a `raise` statement or in
the arguments of a call to `log`, `_log`, `print`, `event`, `_event`, `drop`, `reboot`,
`_reboot`, `_apply` or an exception (a callee named ...Error), the module names given to
`run` and `forget`, and the reasons a function hands back (the value of a `"why"` or
`"error"` key in a dict display or a subscript assignment, or of a variable of that name) -- are slices of one
module string `_MSGS`, bound on the module's first comment or blank line before its code (at
the end when it has none): `raise ValueError("tariffs must be
1..16, not %r" % t)` becomes `raise ValueError(_MSGS[120:148] % t)`. The message is made (a new
str) only when it is used, on a path that is about to allocate for it anyway (the exception,
the formatted line). Every edit stays on its line, so a traceback points at the source line.

Left alone: literals at module level (they run at import, before `_MSGS` is bound), f-string
parts, bytes, literals spanning lines, what an `except MemoryError` handler says (reading the
file would allocate where the heap has run out), and modules with fewer than two messages (one string
object then costs what it saves). Sources, tests and host code keep the literals.

With a `Book` (what `umeter build` gives for `.mpy` files), the messages leave the module
altogether: the package's messages are one UTF-8 file, `msgs.txt` beside the package's
`__init__`, each text once, and `_MSGS` is the package's `msg` function, which reads a
message from the file when it is used: `raise ValueError(_MSGS(120, 148) % t)`. From `.mpy`
files a module's message string is held as long as the module, ~4 KB in a running node on
either port (docs/memory.md); the file costs a read of flash on a path that is about to
allocate anyway. When the file cannot be read, `msg` returns a str that names the message
(its offsets, which `Book.text` turns back into the message on the host) and takes any `%`
arguments, so an error is still reported, not replaced by another. Frozen modules keep the
string (their strings run from flash already) and `meternode/__init__.py` keeps its own
messages (it defines `msg`).
"""

from __future__ import annotations

import ast

NAME = "_MSGS"
# calls whose long string arguments are seldom made: log lines, events, the module names
# handed to meternode.run()/forget() (a module loaded for one call: a start-up, a command, a
# stats request; each name a str object in every module that names it), the reasons given
# for dropping a connection, for a reboot and for a relay's change, and exceptions made
# (a callee named ...Error)
LOGGERS = frozenset({"log", "_log", "print", "event", "_event", "run", "forget", "drop", "reboot", "_reboot", "_apply"})
# a reason handed back in an answer or a stats entry: the value of a dict's "why" or "error"
# key, in a display ({"ok": False, "why": "..."}) or set by subscript (d["error"] = "..."),
# or of a variable of that name (why = "...")
REASONS = frozenset({"why", "error"})
MIN_LEN = 11  # MicroPython interns shorter literals (MICROPY_ALLOC_PARSE_INTERN_STRING_LEN 10)
BOOK_FILE = "msgs.txt"  # beside the package's __init__ (lib/meternode/msgs.txt)


class Book:
    """The messages of a package's modules as one file: `add(text)` gives the text's byte
    offsets (a text added twice is stored once), `data` is the file."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._at: dict[str, tuple[int, int]] = {}

    def add(self, text: str) -> tuple[int, int]:
        if text not in self._at:
            raw = text.encode()
            self._at[text] = (len(self.data), len(self.data) + len(raw))
            self.data += raw
        return self._at[text]

    def text(self, a: int, b: int) -> str:
        """The message at offsets a..b (what a node says when its file was unreadable)."""
        return bytes(self.data[a:b]).decode()


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_reason(key: ast.AST | None) -> bool:
    return isinstance(key, ast.Constant) and key.value in REASONS


def _told(v: ast.AST) -> list[ast.AST]:
    # the literals a reason is made of: itself, a %-format's text, either branch of an `a if c
    # else b` (not a dict key or an argument read on the way: those are not what is told)
    if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Mod):
        return _told(v.left)
    if isinstance(v, ast.IfExp):
        return _told(v.body) + _told(v.orelse)
    return [v] if isinstance(v, ast.Constant) else []


def _on_memory_error(h: ast.AST) -> bool:
    # an `except MemoryError` handler (or one naming it in a tuple): the heap has run out, and
    # reading a message from the file would allocate more than the literal
    if not isinstance(h, ast.ExceptHandler) or h.type is None:
        return False
    names = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
    return any(isinstance(n, ast.Name) and n.id == "MemoryError" for n in names)


def messages(tree: ast.Module) -> list[ast.Constant]:
    """The literals fold_messages() moves, in source order."""
    found: list[ast.Constant] = []
    reasons: set[int] = set()  # the ids of the literals a reason is made of (REASONS)
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values, strict=True):
                if _is_reason(k):
                    reasons.update(id(c) for c in _told(v))
        elif isinstance(n, ast.Assign) and any(
            _is_reason(t.slice) if isinstance(t, ast.Subscript) else isinstance(t, ast.Name) and t.id in REASONS
            for t in n.targets
        ):
            reasons.update(id(c) for c in _told(n.value))

    def walk(node: ast.AST, in_fn: bool, in_msg: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.JoinedStr):
                continue  # an f-string's parts are not literals of their own
            if _on_memory_error(child):
                continue  # what a MemoryError handler says stays in RAM
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            msg = in_msg or (
                fn
                and (
                    isinstance(child, ast.Raise)
                    or id(child) in reasons
                    or (
                        isinstance(child, ast.Call)
                        and ((_callee(child) or "").endswith("Error") or _callee(child) in LOGGERS)
                    )
                )
            )
            if (
                msg
                and isinstance(child, ast.Constant)
                and type(child.value) is str
                and len(child.value) >= MIN_LEN
                and child.lineno == child.end_lineno
            ):
                found.append(child)
            walk(child, fn, msg)

    walk(tree, False, False)
    return found


def fold_messages(text: str, book: Book | None = None) -> str | None:
    """The module's text with its messages in `_MSGS` (a string of the module, or with `book`
    a function that reads them from the book's file), or None when there is nothing to move
    (without a book: fewer than two messages) or the module already binds the name."""
    tree = ast.parse(text)
    if any(isinstance(n, ast.Name) and n.id == NAME for n in ast.walk(tree)):
        return None
    lits = messages(tree)
    if len({c.value for c in lits}) < (1 if book is not None else 2):
        return None
    at: dict[str, tuple[int, int]] = {}
    parts: list[str] = []
    n = 0
    for c in lits:
        if c.value not in at:
            if book is not None:
                at[c.value] = book.add(c.value)
                continue
            at[c.value] = (n, n + len(c.value))
            parts.append(c.value)
            n += len(c.value)
    lines = text.splitlines(keepends=True)
    blines = [ln.encode() for ln in lines]  # ast columns are UTF-8 byte offsets
    use = "{0}({1}, {2})" if book is not None else "{0}[{1}:{2}]"
    for c in sorted(lits, key=lambda c: (c.lineno, c.col_offset), reverse=True):
        a, b = at[c.value]
        line = blines[c.lineno - 1]
        blines[c.lineno - 1] = line[: c.col_offset] + use.format(NAME, a, b).encode() + line[c.end_col_offset :]
    bind = f"from meternode import msg as {NAME}" if book is not None else f"{NAME} = {''.join(parts)!r}"
    first = tree.body[0].lineno if tree.body else len(blines) + 1
    for i in range(first - 1):
        ln = blines[i].strip()
        if not ln or ln.startswith(b"#"):  # before any code: bound before a function can run
            blines[i] = bind.encode() + (b"  " + ln if ln else b"") + b"\n"
            return b"".join(blines).decode()
    out = b"".join(blines).decode()
    return out + ("" if out.endswith("\n") else "\n") + bind + "\n"
