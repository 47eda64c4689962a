"""Fold the firmware's cross-module integer constants at build time.

MicroPython erases a module's private constants (`_X = const(5)`: no global, no interned
name) and inlines its public ones inside the module (`X = const(5)`), but a public constant
read from another module (`records.EV_RELAY`, `from meternode.store.records import PROFILE`)
stays a global of its module and an attribute lookup in the reader, and its name is interned
for ever in every node that loads either (docs/memory.md: a full node interns ~1500 names).

`fold(sources)` takes {module name: source text} of the whole package and returns the texts
`umeter build` compiles instead, with:

- every read of another module's public `NAME = const(<int>)` replaced by its value, when the
  reader binds the module (or the name) only by import statements: `records.EV_RELAY` ->
  `7`, and `EV_RELAY` after `from ... import EV_RELAY` -> `7` (the name leaves the import
  list; an import left with no names becomes `pass`: it only fetched constants);
- in the defining module, a public constant that no module of the package reads any more in a
  way we did not fold renamed `_NAME`, so the compiler erases it too.

Only the build changes: the sources, the tests (which run from source) and the host code that
imports firmware modules keep the names. Line numbers are kept (every edit stays on its lines),
so a board's traceback points at the source line. A name read any other way (getattr, a module
bound otherwise, a local of the same name) is left alone and keeps its global.
"""

from __future__ import annotations

import ast

PACKAGE = "meternode"


def _consts(tree: ast.Module) -> dict[str, int]:
    # public module-level NAME = const(<int>) (the values the compiler would inline itself)
    out: dict[str, int] = {}
    for st in tree.body:
        if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)):
            continue
        name, v = st.targets[0].id, st.value
        if name.startswith("_") or not (isinstance(v, ast.Call) and getattr(v.func, "id", "") == "const"):
            continue
        if len(v.args) == 1 and isinstance(v.args[0], ast.Constant) and type(v.args[0].value) is int:
            out[name] = v.args[0].value
    return out


def _resolve(mod: str, node: ast.ImportFrom) -> str | None:
    # the absolute module an ImportFrom names (relative imports resolved against `mod`)
    if node.level == 0:
        return node.module
    parts = mod.split(".")
    base = parts[: len(parts) - node.level]  # `mod` is a module, not a package
    return ".".join(base + ([node.module] if node.module else []))


class _Module:
    def __init__(self, name: str, text: str, is_pkg: bool) -> None:
        self.name, self.text, self.is_pkg = name, text, is_pkg
        self.tree = ast.parse(text)
        self.consts = _consts(self.tree)
        self.edits: list[tuple[int, int, int, int, str]] = []  # (l0, c0, l1, c1, text)
        # every binding of a name anywhere in the module, by kind
        self.import_binds: dict[str, set[tuple[str, str | None]]] = {}  # name -> {(module, attr)}
        self.other_binds: set[str] = set()
        self.star = False  # the module has a star import: any bare name may be anyone's
        for n in ast.walk(self.tree):
            if isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names):
                self.star = True
            if isinstance(n, ast.Import):
                for a in n.names:
                    if a.asname:
                        self.import_binds.setdefault(a.asname, set()).add((a.name, None))
                    else:
                        self.other_binds.add(a.name.split(".")[0])  # binds the top package
            elif isinstance(n, ast.ImportFrom):
                src = self.source(n)
                for a in n.names:
                    self.import_binds.setdefault(a.asname or a.name, set()).add((src, a.name))
            elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                self.other_binds.add(n.id)
            elif isinstance(n, ast.arg):
                self.other_binds.add(n.arg)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler)):
                if n.name:
                    self.other_binds.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                self.other_binds.update(n.names)

    def edit(self, n: ast.AST, text: str) -> None:
        self.edits.append((n.lineno, n.col_offset, n.end_lineno, n.end_col_offset, text))  # type: ignore[attr-defined]

    def source(self, n: ast.ImportFrom) -> str:
        # the absolute module an ImportFrom of this module names
        return _resolve(self.name + ".x" if self.is_pkg else self.name, n) or ""

    def module_of(self, name: str) -> str | None:
        # the module `name` is bound to by import here (`from a import b`: "a.b"), if it is
        b = self.bound_to(name)
        return None if b is None else b[0] if b[1] is None else f"{b[0]}.{b[1]}"

    def bound_to(self, name: str) -> tuple[str, str | None] | None:
        # (module, attr) when `name` is bound only by imports, all of the same thing
        b = self.import_binds.get(name)
        if not b or len(b) != 1 or name in self.other_binds:
            return None
        return next(iter(b))


