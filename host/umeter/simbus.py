"""Simulated meters on each virtual node's buses: `umeter sim --bus` (docs/sim.md).

Every node of `umeter sim --bus dlt645,cjt188,mbus,modbus` gets its own two buses, ptys with
virtual meters behind them (`umeter_hil.bussim`): on the RS-485 line a DL/T 645-2007
electricity meter, a CJ/T 188 water meter and a gas meter, and a Modbus RTU (PZEM-004T) energy
meter; on the M-Bus line a heat meter. The node's `config.json` gets the matching `gateway`
section, so the firmware's own gateway polls them (docs/gateway.md) and its READING records,
METER events and retained meter states reach the broker like a board's. Each node's meters
have their own addresses and starting registers; their registers advance with time (energy,
water, gas, heat) at rates a demo shows within seconds.

`MeterView` is what the host learns about one meter from the broker (its readings, silent /
back events, in record order) and from the node's console (why it fell silent).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from .errors import ConfigError

PROTOCOLS = ("dlt645", "cjt188", "mbus", "modbus")
_ALIASES = {"645": "dlt645", "188": "cjt188", "m-bus": "mbus", "modbus-rtu": "modbus"}
WHAT = {  # protocol -> what each node gets, for --help and the errors
    "dlt645": "a DL/T 645-2007 electricity meter",
    "cjt188": "a CJ/T 188 water meter and a gas meter",
    "mbus": "an M-Bus heat meter",
    "modbus": "a Modbus RTU (PZEM-004T) energy meter",
}
BUS_OF = {"dlt645": "rs485", "cjt188": "rs485", "modbus": "rs485", "mbus": "mbus"}

INTERVAL_S = 5.0  # each meter is read every 5 s
TIMEOUT_MS = 500  # wait for an answer (a slow meter at 2400 baud answers well within it)
RETRIES = 1
SILENT_AFTER = 2  # polls without an answer before the meter counts as silent (an event)
BACKOFF_MAX_S = 20  # a silent meter is asked again at most this far apart (a demo: it may come back)


def parse_protocols(text: str) -> list[str]:
    """'dlt645,mbus' -> ['dlt645', 'mbus'] in the order given; '645'/'188' are the short names,
    'all' (or an empty --bus) every protocol. ConfigError names an unknown or repeated one."""
    if text.strip().lower() in ("", "all"):
        return list(PROTOCOLS)
    out: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        name = _ALIASES.get(name, name)
        if name not in PROTOCOLS:
            raise ConfigError(
                f"unknown bus protocol {raw.strip()!r} in --bus {text!r}",
                hint="choose from dlt645 (or 645), cjt188 (or 188), mbus, modbus, or all; e.g. --bus dlt645,cjt188",
            )
        if name in out:
            raise ConfigError(f"bus protocol {name!r} is given twice in --bus {text!r}", hint="name each once")
        out.append(name)
    return out


@dataclass
class BusMeter:
    """One simulated meter of a node: the virtual meter, its bus, what it measures, and its
    entry in the node's config.gateway.meters."""

    meter: object  # umeter_hil.bussim.VirtualMeter
    protocol: str
    bus: str
    kind: str  # electricity | water | gas | heat
    config: dict

    @property
    def meter_id(self) -> str:
        return self.meter.meter_id


