"""Virtual meters behind a pty: the simulated meter bus of the sim board (and of tests).

The node's bus driver opens `bus.port` (the pty's slave side) as if it were the UART of a
real RS-485 or M-Bus interface; the meters behind it answer as their protocols say:

- `DLT645Meter` (DL/T 645-2007 or -1997): read data (energy import/export and per tariff,
  V, I, P, PF, f, the clock), read address (AA x 6), abnormal answers (ERR "no data");
- `CJT188Meter` (water 0x10, gas 0x30, heat 0x20): read data 901F with unit codes, clock
  and status, read address (wildcard), valve open/close (C=2A, DI A017);
- `MBusMeter` (heat or water, variable data structure): SND_NKE, REQ_UD2 at its primary
  address, selection by secondary address with wildcards (several selected meters answer
  at once: the E5s collide into garbage, as on a real bus);
- `ModbusMeter` (a register map from `meternode.gateway.modbus.MAPS`): functions 3 and 4,
  exception 2 outside its registers.

Each meter's values grow with wall-clock time (energy, volume), so successive polls differ;
an answer's values are those of the moment the request arrived (`at`), and `totals()` gives
the meter's registers as the reading model names them (exact decimal text, canonical unit),
kept for each answer it put on the line in `answered` (the last 64).
Faults are scripted per meter: `meter.faults.extend(["silent", "noise", ...])` applies one
to each following request; `meter.dead = True` stops it answering at all:
`silent` (no answer), `noise` (garbage before the answer), `preamble` (FE bytes first),
`split` (a 2 ms pause in the middle of the answer: two reads on the node), `bad_checksum`,
`slow` (answers after `slow_ms`).

Timing follows the line: an answer starts after the request's line time plus the meter's
`latency_ms`, and its bytes are written as they would leave a UART at `baud` (11 bits a
character), so a node's polling cycle on the pty takes what it would take on the wire.

The answers are built with the firmware's own encoders; the protocol tests check those
encoders against independent implementations (dlt645, pymodbus, pyMeterBus).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import select
import threading
import time
import tty

from meternode.gateway import cjt188, dlt645, mbus, modbus
from meternode.gateway.reading import decimal
from meternode.gateway.scanner import address_bytes

FAULTS = ("silent", "noise", "preamble", "split", "bad_checksum", "slow")


class VirtualMeter:
    protocol = ""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.dead = False
        self.requests = 0
        self.answers = 0
        self.t0 = time.time()
        self.at: float | None = None  # while an answer is made: the time its values are of
        self.answered: collections.deque[dict[str, str]] = collections.deque(maxlen=64)

    def elapsed(self) -> float:
        return (time.time() if self.at is None else self.at) - self.t0

    def totals(self) -> dict[str, str]:
        """The meter's registers now (or at `at`): reading-model quantity name -> exact decimal
        text in the model's canonical unit (kWh, m³), as the node's reading of them should say."""
        return {}

    def answer(self, req: bytes) -> bytes | None:  # pragma: no cover - per protocol
        raise NotImplementedError

    @property
    def meter_id(self) -> str:  # pragma: no cover
        raise NotImplementedError


def _frames(data: bytes, sc) -> list[bytes]:
    sc.reset()
    sc.feed(data)
    out = []
    while True:
        n = sc.next()
        if not n:
            return out
        out.append(bytes(sc.buf[sc.start : sc.start + n]))


class DLT645Meter(VirtualMeter):
    protocol = "dlt645"

    def __init__(self, address: str, version: int = 2007, *, import_kwh: float = 1234.56, power_kw: float = 2.2,
                 voltage: float = 231.4, current: float = 9.512, pf: float = 0.987, freq: float = 50.01,
                 export_kwh: float = 12.34) -> None:
        super().__init__()
        self.address = address
        self.version = version
        self.addr = bytes(address_bytes(address, 6))
        self.import_kwh = import_kwh
        self.export_kwh = export_kwh
        self.power_kw = power_kw
        self.voltage, self.current, self.pf, self.freq = voltage, current, pf, freq
        self.time_synced: tuple | None = None

    @property
    def meter_id(self) -> str:
        return dlt645.meter_id(self.address, self.version)

    def energy(self) -> int:
        """Import register now, in 0.01 kWh."""
        return round((self.import_kwh + self.power_kw * self.elapsed() / 3600) * 100)

    def totals(self) -> dict[str, str]:
        return {"energy_import": decimal(self.energy(), -2), "energy_export": decimal(round(self.export_kwh * 100), -2)}

    def value(self, di: int) -> int | None:
        e = self.energy()
        if self.version == 2007:
            table = {0x00010000: e, 0x00020000: round(self.export_kwh * 100), 0x00010100: e * 4 // 10,
                     0x00010200: e - e * 4 // 10, 0x00010300: 0, 0x00010400: 0, 0x02010100: round(self.voltage * 10),
                     0x02020100: round(self.current * 1000), 0x02030000: round(self.power_kw * 10000),
                     0x02060000: round(self.pf * 1000), 0x02800002: round(self.freq * 100)}
        else:
            table = {0x9010: e, 0x9020: round(self.export_kwh * 100), 0x9011: e * 4 // 10, 0x9012: e - e * 4 // 10,
                     0xB611: round(self.voltage), 0xB621: round(self.current * 100),
                     0xB630: round(self.power_kw * 10000), 0xB650: round(self.pf * 1000)}
        return table.get(di)

    def answer(self, req: bytes) -> bytes | None:
        for f in _frames(req, dlt645.scanner()):
            c = f[8]
            if c & dlt645.DIR:
                continue
            fn = c & 0x1F
            addr = f[1:7]
            buf = bytearray(300)
            if fn == dlt645.C_TIME_SYNC and addr == b"\x99" * 6:
                a, b = dlt645.time_of(f, 0)
                self.time_synced = a or b
                return None
            if fn == dlt645.C_READ_ADDR and self.version == 2007 and addr == b"\xaa" * 6:
                n = dlt645.encode(buf, self.addr, 0x93, self.addr, 6)
                return bytes(buf[:n])
            if addr != self.addr and addr != b"\xaa" * 6:
                continue
            nd = 4 if self.version == 2007 else 2
            want = dlt645.C_READ if self.version == 2007 else dlt645.C_READ_97
            if fn != want or f[9] != nd:
                continue
            di = dlt645.di_of(f, 0, nd)
            if self.version == 2007 and di in (dlt645.DI_DATE, dlt645.DI_TIME):
                t = time.gmtime()
                if di == dlt645.DI_DATE:
                    vals = (t.tm_wday + 1) % 7, t.tm_mday, t.tm_mon, t.tm_year % 100
                else:
                    vals = t.tm_sec, t.tm_min, t.tm_hour
                d = bytearray(di.to_bytes(4, "little")) + bytes(int(f"{x:02d}", 16) for x in vals)
                n = dlt645.encode(buf, self.addr, 0x91, d)
                return bytes(buf[:n])
            blocks = dlt645.BLOCKS_2007 if self.version == 2007 else dlt645.BLOCKS_1997
            if di in blocks:
                vals = [self.value(x) for x in blocks[di]]
                if None not in vals:
                    d = dlt645.block_bytes(di, vals, self.version)
                    n = dlt645.encode(buf, self.addr, c | 0x80, d)
                    return bytes(buf[:n])
            v = self.value(di)
            if v is None:  # abnormal answer: ERR bit 1 "no requested data"
                n = dlt645.encode(buf, self.addr, c | 0xC0, bytes([dlt645.ERR_NO_DATA]))
                return bytes(buf[:n])
            n = dlt645.encode(buf, self.addr, c | 0x80, dlt645.value_bytes(di, v, self.version))
            return bytes(buf[:n])
        return None


class CJT188Meter(VirtualMeter):
    protocol = "cjt188"

    def __init__(self, mtype: int, address: str, *, volume_m3: float = 321.09, flow_m3h: float = 0.6,
                 unit_code: int = 0x2C, heat_kwh: float = 5678.9) -> None:
        super().__init__()
        self.type = mtype
        self.address = address
        self.addr = bytes(address_bytes(address, 7))
        self.volume_m3 = volume_m3
        self.flow_m3h = flow_m3h
        self.unit_code = unit_code
        self.heat_kwh = heat_kwh
        self.valve_closed = False
        self.battery_low = False
        self.valve_commands: list[str] = []

    @property
    def meter_id(self) -> str:
        return cjt188.meter_id(self.type, self.address)

    def volume(self) -> int:
        """Cumulative volume now in 0.01 of the unit (m³ by default; flow stops while closed).
        `volume_m3` and `flow_m3h` are in the unit's own terms: with unit code 0x29 (L) they
        are litres and litres an hour."""
        if self.valve_closed:
            return round(self.volume_m3 * 100)
        return round((self.volume_m3 + self.flow_m3h * self.elapsed() / 3600) * 100)

    def totals(self) -> dict[str, str]:
        fam = cjt188.family(self.type)
        if fam == "heat":
            return {"heat_energy": decimal(round((self.heat_kwh + 5.0 * self.elapsed() / 3600) * 100), -2)}
        if fam not in ("water", "gas") or self.unit_code not in (0x29, 0x2C):
            return {}
        e = -2 if self.unit_code == 0x2C else -5  # 0.01 m³, or 0.01 L = 10^-5 m³
        return {fam + "_volume": decimal(self.volume(), e)}

    def _payload(self) -> bytes:
        t = time.gmtime()
        clock = bytes(int(f"{x:02d}", 16) for x in (t.tm_sec, t.tm_min, t.tm_hour, t.tm_mday, t.tm_mon,
                                                      t.tm_year % 100, t.tm_year // 100))
        st = bytes([(1 if self.valve_closed else 0) | (4 if self.battery_low else 0), 0])
        if cjt188.family(self.type) == "heat":
            heat = round((self.heat_kwh + 5.0 * self.elapsed() / 3600) * 100)

            def f5(v: int, unit: int) -> bytes:
                b = bytearray(5)
                R_put(b, 0, 4, v)
                b[4] = unit
                return bytes(b)

            b3 = bytearray(9)
            R_put(b3, 0, 3, 6512)  # supply 65.12 °C
            R_put(b3, 3, 3, 4020)  # return 40.20 °C
            R_put(b3, 6, 3, round(8760 + self.elapsed() / 3600))
            return (f5(round(self.heat_kwh * 100), 0x05) + f5(heat, 0x05) + f5(500, 0x17) + f5(6000, 0x35)
                    + f5(self.volume(), 0x2C) + bytes(b3) + clock + st)
        cur = bytearray(5)
        R_put(cur, 0, 4, self.volume())
        cur[4] = self.unit_code
        settle = bytearray(5)
        R_put(settle, 0, 4, round(self.volume_m3 * 100))
        settle[4] = self.unit_code
        return bytes(cur) + bytes(settle) + clock + st

    def answer(self, req: bytes) -> bytes | None:
        for f in _frames(req, cjt188.scanner()):
            c = f[9]
            if c & cjt188.DIR:
                continue
            t = f[1]
            addr = f[2:9]
            if t not in (self.type, 0xAA) or (addr != self.addr and addr != b"\xaa" * 7):
                continue
            buf = bytearray(300)
            data = f[11 : 11 + f[10]]
            if c == cjt188.C_READ_ADDR:
                n = cjt188.encode(buf, self.type, self.addr, 0x83, data[:3])
                return bytes(buf[:n])
            if c == cjt188.C_READ and len(data) >= 3:
                di_hi, di_lo, ser = data[0], data[1], data[2]
                n = cjt188.encode(buf, self.type, self.addr, 0x81, bytes([di_hi, di_lo, ser]) + self._payload())
                return bytes(buf[:n])
            if c == cjt188.C_VALVE and len(data) >= 4:
                self.valve_closed = data[3] == cjt188.VALVE_CLOSE
                self.valve_commands.append("close" if self.valve_closed else "open")
                st = bytes([1 if self.valve_closed else 0, 0])
                n = cjt188.encode(buf, self.type, self.addr, c | 0x80, data[:3] + st)
                return bytes(buf[:n])
        return None


def R_put(buf: bytearray, off: int, n: int, v: int) -> None:
    from meternode.gateway.scanner import put_bcd

    put_bcd(buf, off, n, v)


class MBusMeter(VirtualMeter):
    protocol = "mbus"

    def __init__(self, primary: int, ident: str, *, medium: int = 0x04, manufacturer: str = "UMT", version: int = 1,
                 energy_kwh: float = 4321.0, volume_m3: float = 123.456, power_kw: float = 3.2,
                 flow_m3h: float = 0.25, energy_vif: int = 0x06) -> None:
        """`energy_vif` 0x00-0x07: the energy register's unit, 10^(vif-3) Wh (0x06 kWh, 0x03 Wh)."""
        super().__init__()
        self.flow_m3h = flow_m3h
        self.energy_vif = energy_vif
        self.primary = primary
        self.ident = ident
        self.medium = medium
        self.man = mbus.manufacturer_code(manufacturer)
        self.version = version
        self.energy_kwh = energy_kwh
        self.volume_m3 = volume_m3
        self.power_kw = power_kw
        self.selected = False
        self.access = 0
        self.fcb: bool | None = None

    @property
    def meter_id(self) -> str:
        return mbus.meter_id(self.ident)

    def _litres(self) -> int:
        return round((self.volume_m3 + self.flow_m3h * self.elapsed() / 3600) * 1000)  # VIF 0x13 = m³ x 10^-3

    def _energy(self) -> int:
        wh = (self.energy_kwh + self.power_kw * self.elapsed() / 3600) * 1000
        return round(wh / 10 ** ((self.energy_vif & 7) - 3))

    def totals(self) -> dict[str, str]:
        if self.medium in (0x04, 0x0C):
            e = (self.energy_vif & 7) - 6  # 10^(n-3) Wh = 10^(n-6) kWh
            return {"heat_energy": decimal(self._energy(), e), "heat_volume": decimal(self._litres(), -3)}
        return {"water_volume": decimal(self._litres(), -3)}

    def records(self) -> bytes:
        out = bytearray()
        vol = self._litres()
        if self.medium in (0x04, 0x0C):
            mbus.record(out, self._energy(), self.energy_vif & 7)  # 10^(vif-3) Wh
            mbus.record(out, vol, 0x13)
            mbus.record(out, round(self.power_kw * 1000), 0x2B, 6)  # W
            mbus.record(out, round(self.flow_m3h * 1000), 0x3B, 6)  # m³/h (x 10^-3)
            mbus.record(out, 652, 0x5A, 4)  # 65.2 °C (x 10^-1)
            mbus.record(out, 401, 0x5E, 4)  # 40.1 °C
            mbus.record(out, 2510, 0x61, 6)  # 25.10 K (x 10^-2)
            mbus.record(out, round(self.energy_kwh), 0x06, storage=1)  # settlement-day energy
        else:
            mbus.record(out, vol, 0x13)
            mbus.record(out, round(self.volume_m3 * 1000), 0x13, storage=1)
        t = time.gmtime()
        mbus.time_f(out, t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min)
        out += bytes([0x0C, 0x78]) + bytes(int(self.ident[i : i + 2], 16) for i in (6, 4, 2, 0))  # fabrication no.
        return bytes(out)

    def rsp_ud(self, a: int) -> bytes:
        self.access = (self.access + 1) & 0xFF
        buf = bytearray(300)
        n = mbus.rsp_ud(buf, a, self.ident, self.man, self.version, self.medium, self.access, 0, self.records())
        return bytes(buf[:n])


