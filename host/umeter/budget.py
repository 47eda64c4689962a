"""The RAM budget of a node, as `python benchmarks/memory.py` measured it (docs/memory.md).

A node is given the heap it holds once running plus MARGIN_KB: the budget every configuration
is held to (it runs a simulated day in that heap without a MemoryError, fragmentation
included). HELD_KB is what each configuration held after its run, booted by main.py on the sim
board, by the port's word size (8: the 64-bit unix port; 4: 32-bit boards and the board-like
32-bit build) and by how the package is loaded (.mpy files, or run in place from ROMFS).
Re-measure after a change that moves these figures and update the table: tests/host/
test_memory_budget.py holds a running node to it.
"""

from __future__ import annotations

MARGIN_KB = 32

# configuration -> KB held (benchmarks/memory.py "nodes", run_held, rounded up + 2 KB: run-to-run noise and
# tests/host/test_memory_budget.py's shorter run, other node ids, a command nearer the end)
HELD_KB: dict[int, dict[str, dict[str, int]]] = {
    8: {
        "mpy": {"plain": 132, "+store": 162, "+cmd_key": 168, "+policy": 189, "+fleet": 245},
        "romfs": {"plain": 93, "+store": 114, "+cmd_key": 117, "+policy": 131, "+fleet": 169},
    },
    4: {
        "mpy": {"plain": 92, "+store": 112, "+cmd_key": 117, "+policy": 131, "+fleet": 171},
        "romfs": {"plain": 56, "+store": 67, "+cmd_key": 70, "+policy": 77, "+fleet": 101},
    },
}
CONFIGS = ("plain", "+store", "+cmd_key", "+policy", "+fleet")


def kind(config: dict) -> str:
    """The budget configuration a node's config.json falls under (the largest it reaches)."""
    if config.get("fleet"):
        return "+fleet"
    if config.get("policy"):
        return "+policy"
    if not config.get("mqtt"):
        return "plain"
    return "+cmd_key" if config.get("cmd_key") else "+store"


def held_kb(config_kind: str, *, words: int, load: str = "mpy") -> int:
    try:
        return HELD_KB[words][load][config_kind]
    except KeyError:
        raise ValueError(f"no budget for {config_kind!r} loaded as {load} on a {words * 8}-bit port") from None


def heap_for(config_kind: str, *, words: int, load: str = "mpy") -> int:
    """Bytes of heap for a node of this configuration: what it holds + MARGIN_KB."""
    return (held_kb(config_kind, words=words, load=load) + MARGIN_KB) * 1024