def node_meters(index: int, protocols: list[str], interval_s: float = INTERVAL_S) -> list[BusMeter]:
    """The meters of node number `index` (0-based) for these protocols. Addresses end in the
    node's number; registers start apart per node. Rates: the electricity meter feeds a 7.2 kW
    EV charger (a 0.01 kWh step every 5 s), water runs at a shower's 10 L/min, the gas boiler
    burns 1.2 m³/h (both meters count in 0.01 L, CJ/T 188 unit code 0x29), the heat meter
    counts Wh and litres, the PZEM-004T a 1.8 kW heat pump in Wh."""
    from umeter_hil.bussim import CJT188Meter, DLT645Meter, MBusMeter, ModbusMeter

    k = index + 1
    out: list[BusMeter] = []
    for proto in protocols:
        if proto == "dlt645":
            addr = f"0000001234{k:02d}"
            m = DLT645Meter(addr, 2007, import_kwh=1234.56 + 100 * index, power_kw=7.2, voltage=230.8,
                            current=31.3, pf=0.997, freq=50.0, export_kwh=0.0)
            out.append(BusMeter(m, proto, "rs485", "electricity", {"protocol": "dlt645", "address": addr}))
        elif proto == "cjt188":
            water = f"0000000000{k:02d}01"
            gas = f"0000000000{k:02d}02"
            w = CJT188Meter(0x10, water, volume_m3=321090.0 + 1000 * index, flow_m3h=600.0, unit_code=0x29)
            g = CJT188Meter(0x30, gas, volume_m3=54321.0 + 1000 * index, flow_m3h=1200.0, unit_code=0x29)
            out.append(BusMeter(w, proto, "rs485", "water", {"protocol": "cjt188", "type": 0x10, "address": water}))
            out.append(BusMeter(g, proto, "rs485", "gas", {"protocol": "cjt188", "type": 0x30, "address": gas}))
        elif proto == "mbus":
            ident = f"123456{k:02d}"
            m = MBusMeter(5, ident, medium=0x04, energy_kwh=4321.0 + 10 * index, volume_m3=123.456,
                          power_kw=3.2, flow_m3h=0.11, energy_vif=0x03)
            out.append(BusMeter(m, proto, "mbus", "heat", {"protocol": "mbus", "primary": 5}))
        elif proto == "modbus":
            m = ModbusMeter(7, "pzem004t", voltage=229.8, current=7.9, power_w=1800.0, energy_wh=765432 + 1000 * index,
                            freq=50.0, pf=0.99)
            out.append(BusMeter(m, proto, "rs485", "electricity", {"protocol": "modbus", "unit": 7, "map": "pzem004t"}))
        else:  # parse_protocols() let nothing else through
            raise ConfigError(f"unknown bus protocol {proto!r}", hint="choose from " + ", ".join(PROTOCOLS))
    for bm in out:
        bm.config["bus"] = bm.bus
        bm.config["interval_s"] = interval_s
    return out


def check_board(board: dict, board_name: str, protocols: list[str]) -> None:
    """The board must have the buses the meters go on (the sim board has both)."""
    have = board.get("buses") or {}
    for proto in protocols:
        bus = BUS_OF[proto]
        if bus not in have:
            raise ConfigError(
                f"--bus {proto}: board {board_name} has no {bus!r} bus (its buses: {', '.join(have) or 'none'})",
                hint=f"leave {proto} out of --bus, or use --board sim",
            )


class NodeBuses:
    """A node's buses: one pty per bus in use with its meters behind it (`umeter_hil.bussim.SimBus`)."""

    def __init__(self, index: int, protocols: list[str], interval_s: float = INTERVAL_S) -> None:
        self.meters = node_meters(index, protocols, interval_s)
        self.lines: dict = {}

    def start(self) -> NodeBuses:
        from umeter_hil.bussim import SimBus

        for bus in dict.fromkeys(bm.bus for bm in self.meters):
            self.lines[bus] = SimBus([bm.meter for bm in self.meters if bm.bus == bus]).start()
        return self

    def stop(self) -> None:
        for line in self.lines.values():
            line.stop()
        self.lines = {}

    def gateway_config(self) -> dict:
        """config["gateway"]: the buses' ptys and the meters (each read every `interval_s`)."""
        return {
            "buses": {name: {"port": line.port} for name, line in self.lines.items()},
            "meters": [dict(bm.config) for bm in self.meters],
            "timeout_ms": TIMEOUT_MS,
            "retries": RETRIES,
            "silent_after": SILENT_AFTER,
            "backoff_max_s": BACKOFF_MAX_S,
        }

    def sim_state(self, answered: bool = False) -> dict[str, dict]:
        """The bus side, per meter id: requests it got, answers it gave, whether it was made to
        stop answering (`dead`), its registers now (`holds`) and with `answered` those of each
        of its last 64 answers (what the node can have read: a DL/T 645 poll is 7 answers)."""
        out = {}
        for bm in self.meters:
            m = bm.meter
            d = {"requests": m.requests, "answers": m.answers, "dead": m.dead, "holds": m.totals()}
            if answered:
                d["answered"] = list(m.answered.copy())
            out[bm.meter_id] = d
        return out

    def meter(self, meter_id: str):
        """The virtual meter with this id (tests and the demo stop one with `.dead = True`)."""
        for bm in self.meters:
            if bm.meter_id == meter_id:
                return bm.meter
        raise KeyError(meter_id)


# -- what the host learns from the broker and the console ------------------------------------------

# The reading's headline values in the table, by kind: a total, then what flows now.
_MAIN = ("energy_import", "water_volume", "gas_volume", "heat_energy")
_NOW = ("power", "water_flow", "heat_power", "heat_flow")