class ModbusMeter(VirtualMeter):
    protocol = "modbus"

    def __init__(self, unit: int, map_name: str = "pzem004t", *, voltage: float = 229.8, current: float = 4.321,
                 power_w: float = 993.0, energy_wh: int = 765432, freq: float = 50.0, pf: float = 0.99) -> None:
        super().__init__()
        self.unit = unit
        self.map_name = map_name
        self.voltage, self.current, self.power_w, self.energy_wh, self.freq, self.pf = (
            voltage, current, power_w, energy_wh, freq, pf)

    @property
    def meter_id(self) -> str:
        return modbus.meter_id(self.unit)

    def _wh(self) -> int:
        return round(self.energy_wh + self.power_w * self.elapsed() / 3600)

    def totals(self) -> dict[str, str]:
        return {"energy_import": decimal(self._wh(), -3)} if self.map_name == "pzem004t" else {}

    def registers(self, fn: int) -> dict[int, int]:
        import struct

        e = self._wh()
        regs: dict[int, int] = {}
        if self.map_name == "pzem004t" and fn == 4:
            def u32swap(r: int, v: int) -> None:
                regs[r], regs[r + 1] = v & 0xFFFF, v >> 16

            regs[0] = round(self.voltage * 10)
            u32swap(1, round(self.current * 1000))
            u32swap(3, round(self.power_w * 10))
            u32swap(5, e)
            regs[7] = round(self.freq * 10)
            regs[8] = round(self.pf * 100)
        elif self.map_name == "sdm120" and fn == 4:
            def f32(r: int, v: float) -> None:
                hi, lo = struct.unpack(">HH", struct.pack(">f", v))
                regs[r], regs[r + 1] = hi, lo

            for r in range(0, 32):
                regs[r] = 0
            for r in range(70, 76):
                regs[r] = 0
            f32(0, self.voltage)
            f32(6, self.current)
            f32(12, self.power_w)
            f32(30, self.pf)
            f32(70, self.freq)
            f32(72, e / 1000)
            f32(74, 1.5)
        return regs

    def answer(self, req: bytes) -> bytes | None:
        if len(req) != 8 or req[0] != self.unit or not modbus.crc_ok(req, 8):
            return None
        unit, fn, start, count = modbus.parse_request(bytearray(req), 8)
        buf = bytearray(300)
        if fn not in (3, 4):
            n = modbus.exception_answer(buf, unit, fn, 1)
            return bytes(buf[:n])
        regs = self.registers(fn)
        if any(r not in regs for r in range(start, start + count)):
            n = modbus.exception_answer(buf, unit, fn, 2)
            return bytes(buf[:n])
        n = modbus.read_answer(buf, unit, fn, regs, start, count)
        return bytes(buf[:n])


