"""A loopback TCP proxy that injects network faults between nodes and a broker.

    with FaultProxy("127.0.0.1", broker.port) as px:
        node connects to px.port
        px.stall()    # keep connections open but forward nothing (bytes wait in the kernel)
        px.drop()     # keep connections open, read and discard everything (a black hole)
        px.cut()      # reset every open connection now
        px.refuse()   # new connections are accepted and closed at once
        px.resume()   # back to forwarding

`latency_ms` delays every chunk in each direction (a round trip costs twice that), to
emulate a broker across a real network.

Counters (`connections`, `cuts`, `bytes_up`, `bytes_down`, `dropped`) let tests check that
a fault really happened.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time

PASS, STALL, DROP, REFUSE = "pass", "stall", "drop", "refuse"


class FaultProxy:
    """Forwards 127.0.0.1:<port> to target_host:target_port, with faults on demand."""

    def __init__(self, target_host: str, target_port: int, port: int = 0, latency_ms: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.latency = latency_ms / 1000.0
        self._ls = socket.socket()
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._ls.bind(("127.0.0.1", port))
        self._ls.listen(16)
        self.host = "127.0.0.1"
        self.port = self._ls.getsockname()[1]
        self.mode = PASS
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connections = 0
        self.cuts = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped = 0

    # -- faults --------------------------------------------------------------------------------
    def stall(self) -> None:
        self.mode = STALL

    def drop(self) -> None:
        self.mode = DROP

    def refuse(self) -> None:
        self.mode = REFUSE

    def resume(self) -> None:
        self.mode = PASS

    def cut(self) -> int:
        """Resets every open connection; returns how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    s.close()
        self.cuts += len(pairs)
        return len(pairs)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    # -- running -------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._accept, name="netfault-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._ls.close()
        self.cut()
        if self._thread:
            self._thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self._ls], [], [], 0.1)
                if not r:
                    continue
                cs, _ = self._ls.accept()
            except OSError:
                return
            if self.mode == REFUSE:
                cs.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                cs.close()
                continue
            for s in (cs, up):  # a network emulator must not add Nagle delays of its own
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            with self._lock:
                self._pairs.append((cs, up))
            threading.Thread(target=self._pump, args=(cs, up), name="netfault-pump", daemon=True).start()

    def _delayed(self, dst: socket.socket, q: queue.Queue) -> None:
        # Sends each chunk `latency` after it arrived, in order.
        while True:
            item = q.get()
            if item is None:
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                return

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        queues: dict[socket.socket, queue.Queue] = {}
        if self.latency > 0:
            for dst in (a, b):
                queues[dst] = queue.Queue()
                threading.Thread(target=self._delayed, args=(dst, queues[dst]), daemon=True).start()
        try:
            while not self._stop.is_set():
                if self.mode == STALL:
                    self._stop.wait(0.02)
                    with self._lock:
                        if (a, b) not in self._pairs:
                            return
                    continue
                r, _, _ = select.select([a, b], [], [], 0.05)
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if self.mode == DROP:
                        self.dropped += len(data)
                        continue
                    if queues:
                        queues[peer[s]].put((time.monotonic() + self.latency, data))
                    else:
                        peer[s].sendall(data)
                    if s is a:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
        except (OSError, ValueError):
            pass
        for q in queues.values():
            q.put(None)
        with self._lock:
            if (a, b) in self._pairs:
                self._pairs.remove((a, b))
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()
