"""The RAM budget of a node, as `python benchmarks/memory.py` measured it (docs/memory.md).

A node is given the heap it holds once running plus MARGIN_KB: the budget every configuration
is held to (it runs a simulated day in that heap without a MemoryError, fragmentation
included). HELD_KB is what each configuration held after its run, booted by main.py on the sim
board, by the port's word size (8: the 64-bit unix port; 4: 32-bit boards and the board-like
32-bit build) and by how the package is loaded (.mpy files, run in place from ROMFS, or frozen
into the firmware).
Re-measure after a change that moves these figures and update the table: tests/host/
test_memory_budget.py holds a running node to it.
"""

from __future__ import annotations

MARGIN_KB = 32

# configuration -> KB held (benchmarks/memory.py "nodes", run_held, rounded up + 2 KB: run-to-run noise and
# tests/host/test_memory_budget.py's shorter run, other node ids, a command nearer the end)
HELD_KB: dict[int, dict[str, dict[str, int]]] = {
    8: {
        "mpy": {"plain": 104, "+store": 124, "+cmd_key": 128, "+policy": 142, "+fleet": 162,
                "+lora": 131, "+policy+lora": 169, "+fleet+lora": 203},
        "romfs": {"plain": 72, "+store": 85, "+cmd_key": 88, "+policy": 96, "+fleet": 108,
                  "+lora": 91, "+policy+lora": 115, "+fleet+lora": 141},
        "frozen": {"plain": 52, "+store": 63, "+cmd_key": 65, "+policy": 73, "+fleet": 81,
                   "+lora": 65, "+policy+lora": 86, "+fleet+lora": 94},
    },
    4: {
        "mpy": {"plain": 73, "+store": 87, "+cmd_key": 91, "+policy": 101, "+fleet": 115,
                "+lora": 92, "+policy+lora": 119, "+fleet+lora": 142},
        "romfs": {"plain": 44, "+store": 51, "+cmd_key": 53, "+policy": 58, "+fleet": 65,
                  "+lora": 54, "+policy+lora": 69, "+fleet+lora": 84},
        "frozen": {"plain": 30, "+store": 36, "+cmd_key": 37, "+policy": 41, "+fleet": 46,
                   "+lora": 37, "+policy+lora": 49, "+fleet+lora": 53},
    },
}
# 2026-12-07, session 24: every node with commands operated during the run (every command an
# operator uses; +fleet: a signed policy bundle too; benchmarks/memory.py Operator), both ports,
# frozen too (the local builds below, rebuilt from that tree). The LoRa rows since session 23.
# "frozen": `benchmarks/memory.py --frozen` on local builds of the unix port with the package
# frozen in (docs/memory.md, "Frozen, measured"; 2026-12-07, session 19). CI has no such port:
# tests/host/test_memory_budget.py holds a node to these where the interpreter has one.
CONFIGS = ("plain", "+store", "+cmd_key", "+policy", "+fleet", "+lora", "+policy+lora", "+fleet+lora")
# LoRaWAN beside MQTT in a configuration not measured with it ("+store+lora", "+cmd_key+lora"):
# what LoRaWAN adds to the +policy node (held("+policy+lora") - held("+policy")), the largest
# node measured under the seventh qstr pool with it
_LORA_ON = "+policy"


def kind(config: dict) -> str:
    """The budget configuration a node's config.json falls under (the largest it reaches), with
    "+lora" when it has LoRaWAN ("+lora" alone: LoRaWAN without MQTT)."""
    if config.get("fleet"):
        k = "+fleet"
    elif config.get("policy"):
        k = "+policy"
    elif not config.get("mqtt"):
        k = "plain"
    else:
        k = "+cmd_key" if config.get("cmd_key") else "+store"
    if config.get("lora"):
        return "+lora" if k == "plain" else k + "+lora"
    return k


def installed_load(device_manifest: dict) -> str:
    """How a provisioned board holds the package, read from the manifest.json `umeter provision`
    wrote there: frozen into its firmware, a ROMFS image, or .mpy files (a HELD_KB load)."""
    if device_manifest.get("frozen"):
        return "frozen"
    return "romfs" if device_manifest.get("romfs") else "mpy"


def held_kb(config_kind: str, *, words: int, load: str = "mpy") -> int:
    try:
        t = HELD_KB[words][load]
        if config_kind not in t and config_kind.endswith("+lora"):  # measured on the +policy node
            return t[config_kind[: -len("+lora")]] + t[_LORA_ON + "+lora"] - t[_LORA_ON]
        return t[config_kind]
    except KeyError:
        raise ValueError(f"no budget for {config_kind!r} loaded as {load} on a {words * 8}-bit port") from None