def fold(sources: dict[str, str], packages: set[str] | None = None) -> dict[str, str]:
    """{module: source} -> {module: source to compile} for the modules that changed.
    `packages`: the module names that are packages (their __init__.py)."""
    packages = packages or set()
    mods = {m: _Module(m, t, m in packages) for m, t in sources.items()}
    consts = {m: M.consts for m, M in mods.items() if M.consts}
    names = {name for cs in consts.values() for name in cs}
    # what each module reads from another module of the package, by name: a constant a
    # module imports is not taken out of its globals when another module reads it from there
    reads: set[tuple[str, str]] = set()
    for M in mods.values():
        for n in ast.walk(M.tree):
            if isinstance(n, ast.ImportFrom):
                reads.update((M.source(n), a.name) for a in n.names)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                target = M.module_of(n.value.id)
                if target is not None:
                    reads.add((target, n.attr))
    # reads of a constant's name we could not fold: its global stays in its module
    kept: set[tuple[str, str]] = set()

    def keep(name: str) -> None:
        kept.update((m, name) for m, cs in consts.items() if name in cs)

    for M in mods.values():
        for n in ast.walk(M.tree):
            if isinstance(n, ast.Attribute) and n.attr in names:
                target = M.module_of(n.value.id) if isinstance(n.value, ast.Name) else None
                ok = target in consts and n.attr in consts[target] and n.lineno == n.end_lineno
                if ok and isinstance(n.ctx, ast.Load):
                    M.edit(n, str(consts[target][n.attr]))
                elif target != M.name:
                    keep(n.attr)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in names:
                b = M.bound_to(n.id)
                if b is not None and b[1] is not None and b[0] in consts and b[1] in consts[b[0]]:
                    M.edit(n, str(consts[b[0]][b[1]]))
                elif M.star:
                    keep(n.id)  # maybe from a star import: leave every definition alone
                # else the module's own name (bound here some other way), not the constant
        for n in ast.walk(M.tree):
            # imported constants: out of the import list (their uses are folded above)
            if not isinstance(n, ast.ImportFrom):
                continue
            src = M.source(n)
            gone = {
                a.name for a in n.names
                if src in consts and a.name in consts[src] and M.bound_to(a.asname or a.name)
                and (M.name, a.asname or a.name) not in reads
            }  # fmt: skip
            # a constant imported by name and not taken out of the import: its global must stay
            kept.update((src, a.name) for a in n.names if a.name in consts.get(src, ()) and a.name not in gone)
            if gone:
                left = [a for a in n.names if a.name not in gone]
                kept_names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in left)
                M.edit(n, f"from {'.' * n.level}{n.module or ''} import {kept_names}" if left else "pass")
    # the defining modules: a constant nobody reads unfolded becomes private (a free name)
    for m, cs in consts.items():
        M = mods[m]
        taken = set(M.consts) | M.other_binds | set(M.import_binds)
        for name in cs:
            if (m, name) in kept:
                continue
            new = next(c for c in ("_" + name, "_" + name + "_", "__" + name + "_") if c not in taken)
            taken.add(new)
            for n in ast.walk(M.tree):
                if isinstance(n, ast.Name) and n.id == name:
                    M.edit(n, new)
    return {m: _apply(M.text, M.edits) for m, M in mods.items() if M.edits}


def _apply(text: str, edits: list[tuple[int, int, int, int, str]]) -> str:
    lines = text.splitlines(keepends=True)
    # ast columns are UTF-8 byte offsets
    blines = [ln.encode() for ln in lines]
    seen = set()
    for l0, c0, l1, c1, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        if (l0, c0) in seen:
            continue
        seen.add((l0, c0))
        if l0 == l1:
            b = blines[l0 - 1]
            blines[l0 - 1] = b[:c0] + new.encode() + b[c1:]
        else:  # a multi-line import: the new text on its first line, its other lines kept empty
            first, last = blines[l0 - 1], blines[l1 - 1]
            blines[l0 - 1] = first[:c0] + new.encode() + last[c1:].rstrip(b"\r\n") + b"\n"
            for i in range(l0, l1):
                blines[i] = b"\n"
    return b"".join(blines).decode()