@dataclass
class MeterView:
    """One meter as its node reports it: the newest READING record, and whether a METER
    'silent' event came after it (record order: both are the node's records, one sequence)."""

    meter_id: str
    protocol: str
    bus: str
    kind: str
    received: int = 0  # READING records of this meter received this run
    seq: int = 0  # the newest one's sequence number
    ts: int | None = None  # its time (the node's clock, epoch seconds)
    meter_ts: int | None = None  # the meter's own clock, when it sent one
    values: list[dict] = field(default_factory=list)  # [{"quantity", "code", "value", "unit"}]
    status: list[str] = field(default_factory=list)
    at: float = 0.0  # time.monotonic() when the newest reading arrived
    silent_seq: int = 0  # a METER 'silent' event (seq) newer than the newest reading: failing
    silent_at: float = 0.0
    why: str | None = None  # the node's console: why it fell silent ("no answer in 500 ms (2 tries)")

    def state(self, gateway_on: bool | None = True) -> str:
        """ok | failing | waiting (no reading yet) | off (the node's gateway did not start)."""
        if self.silent_seq > self.seq:
            return "failing"
        if self.received:
            return "ok"
        return "off" if gateway_on is False else "waiting"

    def value(self, names: tuple[str, ...]) -> dict | None:
        for n in names:
            for v in self.values:
                if v["quantity"] == n:
                    return v
        return None

    def headline(self) -> tuple[str, str]:
        """(total, now) as text: ('1234.57 kWh', '7.2000 kW'); '—' where there is none."""
        t, n = self.value(_MAIN), self.value(_NOW)
        fmt = lambda v: "—" if v is None else f"{v['value']} {v['unit']}".strip()  # noqa: E731
        return fmt(t), fmt(n)

    def on_reading(self, doc: dict) -> None:
        seq = doc.get("seq") or 0
        if seq and seq <= self.seq:
            return  # a resent older record
        self.received += 1
        self.seq = seq
        self.ts = doc.get("ts")
        self.meter_ts = doc.get("meter_ts")
        self.status = list(doc.get("status") or [])
        self.values = [
            {"quantity": r.get("quantity"), "code": r.get("code"), "value": r.get("value"), "unit": r.get("unit")}
            for r in doc.get("readings") or []
            if isinstance(r, dict)
        ]
        self.at = time.monotonic()

    def on_event(self, doc: dict) -> None:
        """A METER event about this meter: arg 1 silent, 2 answers again."""
        seq = doc.get("seq") or 0
        if doc.get("arg") == 1 and seq > self.silent_seq:
            self.silent_seq = seq
            self.silent_at = time.monotonic()
        elif doc.get("arg") == 2 and seq > self.silent_seq:
            self.silent_seq = 0

    def to_json(self, gateway_on: bool | None = True, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        return {
            "meter": self.meter_id,
            "protocol": self.protocol,
            "bus": self.bus,
            "kind": self.kind,
            "state": self.state(gateway_on),
            "error": self.why if self.state(gateway_on) == "failing" else None,
            "received": self.received,
            "seq": self.seq or None,
            "ts": self.ts,
            "age_s": round(now - self.at, 1) if self.received else None,
            "meter_ts": self.meter_ts,
            "status": self.status,
            "values": self.values,
        }


def event_meter(doc: dict) -> str | None:
    """The meter a METER event is about ('silent mbus-12345601' -> 'mbus-12345601'), else None."""
    if doc.get("event") != "meter" or doc.get("arg") not in (1, 2):
        return None
    text = str(doc.get("text") or "")
    _, _, mid = text.partition(" ")
    return mid or None


# The node's console lines about its gateway (gateway/service.py, node.py).
_SILENT = re.compile(r"gateway: meter (\S+) silent: (.*)$")
_BACK = re.compile(r"gateway: meter (\S+) answers again")
_OFF = re.compile(r"(gateway off: .*|gateway not started: .*)$")
_SKIPPED = re.compile(r"gateway: (.*) \(meter skipped\)$")
_ON = re.compile(r"gateway on: ")


def console_gateway(line: str) -> tuple[str, str | None, str | None]:
    """What a console line says about the gateway: ('silent', meter, why), ('back', meter,
    None), ('off', None, why it did not start), ('skipped', None, the misconfigured meter's
    error), ('on', None, None) or ('', None, None)."""
    m = _SILENT.search(line)
    if m:
        return "silent", m.group(1), m.group(2)
    m = _BACK.search(line)
    if m:
        return "back", m.group(1), None
    m = _OFF.search(line)
    if m:
        return "off", None, m.group(1)
    m = _SKIPPED.search(line)
    if m:
        return "skipped", None, m.group(1)
    if _ON.search(line):
        return "on", None, None
    return "", None, None
