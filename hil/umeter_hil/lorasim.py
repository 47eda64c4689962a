"""A simulated LoRaWAN modem (RAK3172 / RUI3 AT dialect) behind a pty, for tests.

The node's AT driver opens `modem.port` (the pty's slave side) as if it were the UART to a
real RAK3172. The simulator answers like the module does:

    AT                          -> OK
    AT+<key>=<value>            -> OK (stored) | AT_PARAM_ERROR
    AT+<key>=?                  -> <value> then OK
    AT+JOIN=1:0:10:8            -> OK, later +EVT:JOINED or +EVT:JOIN_FAILED_RX_TIMEOUT
    AT+CFM=0|1                  -> OK (confirmed uplinks off/on)
    AT+SEND=<port>:<hex>        -> OK, later +EVT:TX_DONE (unconfirmed) or
                                   +EVT:SEND_CONFIRMED_OK / +EVT:SEND_CONFIRMED_FAILED(4)
                                   | AT_NO_NETWORK_JOINED | AT_BUSY_ERROR | AT_PARAM_ERROR
    a queued downlink arrives after the next uplink as
                                   +EVT:RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>

Faults on demand: `fail_joins` (the next N joins fail), `busy_sends` (the next N sends
answer AT_BUSY_ERROR), `fail_confirms` (the next N confirmed uplinks get no ACK),
`max_payload` (longer payloads answer AT_PARAM_ERROR, like DR0's 51 bytes).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty


class SimModem:
    def __init__(self, *, join_delay: float = 0.05, tx_delay: float = 0.02, max_payload: int = 51) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty stays alive between driver opens
        self.join_delay = join_delay
        self.tx_delay = tx_delay
        self.max_payload = max_payload
        self.settings: dict[str, str] = {"NWM": "1", "BAND": "4", "DR": "0", "CFM": "0", "NJM": "1", "CLASS": "A"}
        self.joined = False
        self.joins = 0
        self.fail_joins = 0
        self.busy_sends = 0
        self.fail_confirms = 0
        self.uplinks: list[tuple[int, bytes, bool]] = []  # (port, payload, confirmed) accepted
        self.downlinks: list[tuple[int, bytes]] = []  # queued for after the next uplink
        self.commands: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------
    def queue_downlink(self, port: int, payload: bytes) -> None:
        with self._lock:
            self.downlinks.append((port, payload))

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
    def _write(self, line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, (line + "\r\n").encode())

    def _later(self, delay: float, *lines: str) -> None:
        def go() -> None:
            time.sleep(delay)
            for ln in lines:
                self._write(ln)

        threading.Thread(target=go, daemon=True).start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.master], [], [], 0.05)
                if not r:
                    continue
                buf += os.read(self.master, 1024)
            except OSError:
                return
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
            return self._write(f"AT+{key}={self.settings.get(key, '')}") or self._write("OK")
        if key == "JOIN":
            return self._join(val)
        if key == "SEND":
            return self._send(val)
        if key in ("DEVEUI", "APPEUI", "APPKEY"):
            n = 32 if key == "APPKEY" else 16
            if len(val) != n or any(c not in "0123456789abcdefABCDEF" for c in val):
                return self._write("AT_PARAM_ERROR")
        if key == "CFM" and val not in ("0", "1"):
            return self._write("AT_PARAM_ERROR")
        self.settings[key] = val
        self._write("OK")

    def _join(self, val: str) -> None:
        if not val.startswith("1"):
            self.joined = False
            return self._write("OK")
        self.joins += 1
        self._write("OK")
        if self.fail_joins > 0:
            self.fail_joins -= 1
            self._later(self.join_delay, "+EVT:JOIN_FAILED_RX_TIMEOUT")
        else:
            self.joined = True
            self._later(self.join_delay, "+EVT:JOINED")

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
        self._later(self.tx_delay, *lines)