class SimBus:
    """A pty with virtual meters behind it. `port` is the node's side."""

    def __init__(self, meters: list[VirtualMeter] | None = None, *, baud: int = 2400, latency_ms: float = 5.0,
                 slow_ms: float = 700.0, seed: int = 1) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(self.master)
        self.port = os.ttyname(slave)
        self._slave = slave
        self.meters: list[VirtualMeter] = list(meters or [])
        self.baud = baud
        self.latency_ms = latency_ms
        self.slow_ms = slow_ms
        self.rng = random.Random(seed)
        self.requests: list[bytes] = []
        self.answer_bytes = 0  # bytes of every answer sent (benchmarks: line time)
        self.collisions = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def char_s(self) -> float:
        return 11 / self.baud

    def add(self, meter: VirtualMeter) -> VirtualMeter:
        with self._lock:
            self.meters.append(meter)
        return meter

    def meter(self, meter_id: str) -> VirtualMeter:
        for m in self.meters:
            if m.meter_id == meter_id:
                return m
        raise KeyError(meter_id)

    def start(self) -> SimBus:
        self._thread = threading.Thread(target=self._run, name="bussim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SimBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the line ------------------------------------------------------------------------------
    def _run(self) -> None:
        buf = b""
        t_first = 0.0
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.master], [], [], 0.003 if buf else 0.05)
            except (OSError, ValueError):
                return
            if r:
                try:
                    chunk = os.read(self.master, 1024)
                except OSError:
                    return
                if not buf:
                    t_first = time.monotonic()
                buf += chunk
                continue
            if buf:  # silence after a request: answer it
                req, buf = buf, b""
                self.requests.append(req)
                self._answer(req, t_first)

    def _answer(self, req: bytes, t_first: float) -> None:
        with self._lock:
            meters = list(self.meters)
        now = time.time()
        for m in meters:
            m.at = now  # every value of this answer is of the moment the request came
        try:
            self._answer_at(req, t_first, meters)
        finally:
            for m in meters:
                m.at = None

    def _answer_at(self, req: bytes, t_first: float, meters: list[VirtualMeter]) -> None:
        # M-Bus: selection, and requests to the selected meter, go to all M-Bus meters
        answers: list[tuple[VirtualMeter, bytes | None]] = []
        mb = [m for m in meters if isinstance(m, MBusMeter)]
        if mb:
            answers += self._mbus(mb, req)
        for m in meters:
            if isinstance(m, MBusMeter) or m.dead:
                continue
            a = m.answer(req)
            if a is not None:
                m.requests += 1
                answers.append((m, a))
        answers = [(m, a) for m, a in answers if a is not None]
        if not answers:
            return
        end_of_request = t_first + len(req) * self.char_s()
        if len(answers) > 1:  # several meters talk at once: the line carries garbage
            self.collisions += 1
            m, _ = answers[0]
            longest = max(len(a) for _, a in answers)
            self._send(bytes(self.rng.randrange(256) for _ in range(max(2, longest))), end_of_request, m, "garbage")
            return
        m, a = answers[0]
        fault = m.faults.pop(0) if m.faults else None
        self._send(a, end_of_request, m, fault)

    def _mbus(self, mb: list[MBusMeter], req: bytes) -> list[tuple[VirtualMeter, bytes | None]]:
        sc = mbus.MBusScanner()
        out: list[tuple[VirtualMeter, bytes | None]] = []
        sc.feed(req)
        n = sc.next()
        if not n:
            return out
        f = bytes(sc.buf[sc.start : sc.start + n])
        live = [m for m in mb if not m.dead]
        if sc.kind == 2:
            c, a = f[1], f[2]
            for m in live:
                hit = a == m.primary or (a == mbus.ADDR_SELECTED and m.selected) or a == mbus.ADDR_BROADCAST
                if not hit:
                    continue
                m.requests += 1
                if c == mbus.C_SND_NKE:
                    m.selected = False if a != mbus.ADDR_SELECTED else m.selected
                    m.fcb = None
                    if a != mbus.ADDR_BROADCAST:
                        out.append((m, bytes([mbus.ACK])))
                elif c & 0x4F == mbus.C_REQ_UD2 & 0x4F:
                    out.append((m, m.rsp_ud(m.primary)))
        elif sc.kind == 3 and f[4] & 0x4F == mbus.C_SND_UD & 0x4F and f[5] == 0xFD and f[6] == mbus.CI_SELECT:
            sel = f[7:15]
            for m in live:
                m.selected = mbus.matches(sel, m.ident, m.man, m.version, m.medium)
                if m.selected:
                    m.requests += 1
                    out.append((m, bytes([mbus.ACK])))
        return out

    def _send(self, data: bytes, end_of_request: float, m: VirtualMeter, fault: str | None) -> None:
        if fault == "silent":
            return
        if fault == "preamble":
            data = b"\xfe\xfe\xfe\xfe" + data
        if fault == "noise":
            data = bytes([0x00, 0x68, 0x55, 0x12, 0x33]) + data
        if fault == "bad_checksum":
            b = bytearray(data)
            b[-2] ^= 0x5A if len(b) > 2 else 0
            if len(b) == 1:
                b[0] ^= 0xFF
            data = bytes(b)
        delay = self.latency_ms / 1000 + (self.slow_ms / 1000 if fault == "slow" else 0)
        t0 = end_of_request + delay  # the first start bit
        # paced like the line: every few ms, the bytes whose last stop bit has gone out
        cut = len(data) // 2 if fault == "split" and len(data) > 2 else -1
        sent = 0
        try:
            while sent < len(data):
                due = min(len(data), int((time.monotonic() - t0) / self.char_s()))
                if cut > 0 and sent < cut <= due:
                    due = cut  # a split answer: the rest comes after a pause within the frame
                if due > sent:
                    os.write(self.master, data[sent:due])
                    if sent < cut <= due:
                        time.sleep(0.002)
                    sent = due
                    continue
                wait = t0 + (sent + 1) * self.char_s() - time.monotonic()
                time.sleep(max(0.0005, min(wait, 0.01)))
        except OSError:
            return
        self.answer_bytes += len(data)
        m.answers += 1
        if fault != "garbage" and len(data) > 1:  # a frame, not an M-Bus E5 acknowledgement
            m.answered.append(m.totals())


