"""Meter-bus frames on the host, with the firmware's own codecs (meternode.gateway).

- `decode_frame(protocol, data)`: one DL/T 645 / CJ/T 188 / M-Bus / Modbus RTU frame (bytes
  or hex, spaces allowed) -> dict of its fields and readings in engineering units, exact
  decimals. A truncated frame or a bad checksum raises `FrameError` (a `ConfigError`) that
  says which.
- `scan_port(port, ...)`: discovery on a board's buses through its raw REPL, and
  `scan_virtual(...)` on the sim board's simulated meters here on CPython: both run the
  firmware's own `meternode.gateway.scan.discover`.
"""

from __future__ import annotations

import asyncio

from .errors import ConfigError

PROTOCOLS = {"645": "dlt645", "188": "cjt188", "mbus": "mbus", "modbus": "modbus"}


class FrameError(ConfigError):
    """A frame that is truncated, fails its checksum, or is not the protocol's."""


def parse_hex(text: str) -> bytes:
    s = "".join(text.split()).replace(":", "").replace("-", "")
    if s.lower().startswith("0x"):
        s = s[2:]
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise ConfigError(
            f"frame {text.strip()[:40]!r} is not hex", hint="give hex digits, spaces allowed, e.g. '68 01 00 …'"
        ) from None


def decode_frame(protocol: str, data: bytes | str) -> dict:
    """One frame -> its fields; raises FrameError naming what is wrong."""
    from meternode.gateway import decode as dec

    name = PROTOCOLS.get(protocol, protocol)
    if name not in PROTOCOLS.values():
        raise ConfigError(f"unknown protocol {protocol!r}", hint="one of 645, 188, mbus, modbus")
    b = parse_hex(data) if isinstance(data, str) else bytes(data)
    if not b:
        raise FrameError("empty frame", hint="give the frame's bytes as hex")
    try:
        return getattr(dec, name)(b)
    except ValueError as e:
        raise FrameError(f"{protocol} frame: {e}", hint="check that the whole frame was copied") from None


def render(d: dict) -> str:
    """A decoded frame as lines a person reads."""
    skip = {"readings", "records", "data"}
    head = " ".join(f"{k}={v}" for k, v in d.items() if k not in skip and not isinstance(v, dict | list))
    lines = [head]
    for r in d.get("readings", []):
        lines.append(f"  {r['code']:<14} {r['quantity']:<26} {r['value']} {r['unit']}".rstrip())
    if "registers" in d:
        lines.append("  registers: " + " ".join(f"{r:04X}" for r in d["registers"]))
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"  {k}: " + " ".join(f"{a}={b}" for a, b in v.items()))
    return "\n".join(lines)


# -- discovery ------------------------------------------------------------------------------
# Both paths run the firmware's own discovery (meternode.gateway.scan.discover): on CPython
# against the simulated meters, or on a board through its raw REPL.

VIRTUAL_PROBE = ("000000111111",)  # an address nobody answers at: the probe list is really asked
ALL = ("645", "188", "mbus", "modbus")


def scan_virtual(protocols: tuple[str, ...] = ALL, timeout_ms: int = 200, primary: tuple[int, int] = (0, 10),
                 ids: tuple[int, ...] = tuple(range(1, 11))) -> dict:
    """Discovery against the sim board's virtual meters (umeter_hil.bussim.demo_meters) on two
    ptys, configured as the sim node would be: -> {found, errors, requests}."""
    import json

    from meternode.gateway import scan
    from umeter_hil.bussim import SimBus, demo_config, demo_meters

    from . import unixport

    board = json.loads((unixport.boards_dir() / "sim.json").read_text())
    rs485, mb = demo_meters()
    with SimBus(rs485) as b1, SimBus(mb) as b2:
        config = {"gateway": demo_config(b1.port, b2.port)}
        return asyncio.run(scan.discover(board, config, protocols, VIRTUAL_PROBE, ids, primary, timeout_ms))


def _requests(protocols: tuple[str, ...], probe: tuple[str, ...], ids: tuple[int, ...],
              primary: tuple[int, int]) -> int:
    n = 0
    if "645" in protocols:
        n += 1 + 2 * (len(probe) + 8)  # the configured meters are probed too
    if "188" in protocols:
        n += 1
    if "modbus" in protocols:
        n += 2 * (len(ids) + 8)
    if "mbus" in protocols:
        n += primary[1] - primary[0] + 1 + 10 * 8
    return n


def scan_port(port: str, protocols: tuple[str, ...] = ALL, *, probe: tuple[str, ...] = (),
              ids: tuple[int, ...] = tuple(range(1, 11)), primary: tuple[int, int] = (0, 250),
              timeout_ms: int = 200, buses: tuple[str, ...] = (), baudrate: int = 115200) -> dict:
    """Discovery on a board's own buses through its raw REPL: the board soft-resets into the
    raw REPL (the node stops, its buses are free, the heap is clean), reads its board.json and
    config.json and runs meternode.gateway.scan.discover there. -> {found, errors, requests}.
    TransportError / DeviceError when the board cannot be reached or lacks the firmware."""
    from .errors import DeviceError
    from .transport import Board

    for a in probe:
        if len(a) != 12 or any(c not in "0123456789abcdefABCDEF" for c in a):
            raise ConfigError(f"probe address {a!r} is not 12 digits", hint="e.g. --probe 000000123456")
    args = (f"{tuple(protocols)!r}, {tuple(probe)!r}, {tuple(ids)!r}, {tuple(primary)!r}, {int(timeout_ms)}, "
            f"{list(buses) or None!r}")
    # each request waits at most its timeout, the turnaround and the line time of two frames
    budget = _requests(protocols, probe, ids, primary) * (timeout_ms + 50 + 300) / 1000 + 20
    with Board(port, baudrate=baudrate).open(soft_reset=True) as b:
        try:
            b.exec("import asyncio\nfrom meternode.gateway import scan as _um_scan")
        except DeviceError as e:
            raise DeviceError(
                f"{port}: the board cannot import the gateway ({e.message.split('board raised ', 1)[-1]})",
                hint="is the umeter firmware on it? run `umeter provision`",
            ) from None
        b.timeout = budget
        try:
            return b.eval(f"asyncio.run(_um_scan.discover_files('.', {args}))")
        except DeviceError as e:
            what = e.message.split("board raised ", 1)[-1]
            if "ConfigError" in what:
                raise ConfigError(
                    f"{port}: {what.split(': ', 1)[-1]}", hint="check board.json buses and config.gateway"
                ) from None
            raise
