"""store/storeinit.py (start-up code, loaded and forgotten) keeps private copies of the
on-flash layouts it reads -- the record log's, the checkpoint slots', the registers' units --
as `_NAME = const(...)`, which the compiler erases (a public name read across modules would be
a global and an interned name in every running node). This holds each copy to its owner's
value, so a layout changed in one place and not the other fails here, not on a board's flash."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FW = Path(__file__).resolve().parents[2] / "firmware" / "meternode"

# storeinit's name -> (owner module, the owner's name)
COPIES = {
    "_TRAILER": ("store/log.py", "_TRAILER"),
    "_META": ("store/log.py", "_META"),
    "_CK_MAGIC": ("store/checkpoint.py", "_MAGIC"),
    "_CK_VERSION": ("store/checkpoint.py", "_VERSION"),
    "_CK_HDR": ("store/checkpoint.py", "_HDR"),
    "_CK_HDR_LEN": ("store/checkpoint.py", "_HDR_LEN"),
    "_UJ_PER_MILLI_H": ("metrology/registers.py", "_UJ_PER_MILLI_H"),
    "_LO_BITS": ("metrology/registers.py", "_LO_BITS"),
    "_LO_MASK": ("metrology/registers.py", "_LO_MASK"),
}

# and its own: config.store's defaults, which `umeter provision` reads for its flash check
OWN = {"_SEGMENT_BYTES", "_MAX_BYTES"}


def consts(rel: str) -> dict[str, object]:
    """The module's `NAME = const(<literal>)` assignments, evaluated."""
    out = {}
    for node in ast.parse((FW / rel).read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "const"
        ):
            out[node.targets[0].id] = eval(compile(ast.Expression(node.value.args[0]), rel, "eval"), {})
    return out


def test_every_private_copy_in_storeinit_is_listed_here():
    # a new copy must be added to COPIES (storeinit's own constants are the config defaults, OWN)
    assert set(consts("store/storeinit.py")) == set(COPIES) | OWN


@pytest.mark.parametrize("name", sorted(COPIES))
def test_storeinit_reads_the_layout_its_owner_writes(name):
    owner, theirs = COPIES[name]
    mine = consts("store/storeinit.py")[name]
    assert theirs in consts(owner), f"{owner} has no {theirs} any more: storeinit.{name} copies it"
    want = consts(owner)[theirs]
    assert mine == want, f"storeinit.{name} = {mine!r} but {owner} {theirs} = {want!r}"