# KB a +fleet node needs on top of held + MARGIN_KB to take in a signed bundle while it runs
# (a policy bundle applied, then an inline firmware bundle staged: the message, its parse, the
# bundle path loaded for it).  Bisected with tests/host/test_memory_budget.py's bundle test and
# its streamed whole-build test, 4-KB steps, .mpy (2026-12-06, session 8, after the sixth RAM
# round and the streamed manifest): 64-bit fails at +8 and passes at +12, 32-bit fails at +0 and
# passes at +4 (it was +12 / +8 when an inline bundle could be a 12-KB message); one step more
# here (runs pass and fail within a step of each other).  Every message of a firmware bundle,
# its manifest included, now fits the node's 1-KB MQTT buffer (umeter.campaign).  Since
# session 16 the node no longer holds the policy schema between bundles (6.3 KB on 64-bit,
# 5.6 on 32-bit): it is loaded for each bundle, so the room for one is that much larger while
# what the node holds is that much smaller.  Bisected again (both bundle tests of
# test_memory_budget.py): 64-bit fails at +12 and passes at +16, 32-bit fails at +8 and passes
# at +12; one step more here.
BUNDLE_KB = {8: 20, 4: 16}


# KB of machine code a node keeps in the gc heap on a board whose port puts the machine code it
# loads there (umeter.mpyfile.IN_GC_HEAP: the rp2 port, armv6m): the viper kernels of
# metrology/kernels.py, the only machine code a node loads. benchmarks/memory.py's
# budget.native_kb (gc_heap_kb) on the board's own build, rounded up (2026-12-06: 5.7 KB).
# HELD_KB leaves it out: the unix ports map machine code outside their gc heap, and esp32
# commits it to IRAM. tests/host/test_mpyfile.py holds this to the build.
NATIVE_KB = {"armv6m": 6}


# KB a board's own HAL holds beyond the sim board's (HELD_KB was measured on the sim board), by
# word size: `halinit.make(board, config)` under the chip stand-ins of hil/umeter_hil/board_shim,
# `.mpy` for the port's architecture, rounded up (tests/host/test_board_hal.py measures it;
# 2026-12-06). A Pico W's is its 8-block ADC DMA ring and board modules. Upper bounds where the
# stand-ins keep Python objects for what a board has in C (the MCP3208's PIO, the ESP32's
# timers); the code part is in flash from ROMFS, so for ROMFS they err on the safe side too.
HAL_KB = {
    8: {"pico_w": 21, "pico_w_mcp3208": 39, "esp32_devkitc": 22},
    4: {"pico_w": 16, "pico_w_mcp3208": 30, "esp32_devkitc": 15},
}

# KB the files a node keeps open hold on a board's LittleFS beyond the unix port's file objects
# (HELD_KB was measured on the host's file system), by word size: the record log's segment
# open to append and the one the outbox reads, each with LittleFS's file cache (1024 bytes at
# the RP2040's progsize 256, 128 at the ESP32's 32: MicroPython's own settings for their file
# systems), rounded up (tests/host/test_board_hal.py measures it on a real LittleFS on the
# boards' flash geometry, hil/umeter_hil/board_shim/norflash.py; 2026-12-08). The file
# system's own buffers are made at boot, before the node: the free heap it starts with.
FS_KB = {
    8: {"pico_w": 3, "pico_w_mcp3208": 3, "esp32_devkitc": 1},
    4: {"pico_w": 3, "pico_w_mcp3208": 3, "esp32_devkitc": 1},
}


def words_for(arch: str | None) -> int:
    """Bytes per machine word on a board of this mpy arch (x64: the 64-bit unix port)."""
    return 8 if arch in ("x64", "rv64imc") else 4


def need_parts(config_kind: str, *, arch: str | None, load: str = "mpy", board: str | None = None) -> list:
    """What a node of this configuration needs on a board of `arch` (of type `board`,
    boards/NAME.json), KB by part: held at its word size, the margin, a fleet node's bundle room,
    the machine code its port keeps in the gc heap, what its HAL holds beyond the sim board's,
    what its open files hold on the board's LittleFS."""
    words = words_for(arch)
    parts = _node_parts(config_kind, words, load)
    if NATIVE_KB.get(arch or "") and load != "frozen":  # frozen machine code stays in flash
        parts.append(("machine code", NATIVE_KB[arch or ""]))
    if HAL_KB[words].get(board or ""):
        parts.append((f"{board} HAL", HAL_KB[words][board or ""]))
    if FS_KB[words].get(board or ""):
        parts.append(("file system", FS_KB[words][board or ""]))
    return parts


def board_need(config_kind: str, *, arch: str | None, load: str = "mpy", board: str | None = None) -> int:
    """Bytes of free heap a node of this configuration needs on such a board (need_parts)."""
    return sum(kb for _, kb in need_parts(config_kind, arch=arch, load=load, board=board)) * 1024


def _node_parts(config_kind: str, words: int, load: str) -> list:
    # what any node of the configuration needs, KB by part: what it holds + MARGIN_KB (+
    # BUNDLE_KB for a fleet node, which must also take in a signed bundle)
    parts = [("held", held_kb(config_kind, words=words, load=load)), ("margin", MARGIN_KB)]
    if config_kind.startswith("+fleet"):
        parts.append(("bundle", BUNDLE_KB[words]))
    return parts


def heap_for(config_kind: str, *, words: int, load: str = "mpy") -> int:
    """Bytes of heap for a node of this configuration on the sim board (_node_parts)."""
    return sum(kb for _, kb in _node_parts(config_kind, words, load)) * 1024
