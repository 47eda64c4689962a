"""A board reached through its raw REPL (USB serial port, virtual board pty, socket:// or
rfc2217://): our small, stable interface over mpremote's SerialTransport, whose API is not
stable (pin mpremote; contract-tested against the virtual board in tests/host).

Everything the toolchain does to a board's files goes through here, and every write is safe:

    write_file(path, data)   temp file `path.tmp` in base64 chunks -> sha256 of the temp file on
                             the board must equal the host's -> os.rename over `path`
                             (atomic on LittleFS and on the virtual board's VfsPosix)

so an interrupted copy leaves the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable

from .errors import DeviceError, TransportError, UmeterError

INTERRUPT_S = 3.0  # s of Ctrl-C at most before entering the raw REPL (see Board._interrupt)
CHUNK = 2048  # raw bytes per exec: 2.7 KiB of base64, well inside a board's heap
TMP_SUFFIX = ".tmp"
_AST_LOCK = threading.Lock()

_HELPERS = """\
import os, hashlib, binascii
def _um_h(p):
    try:
        h = hashlib.sha256()
        b = bytearray(512)
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(b if n == 512 else b[:n])
        return binascii.hexlify(h.digest()).decode()
    except OSError:
        return None
def _um_md(p):
    s = ''
    for d in p.split('/')[:-1]:
        if d:
            s += '/' + d
            try:
                os.mkdir(s)
            except OSError:
                pass
def _um_open(p):
    global _um_f
    _um_md(p)
    _um_f = open(p + '.tmp', 'wb')
def _um_w(b):
    _um_f.write(binascii.a2b_base64(b))
def _um_fin(p, want):
    _um_f.close()
    got = _um_h(p + '.tmp')
    if got != want:
        os.remove(p + '.tmp')
        return got
    os.rename(p + '.tmp', p)
    return 'ok'
def _um_walk(d, out):
    try:
        it = os.ilistdir(d)
    except OSError:
        return out
    for e in it:
        p = (d.rstrip('/') + '/' + e[0])
        if e[1] == 0x4000:
            _um_walk(p, out)
        else:
            out.append(p)
    return out
"""


class _ThreadStdout:
    """sys.stdout while boards are being opened: a thread that captures (see _captured) writes
    to its own buffer, every other thread to the real stdout. contextlib.redirect_stdout swaps
    the one process-wide sys.stdout, so boards opened in parallel (provision -j 8) left it
    pointing at one thread's buffer and the command's later output vanished."""

    def __init__(self, real) -> None:
        self.real = real
        self.bufs: dict[int, io.StringIO] = {}

    def write(self, s: str) -> int:
        return self.bufs.get(threading.get_ident(), self.real).write(s)

    def flush(self) -> None:
        self.bufs.get(threading.get_ident(), self.real).flush()

    def __getattr__(self, name: str):
        return getattr(self.real, name)


_capture_lock = threading.Lock()
_proxy: _ThreadStdout | None = None


@contextlib.contextmanager
def _captured(buf: io.StringIO):
    """This thread's prints go to `buf` for the duration (thread-safe; see _ThreadStdout)."""
    global _proxy
    me = threading.get_ident()
    with _capture_lock:
        if _proxy is None:
            _proxy = _ThreadStdout(sys.stdout)
            sys.stdout = _proxy
        _proxy.bufs[me] = buf
    try:
        yield
    finally:
        with _capture_lock:
            _proxy.bufs.pop(me, None)
            if not _proxy.bufs:
                if sys.stdout is _proxy:
                    sys.stdout = _proxy.real
                _proxy = None


# Imports meternode from the firmware's frozen modules only (a package already imported from
# files is forgotten first, and again after), and reads its VERSION.
_FROZEN_PROBE = """import sys
for _um_k in [k for k in sys.modules if k == 'meternode' or k.startswith('meternode.')]:
    del sys.modules[_um_k]
_um_p = sys.path[:]
sys.path[:] = ['.frozen']
try:
    import meternode as _um_m
    _um_fv = getattr(_um_m, 'VERSION', '?')
except ImportError:
    _um_fv = None
sys.path[:] = _um_p
for _um_k in [k for k in sys.modules if k == 'meternode' or k.startswith('meternode.')]:
    del sys.modules[_um_k]
_um_m = _um_p = None
"""