def demo_meters() -> tuple[list[VirtualMeter], list[VirtualMeter]]:
    """The sim board's two buses: (rs485 meters, M-Bus meters), 8 in all."""
    rs485: list[VirtualMeter] = [
        DLT645Meter("000000123456", 2007),
        DLT645Meter("000000654321", 1997, import_kwh=9876.54, power_kw=0.8),
        CJT188Meter(0x10, "00000000001234", volume_m3=321.09, flow_m3h=0.6),
        CJT188Meter(0x30, "00000000005678", volume_m3=1024.5, flow_m3h=0.9),
        ModbusMeter(7, "pzem004t"),
        ModbusMeter(8, "sdm120", voltage=230.1, current=2.5, power_w=575.0, energy_wh=2_000_000),
    ]
    mb: list[VirtualMeter] = [
        MBusMeter(5, "12345678", medium=0x04),
        MBusMeter(6, "87654321", medium=0x07, volume_m3=55.5),
    ]
    return rs485, mb


def demo_config(rs485_port: str, mbus_port: str, interval_s: float = 10.0) -> dict:
    """config["gateway"] for the demo meters on the two ptys."""
    meters = [
        {"bus": "rs485", "protocol": "dlt645", "address": "000000123456"},
        {"bus": "rs485", "protocol": "dlt645", "version": 1997, "address": "000000654321"},
        {"bus": "rs485", "protocol": "cjt188", "type": 16, "address": "00000000001234"},
        {"bus": "rs485", "protocol": "cjt188", "type": 48, "address": "00000000005678"},
        {"bus": "rs485", "protocol": "modbus", "unit": 7, "map": "pzem004t"},
        {"bus": "rs485", "protocol": "modbus", "unit": 8, "map": "sdm120"},
        {"bus": "mbus", "protocol": "mbus", "primary": 5},
        {"bus": "mbus", "protocol": "mbus", "secondary": "87654321"},
    ]
    for m in meters:
        m["interval_s"] = interval_s
    return {"buses": {"rs485": {"port": rs485_port}, "mbus": {"port": mbus_port}}, "meters": meters}


class NullModem:
    """Two ptys joined back to back (`a` and `b` are their device paths): what one side
    writes, the other reads, like two RS-485 adapters on one pair of wires.  For tests that
    put an independent master or slave (dlt645, pymodbus) on one end and a node on the
    other."""

    def __init__(self) -> None:
        self._m = []
        self._s = []
        paths = []
        for _ in range(2):
            m, s = os.openpty()
            tty.setraw(m)
            tty.setraw(s)
            self._m.append(m)
            self._s.append(s)
            paths.append(os.ttyname(s))
        self.a, self.b = paths
        self.bytes = [0, 0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NullModem:
        self._thread = threading.Thread(target=self._run, name="nullmodem", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        ma, mb = self._m
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([ma, mb], [], [], 0.05)
                for fd in r:
                    data = os.read(fd, 1024)
                    os.write(mb if fd == ma else ma, data)
                    self.bytes[0 if fd == ma else 1] += len(data)
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        for fd in self._m + self._s:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> NullModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
