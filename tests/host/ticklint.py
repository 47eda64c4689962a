"""Finds tick arithmetic that a board's wrapping ticks break (ARCHITECTURE.md, "The board's
arithmetic is the truth"): `+`, `-` or an ordering comparison (`<`, `>`, `<=`, `>=`) on a tick
value, which only `ticks_diff` / `ticks_add` may take.

A tick value is what a ticks call returns (`ticks_ms()`, `ticks_us()`, `ticks_cpu()`,
`ticks_add()` on any object or imported under any name, `meternode.ticks`' `ms()`, `us()` and
`add()` under any name), and what holds one: a local assigned one (per function), an attribute
`self.x` assigned one (per class), and a parameter that a call anywhere in the package passes
one to. A call is matched to functions by name and arity (a plain or `self.` call to the
module's own function of that name first): a method `save` given a tick marks every `save`'s
parameter that takes it, an over-approximation that `# ticks: not a tick` on the flagged line
answers. Values that reach code through containers (a list's slot, a tuple) are not followed.

`ticks.py` itself is left out: it is the arithmetic on the ports that do not wrap.

    python tests/host/ticklint.py [DIR...]   # each finding as path:line: code; exit 1 if any
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

_TICK_METHODS = {"ticks_ms", "ticks_us", "ticks_cpu", "ticks_add"}
_TICKS_MODULE = "meternode.ticks"
_TICKS_FUNCS = {"ms", "us", "add"}
_ORDER = (ast.Lt, ast.Gt, ast.LtE, ast.GtE)
WAIVER = "# ticks: not a tick"


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


class _Module:
    def __init__(self, path: Path, rel: str, text: str):
        self.path, self.rel = path, rel
        self.lines = text.splitlines()
        self.tree = ast.parse(text, filename=rel)
        self.parent: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parent[child] = node
        # names bound to meternode.ticks' functions / to the module itself
        self.tick_names = set(_TICK_METHODS)
        self.tick_modules = {"ticks"}
        self.aliases: dict[str, str] = {}  # a function imported under another name: its own
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    if a.name in _TICK_METHODS or (node.module == _TICKS_MODULE and a.name in _TICKS_FUNCS):
                        self.tick_names.add(a.asname or a.name)
            elif isinstance(node, ast.ImportFrom) and node.module == "meternode":
                for a in node.names:
                    if a.name == "ticks":
                        self.tick_modules.add(a.asname or "ticks")

    def enclosing(self, node: ast.AST, kinds: tuple[type, ...]) -> ast.AST | None:
        p = self.parent.get(node)
        while p is not None and not isinstance(p, kinds):
            p = self.parent.get(p)
        return p


class _Lint:
    def __init__(self, modules: list[_Module]):
        self.modules = modules
        self.ticky: set[tuple] = set()  # (scope node id, name) / (class node id, "self.x")
        self.defs: dict[str, list[tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
        for m in modules:
            for node in ast.walk(m.tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.defs.setdefault(node.name, []).append((m, node))

    def key(self, m: _Module, node: ast.AST) -> tuple | None:
        if isinstance(node, ast.Name):
            f = m.enclosing(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            return (id(f) if f is not None else id(m.tree), node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            c = m.enclosing(node, (ast.ClassDef,))
            return (id(c) if c is not None else id(m.tree), "self." + node.attr)
        return None

    def is_source(self, m: _Module, node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        f = node.func
        if isinstance(f, ast.Name):
            return f.id in m.tick_names
        if isinstance(f, ast.Attribute):
            if f.attr in _TICK_METHODS:
                return True
            return isinstance(f.value, ast.Name) and f.value.id in m.tick_modules and f.attr in _TICKS_FUNCS
        return False

    def is_tick(self, m: _Module, node: ast.AST) -> bool:
        if self.is_source(m, node):
            return True
        if isinstance(node, ast.IfExp):
            return self.is_tick(m, node.body) or self.is_tick(m, node.orelse)
        k = self.key(m, node)
        return k is not None and k in self.ticky

    def _mark(self, k: tuple | None) -> bool:
        if k is None or k in self.ticky:
            return False
        self.ticky.add(k)
        return True

    def _params(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, method_call: bool) -> list[ast.arg]:
        ps = [*fn.args.posonlyargs, *fn.args.args]
        if method_call and ps and ps[0].arg in ("self", "cls"):
            ps = ps[1:]
        return ps

    def propagate(self) -> None:
        changed = True
        while changed:
            changed = False
            for m in self.modules:
                for node in ast.walk(m.tree):
                    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                        if self.is_tick(m, node.value):
                            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                                changed |= self._mark(self.key(m, t))
                    elif isinstance(node, ast.Call):
                        changed |= self._call(m, node)

    def _call(self, m: _Module, call: ast.Call) -> bool:
        f = call.func
        name = (
            m.aliases.get(f.id, f.id) if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        )
        if name is None or name not in self.defs or self.is_source(m, call):
            return False
        pos = [i for i, a in enumerate(call.args) if self.is_tick(m, a)]
        kws = {k.arg for k in call.keywords if k.arg and self.is_tick(m, k.value)}
        if not pos and not kws:
            return False
        changed = False
        defs = self.defs[name]
        # a plain or self. call of a function this module has is to that one
        local = isinstance(f, ast.Name) or (isinstance(f.value, ast.Name) and f.value.id == "self")
        here = [d for d in defs if d[0] is m] if local else []
        for _dm, fn in here or defs:
            ps = self._params(fn, isinstance(f, ast.Attribute))
            required = len(ps) - len(fn.args.defaults)
            if not fn.args.vararg and not required <= len(call.args) <= len(ps):
                continue  # another function of that name
            for i in pos:
                if i < len(ps):
                    changed |= self._mark((id(fn), ps[i].arg))
            for p in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
                if p.arg in kws:
                    changed |= self._mark((id(fn), p.arg))
        return changed

    def findings(self) -> list[Finding]:
        out = []
        for m in self.modules:
            for node in ast.walk(m.tree):
                operands: list[ast.AST] = []
                if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
                    operands = [node.left, node.right]
                elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Add, ast.Sub)):
                    operands = [node.target, node.value]
                elif isinstance(node, ast.Compare) and any(isinstance(o, _ORDER) for o in node.ops):
                    operands = [node.left, *node.comparators]
                if any(self.is_tick(m, x) for x in operands):
                    line = m.lines[node.lineno - 1]
                    if WAIVER not in line:
                        out.append(Finding(m.rel, node.lineno, ast.unparse(node)))
        return sorted(set(out), key=lambda f: (f.path, f.line))


def lint(root: Path, sources: dict[str, str] | None = None) -> list[Finding]:
    """The findings in every .py under `root` (a package's parent directory), or in
    `sources` ({relative path: text}) when given."""
    if sources is None:
        sources = {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.py")) if p.name != "ticks.py"}
    modules = [_Module(root / rel, rel, text) for rel, text in sources.items()]
    lnt = _Lint(modules)
    lnt.propagate()
    return lnt.findings()


if __name__ == "__main__":  # python tests/host/ticklint.py DIR...: each finding, exit 1 if any
    import sys

    found = [f for d in sys.argv[1:] or ["firmware"] for f in lint(Path(d))]
    for f in found:
        print(f)
    sys.exit(1 if found else 0)