# ROMFS partition 0 (MicroPython's vfs.rom_ioctl, docs/memory.md): rom_ioctl(2, 0) gives a
# block device (esp32.Partition, rp2.Flash: ioctl 4/5/6, writeblocks with an offset, and the
# buffer protocol) or a memoryview (rom_ioctl 3/4/5 prepare, write, finish).
_ROMFS_HELPERS = """\
import vfs
def _um_rinfo():
    if not hasattr(vfs, 'rom_ioctl') or vfs.rom_ioctl(1) < 1:
        return None
    d = vfs.rom_ioctl(2, 0)
    if isinstance(d, int):
        return None
    if hasattr(d, 'ioctl'):
        return [d.ioctl(4, 0) * d.ioctl(5, 0), d.ioctl(5, 0), 'block']
    return [len(d), vfs.rom_ioctl(6, 0), 'memory']
def _um_rh(n):
    m = memoryview(vfs.rom_ioctl(2, 0))
    h = hashlib.sha256()
    for i in range(0, n, 512):
        h.update(m[i:min(n, i + 512)])
    return binascii.hexlify(h.digest()).decode()
def _um_rprep(n):
    try:
        vfs.umount('/rom')
    except OSError:
        pass
    d = vfs.rom_ioctl(2, 0)
    if hasattr(d, 'ioctl'):
        bs = d.ioctl(5, 0)
        for b in range((n + bs - 1) // bs):
            d.ioctl(6, b)
        return 4
    return vfs.rom_ioctl(3, 0, n)
def _um_rw(off, b64):
    buf = binascii.a2b_base64(b64)
    d = vfs.rom_ioctl(2, 0)
    if hasattr(d, 'ioctl'):
        bs = d.ioctl(5, 0)
        d.writeblocks(off // bs, buf, off % bs)
    else:
        vfs.rom_ioctl(4, 0, off, buf)
def _um_rfin():
    d = vfs.rom_ioctl(2, 0)
    if not hasattr(d, 'ioctl'):
        vfs.rom_ioctl(5, 0)
"""


def resolve_port(port: str | None = None, serial_number: str | None = None) -> str:
    """A device string for a port path/URL or a USB serial number; TransportError if absent."""
    if port:
        if "://" in port or os.path.exists(port):
            return port
        raise TransportError(
            f"no such port {port}", hint="is the board plugged in? list ports with `umeter fleet ports`"
        )
    if serial_number:
        from serial.tools import list_ports

        for p in list_ports.comports():
            if p.serial_number and p.serial_number.lower() == serial_number.lower():
                return p.device
        raise TransportError(
            f"no port with USB serial number {serial_number}",
            hint="is the board plugged in? list ports with `umeter fleet ports`",
        )
    raise TransportError("no port given", hint="pass a port or a serial number")


def split_token(url: str) -> tuple[str, str | None]:
    """`socket://HOST:PORT?token=T` -> (`socket://HOST:PORT`, T): a virtual board's TCP
    listener wants its token as the first line (umeter_hil.vboard); pyserial knows no such
    option, so the transport sends it itself. Other ports come back unchanged, token None."""
    if not url.startswith("socket://") or "?" not in url:
        return url, None
    base, _, query = url.partition("?")
    from urllib.parse import parse_qs

    q = parse_qs(query, keep_blank_values=True)
    token = (q.pop("token", [None]) or [None])[0]
    if token is None:
        return url, None
    rest = "&".join(f"{k}={v}" for k, vs in q.items() for v in vs)
    return base + (f"?{rest}" if rest else ""), token


