"""NTP servers on loopback for the firmware's SNTP client (firmware tests' `host:ntp`).

The packets are read and written by `ntplib` (an independent implementation of the NTP
packet), not by our code: a request our client makes must parse as NTP version 4, mode 3, or
it gets no answer. Each server has one behaviour, on its own UDP port:

    good     the host's time, stratum 2
    ahead    the host's time + AHEAD_S
    spoof    the host's time, but an originate timestamp that is not the request's
    kod      a kiss-o'-death (stratum 0, "RATE")
    unsync   leap indicator 3 (the server's clock is not synchronised)
    silent   takes the request and never answers

`NtpServers().ports` maps each name to its port; `requests` counts what each took.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import ntplib

AHEAD_S = 7200
NTP_UNIX = 2208988800
BEHAVIOURS = ("good", "ahead", "spoof", "kod", "unsync", "silent")


def _ntp(t: float) -> float:
    return t + NTP_UNIX


class NtpServers:
    def __init__(self) -> None:
        self.socks: dict[str, socket.socket] = {}
        self.ports: dict[str, int] = {}
        self.requests: dict[str, int] = dict.fromkeys(BEHAVIOURS, 0)
        self.bad: list[str] = []  # requests that were not NTP v4 client packets, why
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NtpServers:
        for name in BEHAVIOURS:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            self.socks[name] = s
            self.ports[name] = s.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="ntp-servers", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for s in self.socks.values():
            s.close()

    def env(self) -> str:
        return ",".join(f"{k}:{v}" for k, v in self.ports.items())

    def _serve(self) -> None:
        by_sock = {s: name for name, s in self.socks.items()}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(by_sock), [], [], 0.2)
            for s in ready:
                data, addr = s.recvfrom(512)
                name = by_sock[s]
                self.requests[name] += 1
                req = ntplib.NTPPacket()
                try:
                    req.from_data(data)
                except ntplib.NTPException as e:
                    self.bad.append(f"{name}: {e}")
                    continue
                if len(data) != 48 or req.version != 4 or req.mode != 3:
                    self.bad.append(f"{name}: {len(data)} bytes, version {req.version}, mode {req.mode}")
                    continue
                if name == "silent":
                    continue
                s.sendto(self._answer(name, req), addr)

    def _answer(self, name: str, req: ntplib.NTPPacket) -> bytes:
        now = time.time() + (AHEAD_S if name == "ahead" else 0)
        p = ntplib.NTPPacket(version=4, mode=4)
        p.stratum = 2
        p.poll = 6
        p.precision = -20
        p.ref_id = 0x7F000001
        p.ref_timestamp = _ntp(now - 10)
        p.orig_timestamp = req.tx_timestamp if name != "spoof" else req.tx_timestamp + 1.0
        p.recv_timestamp = _ntp(now)
        p.tx_timestamp = _ntp(now)
        if name == "kod":
            p.stratum = 0
            p.ref_id = int.from_bytes(b"RATE", "big")
        elif name == "unsync":
            p.leap = 3
        return p.to_data()
