"""A simulated LoRaWAN modem (RAK3172 / RUI3 AT dialect) behind a pty, for tests.

The node's AT driver opens `modem.port` (the pty's slave side) as if it were the UART to a
real RAK3172. The simulator answers as RUI3 does -- written to RUI3's own sources
(RAKWireless/RAK-STM32-RUI: service/mode/cli/atcmd_*.c, service/lora/service_lora.c,
service/nvm) and its AT command manual:

    AT                          -> OK
    AT+<key>=?                  -> AT+<key>=<value> then OK
    AT+<key>=<value>            -> OK (stored: an NVM write, counted in nvm_writes) | AT_PARAM_ERROR
    AT+NWM=<n>                  -> "OK" with no CR/LF, an NVM write, and a reboot -- every
                                   time, even to the mode it is in (atcmd_p2p.c At_NwkWorkMode)
    AT+NJS=?                    -> AT+NJS=1 when joined
    AT+JOIN=1:<auto>:<period>:<count>
                                -> OK, later +EVT:JOINED or +EVT:JOIN_FAILED_RX_TIMEOUT; the
                                   module itself retries `count` times, `period` s apart
    AT+CFM=0|1                  -> OK (confirmed uplinks off/on; an NVM write)
    AT+SEND=<port>:<hex>        -> OK, later +EVT:TX_DONE (unconfirmed) or
                                   +EVT:SEND_CONFIRMED_OK / +EVT:SEND_CONFIRMED_FAILED(4)
                                   | AT_NO_NETWORK_JOINED | AT_BUSY_ERROR | AT_PARAM_ERROR
    duty cycle restricted       -> "Restricted_Wait_<ms>_ms" then AT_BUSY_ERROR (SEND, JOIN)
    a queued downlink arrives after the next uplink as
                                   +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
    AT+TIMEREQ=1                -> OK (a DeviceTimeReq rides on the next uplink) |
                                   AT_NO_NETWORK_JOINED; after that uplink's event comes
                                   +EVT:TIMEREQ_OK (the network's answer set the module's
                                   clock) or +EVT:TIMEREQ_FAILED, and the request is disarmed
    AT+LTIME=?                  -> AT+LTIME=<hh>h<mm>m<ss>s on <MM>/<DD>/<YYYY> then OK: the
                                   module's clock, UTC (its GPS time less 18 leap seconds);
                                   from 1970 at power-up until the network answers
    a reboot (AT+NWM, reset(), power_cycle()) -> deaf for `boot_s`, a few noise bytes, then
                                   the banner ("RAK3172-E Version:...", "Current Work Mode:
                                   LoRaWAN."); the session is lost, the NVM settings stay

Faults on demand: `fail_joins` (the next N join attempts fail), `busy_sends` (the next N
sends answer AT_BUSY_ERROR), `fail_confirms` (the next N confirmed uplinks get no ACK),
`max_payload` (longer payloads answer AT_PARAM_ERROR, like DR0's 51 bytes), `restrict(ms)`
(the duty-cycle limiter refuses for ms), `join_delay` (a JOINED later than the driver
waits), `noise(b)` (raw bytes on the line), `power_cycle()`, `network_time` (the network
server's clock, UNIX seconds: a callable, by default the host's; None: it never answers
DeviceTimeReq).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from collections.abc import Callable

BANNER = ("RAKwireless RAK3172-E Example", "RAK3172-E Version:RUI_4.2.3_RAK3172-E", "Current Work Mode: LoRaWAN.")


class SimModem:
    def __init__(
        self, *, join_delay: float = 0.05, tx_delay: float = 0.02, max_payload: int = 51, boot_s: float = 0.2
    ) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty stays alive between driver opens
        self.join_delay = join_delay
        self.tx_delay = tx_delay
        self.max_payload = max_payload
        self.boot_s = boot_s
        self.settings: dict[str, str] = {
            "NWM": "1",
            "BAND": "4",
            "DR": "0",
            "CFM": "0",
            "NJM": "1",
            "CLASS": "A",
            "ADR": "1",
            "DEVEUI": "AC1F09FFFE000000",
            "APPEUI": "0000000000000000",
            "APPKEY": "00000000000000000000000000000000",
        }
        self.joined = False
        self.joins = 0  # join attempts made (the module's own retries included)
        self.join_cmds = 0  # AT+JOIN commands received
        self.fail_joins = 0
        self.busy_sends = 0
        self.fail_confirms = 0
        self.nvm_writes = 0
        self.reboots = 0
        self.uplinks: list[tuple[int, bytes, bool]] = []  # (port, payload, confirmed) accepted
        self.downlinks: list[tuple[int, bytes]] = []  # queued for after the next uplink
        self.commands: list[str] = []
        self.network_time: Callable[[], float] | None = time.time
        self.time_requests = 0  # DeviceTimeReqs sent on an uplink
        self._timereq = False  # armed by AT+TIMEREQ=1
        self._sys_off = -time.monotonic()  # the module's clock (GPS seconds on the UNIX epoch) - monotonic()
        self._restricted_until = 0.0
        self._deaf_until = 0.0
        self._gen = 0  # bumped by each reboot: pending events of the old session are dropped
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------
    def queue_downlink(self, port: int, payload: bytes) -> None:
        with self._lock:
            self.downlinks.append((port, payload))

    def restrict(self, ms: int) -> None:
        """The duty-cycle limiter refuses sends and joins for `ms` from now."""
        self._restricted_until = time.monotonic() + ms / 1000

    def noise(self, raw: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, raw)

    def power_cycle(self) -> None:
        """Power off and on while the driver's reader runs."""
        self._reboot(b"\x00\xfe\xff")

    def start(self) -> SimModem:
        self._thread = threading.Thread(target=self._run, name="lorasim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SimModem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the modem -----------------------------------------------------------------------------
    def _write(self, line: str, end: str = "\r\n") -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, (line + end).encode())

    def _later(self, delay: float, *lines: str) -> None:
        gen = self._gen

        def go() -> None:
            time.sleep(delay)
            if gen != self._gen or self._stop.is_set():
                return  # the module rebooted meanwhile: that session's events never come
            for ln in lines:
                self._write(ln)

        threading.Thread(target=go, daemon=True).start()

    def _reboot(self, noise: bytes = b"\xff") -> None:
        self.reboots += 1
        self._gen += 1
        self.joined = False
        self._timereq = False
        self._sys_off = -time.monotonic()  # the clock starts again at 1970
        self._deaf_until = time.monotonic() + self.boot_s
        gen = self._gen

        def boot() -> None:
            time.sleep(self.boot_s)
            if gen != self._gen or self._stop.is_set():
                return
            self.noise(noise)
            for ln in BANNER:
                self._write(ln)

        threading.Thread(target=boot, daemon=True).start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.master], [], [], 0.05)
                if not r:
                    continue
                data = os.read(self.master, 1024)
            except OSError:
                return
            if time.monotonic() < self._deaf_until:
                continue  # rebooting: what arrives now is lost
            buf += data
            while b"\n" in buf or b"\r" in buf:
                cut = min(i for i in (buf.find(b"\r"), buf.find(b"\n")) if i >= 0)
                line, buf = buf[:cut].decode("ascii", "replace").strip(), buf[cut + 1 :]
                if line:
                    self.commands.append(line)
                    self._handle(line)

    def _handle(self, line: str) -> None:
        up = line.upper()
        if up == "AT":
            return self._write("OK")
        if not up.startswith("AT+"):
            return self._write("AT_COMMAND_NOT_FOUND")
        key, _, val = line[3:].partition("=")
        key = key.upper()
        if val == "?":
            if key == "NJS":
                return self._write(f"AT+NJS={1 if self.joined else 0}") or self._write("OK")
            if key == "TIMEREQ":
                return self._write(f"AT+TIMEREQ={int(self._timereq)}") or self._write("OK")
            if key == "LTIME":
                # service_lora_get_local_time: SysTimeGet() - 18, "%02dh%02dm%02ds on %02d/%02d/%04d"
                t = time.gmtime(int(time.monotonic() + self._sys_off) - 18)
                v = f"{t.tm_hour:02d}h{t.tm_min:02d}m{t.tm_sec:02d}s on {t.tm_mon:02d}/{t.tm_mday:02d}/{t.tm_year:04d}"
                return self._write(f"AT+LTIME={v}") or self._write("OK")
            return self._write(f"AT+{key}={self.settings.get(key, '')}") or self._write("OK")
        if key == "JOIN":
            return self._join(val)
        if key == "SEND":
            return self._send(val)
        if key == "TIMEREQ":  # At_Timereq: not stored in NVM; refused before a join
            if val not in ("0", "1"):
                return self._write("AT_PARAM_ERROR")
            if not self.joined:
                return self._write("AT_NO_NETWORK_JOINED")
            self._timereq = val == "1"
            return self._write("OK")
        if key == "NWM":
            if val not in ("0", "1", "2"):
                return self._write("AT_PARAM_ERROR")
            self.settings["NWM"] = val
            self.nvm_writes += 1
            self._write("OK", end="")  # atcmd_printf("OK"); udrv_system_reboot();
            return self._reboot()
        if key in ("DEVEUI", "APPEUI", "APPKEY"):
            n = 32 if key == "APPKEY" else 16
            if len(val) != n or any(c not in "0123456789abcdefABCDEF" for c in val):
                return self._write("AT_PARAM_ERROR")
        if key == "CFM" and val not in ("0", "1"):
            return self._write("AT_PARAM_ERROR")
        self.settings[key] = val
        self.nvm_writes += 1
        self._write("OK")

    def _restricted(self) -> bool:
        left = self._restricted_until - time.monotonic()
        if left > 0:
            self._write(f"Restricted_Wait_{int(left * 1000)}_ms")
            self._write("AT_BUSY_ERROR")
            return True
        return False

    def _join(self, val: str) -> None:
        parts = val.split(":")
        if not parts[0].startswith("1"):
            self.joined = False
            return self._write("OK")
        if self._restricted():
            return None
        self.join_cmds += 1
        count = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
        period = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 8
        self._write("OK")
        gen = self._gen

        def attempts() -> None:
            for k in range(count + 1):  # the first attempt and `count` retries of its own
                time.sleep(self.join_delay if k == 0 else period * self.join_delay)
                if gen != self._gen or self._stop.is_set():
                    return
                self.joins += 1
                if self.fail_joins > 0:
                    self.fail_joins -= 1
                    self._write("+EVT:JOIN_FAILED_RX_TIMEOUT")
                    continue
                self.joined = True
                self._write("+EVT:JOINED")
                return

        threading.Thread(target=attempts, daemon=True).start()
        return None

    def _send(self, val: str) -> None:
        port_s, _, hexdata = val.partition(":")
        try:
            port = int(port_s)
            data = bytes.fromhex(hexdata)
        except ValueError:
            return self._write("AT_PARAM_ERROR")
        if not 1 <= port <= 223 or len(data) > self.max_payload:
            return self._write("AT_PARAM_ERROR")
        if not self.joined:
            return self._write("AT_NO_NETWORK_JOINED")
        if self._restricted():
            return None
        if self.busy_sends > 0:
            self.busy_sends -= 1
            return self._write("AT_BUSY_ERROR")
        confirmed = self.settings.get("CFM") == "1"
        self._write("OK")
        lines = []
        if confirmed and self.fail_confirms > 0:
            self.fail_confirms -= 1
            lines.append("+EVT:SEND_CONFIRMED_FAILED(4)")
        else:
            self.uplinks.append((port, data, confirmed))
            lines.append("+EVT:SEND_CONFIRMED_OK" if confirmed else "+EVT:TX_DONE")
            with self._lock:
                if self.downlinks:
                    dport, dl = self.downlinks.pop(0)
                    lines.append(f"+EVT:RX_1:-72:9:UNICAST:{dport}:{dl.hex().upper()}")
        if self._timereq:  # MLME_DEVICE_TIME's confirm follows the uplink's (service_lora.c)
            self._timereq = False
            self.time_requests += 1
            nt = self.network_time
            if nt is None or lines[0].startswith("+EVT:SEND_CONFIRMED_FAILED"):
                lines.append("+EVT:TIMEREQ_FAILED")
            else:  # DeviceTimeAns: GPS time, which runs 18 s ahead of UTC
                self._sys_off = nt() + 18 - time.monotonic()
                lines.append("+EVT:TIMEREQ_OK")
        self._later(self.tx_delay, *lines)
        return None
