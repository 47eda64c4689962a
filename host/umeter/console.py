"""Node consoles: what a node prints (its log lines, tracebacks), read as it grows.

A virtual node of `umeter sim` writes its console to `console.log` in its flash directory; a
virtual or real board prints it on its serial port. This module reads both the same way, picks
out the lines that say something went wrong (`is_error`), and keeps a registry of the consoles
of running `umeter sim` processes so `umeter logs NODE` can find them from another terminal.
"""

from __future__ import annotations

import collections
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TransportError

# The firmware's log lines that report a failure (node.py, link/, policy/: "link error: …",
# "report failed: …", "telemetry not sent: …", "uplink not started: …", "store-and-forward
# off: …", "health check failed …"), and the last line of a MicroPython traceback
# ("MemoryError: memory allocation failed, allocating 1280 bytes").
_ERROR = re.compile(
    r"\b(error|failed|not sent|not started|not subscribed|not applied|not written|skipped|link down)\b"
    r"|\boff: |^[A-Za-z_.]*(Error|Exception)\b"
)
_STAMP = re.compile(r"^\[\d+\] ")  # node.log's "[ticks_ms] " prefix


def is_error(line: str) -> bool:
    """True for a console line that reports a failure."""
    text = _STAMP.sub("", line.strip())
    if not text or text.startswith(("Traceback", "File ", "KeyboardInterrupt")):
        return False
    return _ERROR.search(text) is not None


def error_text(line: str) -> str:
    """The failure without the node's tick stamp: '[1234] link error: x' -> 'link error: x'."""
    return _STAMP.sub("", line.strip())


@dataclass
class LastError:
    text: str
    at: float  # time.monotonic() when it was read


@dataclass
class ConsoleTail:
    """Reads a console file as it grows: complete lines only, the last `keep` of them kept,
    the newest failure remembered."""

    path: Path
    keep: int = 200
    offset: int = 0
    lines: collections.deque = field(default_factory=collections.deque)
    last_error: LastError | None = None
    _partial: bytes = b""

    def poll(self) -> list[str]:
        """New complete lines since the last call ([] if the file does not exist yet)."""
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:
                    self.offset = 0  # rotated or truncated: read the new file from its start
                    self._partial = b""
                f.seek(self.offset)
                data = f.read(1 << 20)
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        *done, self._partial = data.split(b"\n")
        now = time.monotonic()
        out = []
        for raw in done:
            line = raw.decode(errors="replace").rstrip("\r")
            out.append(line)
            self.lines.append(line)
            if len(self.lines) > self.keep:
                self.lines.popleft()
            if is_error(line):
                self.last_error = LastError(error_text(line), now)
        return out


# -- consoles of running `umeter sim` and `umeter vboard start --provision` (`umeter logs NODE`) --
def run_dir() -> Path:
    """Where running `umeter sim` and `umeter vboard start --provision` list their nodes' consoles."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"umeter-{os.getuid()}"


def register(consoles: dict[str, Path]) -> Path:
    """Record this process's node consoles; returns the file to remove() when done."""
    d = run_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    p = d / f"consoles-{os.getpid()}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "consoles": {k: str(v) for k, v in consoles.items()}}))
    tmp.replace(p)
    return p


def registered() -> dict[str, Path]:
    """node name -> console file, over every running `umeter sim` (stale entries skipped)."""
    out: dict[str, Path] = {}
    d = run_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("consoles-*.json"), key=lambda x: x.stat().st_mtime):
        try:
            doc = json.loads(p.read_text())
            os.kill(int(doc["pid"]), 0)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # gone, or not ours
        for k, v in doc.get("consoles", {}).items():
            out[k] = Path(v)
    return out


# -- following -----------------------------------------------------------------------------------
def follow_file(path: Path, *, lines: int = 20, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """The last `lines` lines of a console file, then each new line as it is written."""
    t = ConsoleTail(Path(path), keep=max(lines, 1))
    t.poll()
    yield from list(t.lines)[-lines:] if lines else []
    while not stop():
        new = t.poll()
        yield from new
        if not new:
            time.sleep(0.1)


def follow_port(port: str, *, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Lines a board prints on its serial port (USB serial, a virtual board's pty, socket://),
    read through mpremote's transport without interrupting what runs: nothing is sent."""
    import serial
    from mpremote.transport import TransportError as MpTransportError
    from mpremote.transport_serial import SerialTransport

    from .transport import check_not_busy, resolve_port

    dev = resolve_port(port)
    check_not_busy(dev)
    try:
        t = SerialTransport(dev, baudrate=115200, wait=0, exclusive=True, timeout=0.2)
    except (MpTransportError, serial.SerialException, OSError) as e:
        raise TransportError(f"cannot open {dev}: {e}", hint="check the port and its permissions") from None
    partial = b""
    try:
        while not stop():
            try:
                data = t.serial.read(4096)
            except (serial.SerialException, OSError) as e:
                raise TransportError(f"{dev}: link lost ({e})", hint="is the board still plugged in?") from None
            if not data:
                continue
            *done, partial = (partial + data).split(b"\n")
            for raw in done:
                yield raw.decode(errors="replace").rstrip("\r")
    finally:
        try:
            t.close()
        except OSError:
            pass