def check_not_busy(dev: str) -> None:
    """TransportError if a serial device is missing or locked by another program (pyserial's
    exclusive open uses flock, as mpremote and esptool do)."""
    if "://" in dev:
        return
    import fcntl

    try:
        fd = os.open(dev, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TransportError(f"no such port {dev}", hint="is the board plugged in?") from None
    except PermissionError:
        raise TransportError(f"no permission to open {dev}", hint="add yourself to the dialout group") from None
    except OSError as e:
        raise TransportError(f"cannot open {dev}: {e.strerror}", hint="check the port") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise TransportError(
            f"port {dev} is busy", hint="close the other program using it (mpremote, a terminal, ModemManager)"
        ) from None
    finally:
        os.close(fd)


class Board:
    """A connection to one board in its raw REPL. Use as a context manager."""

    def __init__(self, port: str, *, baudrate: int = 115200, timeout: float = 10.0, retries: int = 3) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.retries = retries
        self._t = None
        self._helpers = False
        self._lost = ""  # set once the board stopped answering: later calls fail at once

    def open(self, soft_reset: bool = False) -> Board:
        """Open the port and enter the raw REPL (interrupting running code). Bounded retries."""
        import serial
        from mpremote.transport import TransportError as MpTransportError
        from mpremote.transport_serial import SerialTransport

        dev, token = split_token(resolve_port(self.port))
        check_not_busy(dev)
        last = ""
        for attempt in range(self.retries):
            try:
                self._t = SerialTransport(dev, baudrate=self.baudrate, wait=0, exclusive=True, timeout=self.timeout)
                if token is not None:
                    self._t.serial.write(token.encode() + b"\n")
            except (MpTransportError, serial.SerialException, OSError) as e:
                check_not_busy(dev)
                raise TransportError(f"cannot open {dev}: {e}", hint="check the port and its permissions") from None
            seen = io.StringIO()
            try:
                self._interrupt(min(INTERRUPT_S, self.timeout))
                # mpremote prints the bytes it got when the banner does not come: keep them
                # off our stdout and put them in the error instead.
                with _captured(seen):
                    self._t.enter_raw_repl(soft_reset=soft_reset, timeout_overall=self.timeout)
                self._helpers = False
                return self
            except Exception as e:  # mpremote raises its own TransportError or serial errors
                last = f"{e}; received {seen.getvalue().strip()[-80:] or 'nothing'}"
                with contextlib.suppress(Exception):
                    self._t.close()
                self._t = None
                time.sleep(0.5 * (attempt + 1))  # an ESP32 that just reset needs ~1 s to boot
        raise TransportError(
            f"{dev}: could not enter the raw REPL after {self.retries} attempts ({last})",
            hint="is it a MicroPython board? press reset, or check that boot.py does not block",
        )

    def _interrupt(self, seconds: float) -> bool:
        """Ctrl-C until the board shows a prompt (True), for up to `seconds`. mpremote sends one
        Ctrl-C; a running node may miss it, or die of it and boot into main.py again (a node
        out of memory does), and a Ctrl-C repeated while the board boots stops main.py before
        the node starts: what makes a board whose node runs reachable."""
        ser = self._t.serial
        t0 = heard = time.monotonic()
        tail = b""
        next_c = 0.0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds or now - heard >= 1.0:
                return False  # silent (a raw REPL echoes nothing to Ctrl-C): let mpremote try
            if now >= next_c:
                ser.write(b"\r\x03")
                next_c = now + 0.25
            n = ser.in_waiting
            if n:
                heard = now
                tail = (tail + ser.read(n))[-64:]
                if tail.endswith((b">>> ", b"raw REPL; CTRL-B to exit\r\n>")):
                    return True
            else:
                time.sleep(0.02)

    def close(self) -> None:
        if self._t is not None:
            if not self._lost:
                with contextlib.suppress(Exception):
                    self._t.exit_raw_repl()
            with contextlib.suppress(Exception):
                self._t.close()
            self._t = None

    def __enter__(self) -> Board:
        return self.open() if self._t is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ exec
    def exec(self, code: str) -> bytes:
        """Run code; DeviceError with the board's traceback if it raised."""
        if self._t is None:
            raise TransportError(f"{self.port} is not open", hint="use `with Board(port) as b:`")
        if self._lost:
            raise TransportError(f"{self.port}: link lost ({self._lost})", hint="check the cable/power and run again")
        try:
            out, err = self._t.exec_raw(code, timeout=self.timeout)
        except Exception as e:
            if isinstance(e, DeviceError | TransportError):
                raise
            self._lost = str(e) or type(e).__name__
            raise TransportError(
                f"{self.port}: link lost ({self._lost})", hint="check the cable/power and run again"
            ) from None
        if err:
            last = err.decode(errors="replace").strip().splitlines()[-1]
            raise DeviceError(f"{self.port}: board raised {last}", hint="see the board's output with -v")
        return out

    def eval(self, expr: str):
        import ast

        out = self.exec(f"print(repr({expr}))").decode(errors="replace").strip()
        try:
            with _AST_LOCK:  # CPython 3.11's compiler is not thread-safe here (recursion depth mismatch)
                return ast.literal_eval(out)
        except (ValueError, SyntaxError):
            raise DeviceError(
                f"{self.port}: unexpected answer {out[:80]!r}", hint="is it running umeter firmware?"
            ) from None

    def _need_helpers(self) -> None:
        if not self._helpers:
            self.exec(_HELPERS)
            self._helpers = True

    # ------------------------------------------------------------------ identity
    def unique_id(self) -> str:
        return self.eval("__import__('binascii').hexlify(__import__('machine').unique_id()).decode()")

    def info(self) -> dict:
        """unique id, mpy ABI (arch code and version), machine string, free heap."""
        v = self.eval(
            "(__import__('binascii').hexlify(__import__('machine').unique_id()).decode(), "
            "getattr(__import__('sys').implementation, '_mpy', 0), __import__('sys').implementation._machine, "
            "__import__('gc').mem_free())"
        )
        return {"uid": v[0], "mpy_arch": (v[1] >> 10) & 0xF, "mpy_ver": v[1] & 0xFF, "machine": v[2], "mem_free": v[3]}

    def heap(self) -> tuple[int, int]:
        """(gc heap free after a collection, free IDF data heap on an esp32 else 0): what a node
        would start in. An esp32's gc heap grows into the IDF heap when it is full
        (MICROPY_GC_SPLIT_HEAP_AUTO), which Wi-Fi and TLS take from too."""
        self.exec(
            "import gc\ngc.collect()\n_um_i = 0\ntry:\n import esp32\n"
            " _um_i = sum(h[1] for h in esp32.idf_heap_info(esp32.HEAP_DATA))\nexcept Exception:\n pass"
        )
        v = self.eval("(gc.mem_free(), _um_i)")
        return int(v[0]), int(v[1])

    def fs(self) -> tuple[int, int, int]:
        """(block size, blocks, free blocks) of the board's file system at / (os.statvfs)."""
        v = self.eval("__import__('os').statvfs('/')")
        return int(v[0]), int(v[2]), int(v[3])

    # ------------------------------------------------------------------ files
    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 hex of each file on the board (None if absent), in one exec per 40 files."""
        self._need_helpers()
        out: dict[str, str | None] = {}
        for i in range(0, len(paths), 40):
            part = paths[i : i + 40]
            res = self.eval(f"[_um_h(p) for p in {part!r}]")
            out.update(zip(part, res, strict=True))
        return out

    def walk(self, top: str = "/") -> list[str]:
        self._need_helpers()
        return self.eval(f"_um_walk({top!r}, [])")

    def remove_dirs(self, top: str) -> None:
        """Remove `top` and the directories under it that are empty (deepest first); a
        directory that still holds files stays."""
        self.exec(
            "def _um_rd(d):\n"
            " try:\n  it = list(os.ilistdir(d))\n except OSError:\n  return\n"
            " for e in it:\n  if e[1] == 0x4000:\n   _um_rd(d + '/' + e[0])\n"
            " try:\n  os.rmdir(d)\n except OSError:\n  pass\n"
            f"_um_rd({top.rstrip('/')!r})"
        )

    def remove(self, path: str) -> None:
        self.exec(f"try:\n os.remove({path!r})\nexcept OSError:\n pass")

    def write_file(
        self, path: str, data: bytes, *, progress: Callable[[int], None] | None = None, chunk: int = CHUNK
    ) -> None:
        """Safe write: `path.tmp` in base64 chunks, sha256 check on the board, rename over `path`.
        The first chunk rides with the open and the last with the check + rename, so a file of
        one chunk costs one round trip."""
        self._need_helpers()
        want = hashlib.sha256(data).hexdigest()
        parts = [base64.b64encode(data[i : i + chunk]).decode() for i in range(0, len(data), chunk)] or [""]
        sizes = [min(chunk, len(data) - i) for i in range(0, len(data), chunk)] or [0]
        done = False
        try:
            for k, b64 in enumerate(parts):
                head = f"_um_open({path!r}) or " if k == 0 else ""
                if k == len(parts) - 1:
                    got = self.eval(f"{head}_um_w({b64!r}) or _um_fin({path!r}, {want!r})")
                    done = True
                else:
                    self.exec(f"{head}_um_w({b64!r})")
                if progress:
                    progress(sizes[k])
        finally:
            if not done:
                with contextlib.suppress(UmeterError):
                    self.exec("_um_f.close()")
        if got != "ok":
            raise DeviceError(
                f"{self.port}: {path} arrived corrupted (sha256 {got} != {want})", hint="run again; check the cable"
            )

    def frozen_package(self) -> str | None:
        """The VERSION of a meternode package frozen into the board's firmware, or None when
        there is none. '.frozen' comes before /rom/lib and /lib on a board's sys.path, so such a
        package is the one the node runs, whatever files the board holds."""
        self.exec(_FROZEN_PROBE)
        v = self.eval("_um_fv")
        return None if v is None else str(v)

    # ------------------------------------------------------------------ ROMFS
    def romfs_partition(self) -> dict | None:
        """ROMFS partition 0 as {"size", "block", "style"}, or None when the board has none
        (no `vfs.rom_ioctl`, or no partition)."""
        self._need_helpers()
        self.exec(_ROMFS_HELPERS)
        v = self.eval("_um_rinfo()")
        return None if v is None else {"size": v[0], "block": v[1], "style": v[2]}

    def romfs_hash(self, n: int) -> str:
        """sha256 hex of the partition's first `n` bytes."""
        return self.eval(f"_um_rh({n})")

    def write_romfs(self, image: bytes, *, progress: Callable[[int], None] | None = None) -> None:
        """Write a ROMFS image to partition 0 (romfs_partition() first): /rom unmounted, the
        blocks it needs erased, then written in chunks with the first one -- the header --
        last, so a cut leaves an erased header and the board mounts no half-written image;
        then the partition's hash is checked. The board needs a reset to mount the new image."""
        want = hashlib.sha256(image).hexdigest()
        unit = int(self.eval(f"_um_rprep({len(image)})") or 1)
        step = (CHUNK + unit - 1) // unit * unit
        offsets = list(range(0, len(image), step))
        for off in offsets[1:] + offsets[:1]:
            part = image[off : off + step]
            if len(part) % unit:
                part += b"\xff" * (unit - len(part) % unit)
            self.exec(f"_um_rw({off}, {base64.b64encode(part).decode()!r})")
            if progress:
                progress(min(step, len(image) - off))
        self.exec("_um_rfin()")
        got = self.romfs_hash(len(image))
        if got != want:
            raise DeviceError(
                f"{self.port}: the ROMFS image arrived corrupted (sha256 {got} != {want})", hint="run again"
            )

    def read_file(self, path: str) -> bytes:
        b64 = self.eval(
            f"binascii.b2a_base64(open({path!r}, 'rb').read()).decode()"
            if self._helpers
            else f"__import__('binascii').b2a_base64(open({path!r}, 'rb').read()).decode()"
        )
        return base64.b64decode(b64)

    def soft_reset(self) -> None:
        """Soft-reset into the raw REPL again (boot.py runs, main.py does not)."""
        if self._t is None:
            return
        self._t.serial.write(b"\x04")
        self._t.read_until(1, b"soft reboot\r\n", timeout=self.timeout)
        self._t.read_until(1, b"raw REPL; CTRL-B to exit\r\n", timeout=self.timeout)
        self._helpers = False

    def hard_reset(self) -> None:
        """machine.reset() (the board restarts and runs main.py); the connection is closed."""
        if self._t is None:
            return
        with contextlib.suppress(Exception):
            self._t.exec_raw_no_follow("import machine; machine.reset()")
        self.close()
