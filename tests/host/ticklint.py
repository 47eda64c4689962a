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
answers. A value is followed through containers too: a tuple or list made with a tick in it
and unpacked or indexed, a slot assigned one (a constant or const()-style NAME index is that
slot; any other index, any slot), a list appended one and iterated, indexed or popped; a
container is one object in a caller and a callee, through `t = x` and through another
object's attribute of that name (`k.nettime` in one module, `self.nettime` in its class);
`ticks_ms` itself kept in an attribute and called later; a value masked with `&`; calls
through `meternode.run("module", "function", ...)`; and what a function returns, where the
call is known to be to it (the module's own function or one imported by name, `mod.f()` of
a module imported, `self.f()` in its class, `meternode.run`) — not a method on another object
matched by name alone, which would spread every `get()`'s return to every other `get()`.

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
        self.imported: dict[str, str] = {}  # a name imported: what it is ("meternode.x.f")
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    if a.name in _TICK_METHODS or (node.module == _TICKS_MODULE and a.name in _TICKS_FUNCS):
                        self.tick_names.add(a.asname or a.name)
                    if node.module == "meternode" and a.name == "ticks":
                        self.tick_modules.add(a.asname or "ticks")
                    if node.module and not node.level:
                        self.imported[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.imported[a.asname] = a.name
        self.top = {n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}

    def enclosing(self, node: ast.AST, kinds: tuple[type, ...]) -> ast.AST | None:
        p = self.parent.get(node)
        while p is not None and not isinstance(p, kinds):
            p = self.parent.get(p)
        return p


_ANY = "[*]"
_DEPTH = 3  # containers nested deeper than this are not followed
_ATTR = "attr"  # the key of an attribute of another object than self: (_ATTR, its name)
_RETURN = "return"  # a function's key for what it returns: (its node id, _RETURN)


def _index(node: ast.AST) -> str:
    """A subscript's slot as a path step: a constant or a const()-style NAME is that slot, any
    other index may be any slot."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return f"[{node.value}]"
    if isinstance(node, ast.Name) and node.id.lstrip("_").isupper():
        return f"[{node.id}]"
    return _ANY


def _step(path: str) -> tuple[str, str]:
    """'[0][*]' -> ('[0]', '[*]')."""
    k = path.index("]") + 1
    return path[:k], path[k:]


class _Lint:
    """A value's shape is the set of paths under which it holds a tick: "" is a tick itself,
    "[0]" the first item of a tuple that is one, "[*][0]" the first item of any element of a
    list of such tuples; `[NAME]` a slot indexed by a const() name."""

    def __init__(self, modules: list[_Module]):
        self.modules = modules
        self.shapes: dict[tuple, set[str]] = {}  # (scope node id, name) / (class node id, "self.x")
        self.defs: dict[str, list[tuple[_Module, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
        self.by_name = {m.rel.removesuffix(".py").replace("/", "."): m for m in modules}
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
        if isinstance(node, ast.Attribute):
            return _ATTR, node.attr
        return None

    def _shape(self, k: tuple) -> set[str]:
        # a container is one object wherever it is reached from: `self.nettime` in its class
        # holds the slots that another module filled through `k.nettime`
        out = set(self.shapes.get(k, ()))
        if k[1].startswith("self."):
            out |= self.shapes.get((_ATTR, k[1][5:]), set())
        return out

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

    def is_tick_function(self, m: _Module, node: ast.AST) -> bool:
        """`time.ticks_ms` itself, not called (kept to be called later)."""
        if isinstance(node, ast.Name):
            return node.id in m.tick_names
        return isinstance(node, ast.Attribute) and node.attr in _TICK_METHODS

    def paths(self, m: _Module, node: ast.AST) -> set[str]:
        """Where `node`'s value holds ticks ("()": it is a ticks function)."""
        if self.is_source(m, node):
            return {""}
        if self.is_tick_function(m, node):
            return {"()"}
        if isinstance(node, ast.IfExp):
            return self.paths(m, node.body) | self.paths(m, node.orelse)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):  # masked: still a tick
            return {s for s in self.paths(m, node.left) | self.paths(m, node.right) if s == ""}
        if isinstance(node, (ast.Tuple, ast.List)):
            return {f"[{i}]" + s for i, e in enumerate(node.elts) for s in self.paths(m, e)}
        if isinstance(node, ast.Subscript):
            step = _index(node.slice)
            out = set()
            for s in self.paths(m, node.value):
                if s.startswith("["):
                    first, rest = _step(s)
                    if first == step or _ANY in (first, step):
                        out.add(rest)
            return out
        if isinstance(node, ast.Await):
            return self.paths(m, node.value)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "pop":  # list.pop(): an element
                return {_step(s)[1] for s in self.paths(m, f.value) if s.startswith("[")}
            out = set()
            for fn in self._exact(m, node)[0]:  # what the function called returns
                out |= self.shapes.get((id(fn), _RETURN), set())
            fk = self.key(m, f)
            return out | ({""} if fk is not None and "()" in self.shapes.get(fk, ()) else set())
        k = self.key(m, node)
        return self._shape(k) if k is not None else set()

    def is_tick(self, m: _Module, node: ast.AST) -> bool:
        return "" in self.paths(m, node)

    def _add(self, k: tuple, paths: set[str]) -> bool:
        have = self.shapes.setdefault(k, set())
        if paths <= have:
            return False
        have |= paths
        return True

    def _mark(self, k: tuple | None, paths: set[str]) -> bool:
        paths = {s for s in paths if s.count("[") <= _DEPTH}  # (x = [x]: no end otherwise)
        if k is not None and k[0] == _ATTR:
            # another object's attribute, known by its name alone, keeps only slots: `x.t =
            # ms()` would make every `.t` of the package a tick
            paths = {s for s in paths if s.startswith("[")}
        if k is None or not paths:
            return False
        return self._add(k, paths)

    def _store(self, m: _Module, target: ast.AST, paths: set[str]) -> bool:
        """Assigning a value of shape `paths` to `target` (a name, self.x, a slot, an unpacking)."""
        if not paths:
            return False
        if isinstance(target, (ast.Tuple, ast.List)):
            changed = False
            for i, t in enumerate(target.elts):
                sub = set()
                for s in paths:
                    if s.startswith("["):
                        first, rest = _step(s)
                        if first in (f"[{i}]", _ANY):
                            sub.add(rest)
                changed |= self._store(m, t, sub)
            return changed
        if isinstance(target, ast.Subscript):
            step = _index(target.slice)
            return self._mark(self.key(m, target.value), {step + s for s in paths})
        return self._mark(self.key(m, target), paths)

    def _params(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, method_call: bool) -> list[ast.arg]:
        ps = [*fn.args.posonlyargs, *fn.args.args]
        if method_call and ps and ps[0].arg in ("self", "cls"):
            ps = ps[1:]
        return ps

    def _callees(self, m: _Module, call: ast.Call) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
        """The package's functions a call may be to: by name and arity (a plain or `self.` call
        to the module's own function of that name first)."""
        f = call.func
        name = (
            m.aliases.get(f.id, f.id) if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        )
        if name is None or name not in self.defs or self.is_source(m, call):
            return []
        defs = self.defs[name]
        local = isinstance(f, ast.Name) or (isinstance(f.value, ast.Name) and f.value.id == "self")
        here = [d for d in defs if d[0] is m] if local else []
        out = []
        for _dm, fn in here or defs:
            ps = self._params(fn, isinstance(f, ast.Attribute))
            required = len(ps) - len(fn.args.defaults)
            if fn.args.vararg or required <= len(call.args) <= len(ps):
                out.append(fn)
        return out

    def _exact(self, m: _Module, call: ast.Call) -> tuple[list, list[ast.AST], bool]:
        """(the functions `call` is to, the arguments they get, whether the first parameter is
        bound) where that is known, not guessed by name: the module's own function or one
        imported by name, a function of a module imported (`mod.f()`), a method of the class
        the call is in (`self.f()`), and `meternode.run("module", "function", ...)`."""
        f, a = call.func, call.args
        if isinstance(f, ast.Name):
            if (m.aliases.get(f.id, f.id) == "run" and len(a) >= 2
                    and all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in a[:2])):  # fmt: skip
                mod = self.by_name.get(a[0].value)
                return ([mod.top[a[1].value]] if mod and a[1].value in mod.top else []), a[2:], False
            if f.id in m.top:
                return [m.top[f.id]], a, False
            mod, _, name = m.imported.get(f.id, "").rpartition(".")
            there = self.by_name.get(mod)
            return ([there.top[name]] if there and name in there.top else []), a, False
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if f.value.id == "self":
                c = m.enclosing(f, (ast.ClassDef,))
                fns = [n for n in c.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] if c else []
                return [n for n in fns if n.name == f.attr], a, True
            there = self.by_name.get(m.imported.get(f.value.id, ""))
            return ([there.top[f.attr]] if there and f.attr in there.top else []), a, False
        return [], a, False

    def propagate(self) -> None:
        changed = True
        while changed:
            changed = False
            for m in self.modules:
                for node in ast.walk(m.tree):
                    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                        p = self.paths(m, node.value)
                        src = self.key(m, node.value)
                        for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                            changed |= self._store(m, t, p)
                            # `t = x`: one object, so the slots filled through t are x's
                            tk = self.key(m, t)
                            if src is not None and tk is not None:
                                changed |= self._mark(src, {s for s in self._shape(tk) if s.startswith("[")})
                    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                        it = {_step(s)[1] for s in self.paths(m, node.iter) if s.startswith("[")}
                        changed |= self._store(m, node.target, it)
                    elif isinstance(node, ast.Call):
                        changed |= self._call(m, node)
                    elif isinstance(node, ast.Return) and node.value is not None:
                        fn = m.enclosing(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            changed |= self._mark((id(fn), _RETURN), self.paths(m, node.value))

    def _call(self, m: _Module, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr in ("append", "insert") and call.args:
            p = self.paths(m, call.args[-1])  # an element of the list
            return self._mark(self.key(m, f.value), {_ANY + s for s in p})
        fns, args, method = self._callees(m, call), call.args, isinstance(f, ast.Attribute)
        exact = self._exact(m, call)
        if exact[0] and exact[1] is not call.args:  # meternode.run("module", "function", t, ...)
            fns, args, method = exact
        pos = dict(enumerate(args))
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        changed = False
        for fn in fns:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            ps = self._params(fn, method)
            pairs = [(pos[i], ps[i].arg) for i in pos if i < len(ps)]
            pairs += [(kws[a.arg], a.arg) for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
                      if a.arg in kws]  # fmt: skip
            for arg, name in pairs:
                changed |= self._mark((id(fn), name), self.paths(m, arg))
                # a container is one object in the caller and the callee: slots the callee
                # fills with ticks hold them in the caller's too
                filled = {s for s in self.shapes.get((id(fn), name), ()) if s.startswith("[")}
                changed |= self._mark(self.key(m, arg), filled)
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
