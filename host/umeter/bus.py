"""Meter-bus frames on the host, with the firmware's own codecs (meternode.gateway).

- `decode_frame(protocol, data)`: one DL/T 645 / CJ/T 188 / M-Bus / Modbus RTU frame (bytes
  or hex, spaces allowed) -> dict of its fields and readings in engineering units, exact
  decimals. A truncated frame or a bad checksum raises `FrameError` (a `ConfigError`) that
  says which.
- `scan(...)`: discovery on a simulated bus (`--board virtual`) through the firmware's
  drivers, run here on CPython.
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


# -- discovery on a virtual bus ---------------------------------------------------------------
def scan_virtual(protocols: tuple[str, ...] = ("645", "188", "mbus", "modbus"), timeout_ms: int = 200) -> list[dict]:
    """Runs discovery against the sim board's virtual meters (umeter_hil.bussim.demo_meters)
    on two ptys: returns [{protocol, address, meter}] found."""
    from umeter_hil.bussim import SimBus, demo_meters

    rs485, mb = demo_meters()
    with SimBus(rs485) as b1, SimBus(mb) as b2:
        return asyncio.run(_scan(b1.port, b2.port, protocols, timeout_ms))


async def _scan(p1: str, p2: str, protocols: tuple[str, ...], timeout_ms: int) -> list[dict]:
    from meternode.gateway import scan
    from meternode.hal import bus as hbus

    out: list[dict] = []
    b1 = hbus.make("rs485", hbus.check("rs485", {"sim": True, "port": p1}))
    b2 = hbus.make("mbus", hbus.check("mbus", {"sim": True, "port": p2, "profile": "mbus"}))
    try:
        s1 = scan.Scanner(b1, timeout_ms)
        s2 = scan.Scanner(b2, timeout_ms)
        if "645" in protocols:
            out += await s1.dlt645(probe=["000000123456", "000000654321", "000000111111"])
        if "188" in protocols:
            out += await s1.cjt188()
        if "modbus" in protocols:
            out += await s1.modbus(range(1, 11))
        if "mbus" in protocols:
            out += await s2.mbus_primary(0, 10)
            out += await s2.mbus_secondary()
    finally:
        b1.port.close()
        b2.port.close()
    return out
