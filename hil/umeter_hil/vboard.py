"""Virtual board: the firmware on the MicroPython unix port behind a pty, which host tools
(stock mpremote, pyboard.py, `umeter`) cannot tell from a board on a USB serial port.

    with VirtualBoard(tmp_path / "vb0", board="sim") as vb:
        subprocess.run(["mpremote", "connect", vb.port, "exec", "print(1)"])

A relay thread sits between the host-side pty (`vb.port`, a /dev/pts/N) and a board-side pty
that is the unix port's stdin/stdout, and closes the gaps between the unix port and a board
(see docs/fleet.md and the host reference, section 2):

- the board-side pty is fully raw (no \\r\\r\\n, no line editing of binary mount traffic); the
  host-side slave is kept open so reconnects never see EIO;
- soft reset: the unix port exits on Ctrl-D; the relay prints ``MPY: soft reboot``, restarts
  it and returns to the same REPL mode (sending Ctrl-A itself when the host was in raw REPL);
- Ctrl-C from the host becomes SIGINT to the child while code runs (the unix port ignores a
  0x03 byte during raw-paste execution), except after a `mount` hook was sent;
- a per-board flash directory is mounted at / by ``board_shim/vboot.py``, which runs
  ``boot.py`` and, in friendly-REPL mode only, ``main.py``; heap from the board definition;
  stand-ins for machine/network/esp32 (``board_shim/``) carry a unique id per board;
- fault injection: drop or delay bytes in either direction, cut power (SIGKILL) now or after
  N more bytes from the host, power on again;
- UARTs wired to host devices (`uarts={1: pty}`, e.g. a simulated meter bus of
  umeter_hil.bussim): machine.UART(1) on the board reads and writes that device.
- optionally a ROMFS partition (`romfs=` bytes, or the board definition's "romfs"):
  ``board_shim/vbvfs.py`` gives `vfs.rom_ioctl()` over ``state/romfs.bin`` and mounts a valid
  image at /rom at boot, so stock ``mpremote romfs query/deploy`` and `umeter provision` work
  against it; the interpreter gets the partition's size on top of the board's heap (a board
  maps it from flash).
- optionally a board's flash (`flash="pico_w"`, `"pico"` or `"esp32"`): instead of the host
  directory, a real LittleFS on an emulation of that board's NOR flash is mounted at /
  (``board_shim/norflash.py``, in ``state/flash.img``, with that board's MicroPython's
  settings), so what a board's file system does (its size, its blocks, a power cut inside a
  write) happens here too.

Optionally a loopback TCP listener speaks for the same board. Any local user can reach a
loopback port, and the raw REPL reads every secret on the board, so the listener wants a
token first: a client sends ``<token>\n`` before anything else (``umeter`` does it for a
``socket://127.0.0.1:PORT?token=<token>`` URL, which ``vb.url`` gives and the CLI prints);
a wrong token, or none within 5 s, closes the connection, and an unauthenticated connection
never displaces the one in use. ``insecure=True`` (``--insecure``) drops the token for
tools that cannot send one (stock mpremote). The board's files are the board owner's only:
the interpreter runs with umask 077 and the flash tree is made 0700/0600 at start, so
config.json (cmd_key, MQTT password) is 0600.
Linux only (pty, setsid).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from umeter import unixport
from umeter.errors import ConfigError, DeviceError

SHIM_DIR = Path(__file__).resolve().parent / "board_shim"
MARKER = b"\x1b[vboot-done]"
DOWN = b"\x1b[vboot-down]"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_PROMPTS = (b">>> ", b"\x04>", RAW_BANNER + b">")
_CONT = re.compile(rb"\.\.\. +$")
_CONSOLE = 64 * 1024
_CONSOLE_FILE = 1 << 20  # state/console.log is rotated to console.log.1 beyond this
_INTR_HOLD_S = 3.0  # a crash this soon after a host Ctrl-C counts as the Ctrl-C's doing
_OUT_LIMIT = 1 << 20  # bytes held for a host side that is not reading; older output is dropped
_AUTH_S = 5.0  # a TCP client has this long to send its token
_AUTH_MAX = 256  # bytes of a token line; more is refused


def load_board(name: str) -> dict:
    """The board definition `boards/<name>.json` (ConfigError naming the board if missing)."""
    path = unixport.boards_dir() / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in unixport.boards_dir().glob("*.json")))
        raise ConfigError(f"unknown board {name!r}", hint=f"known boards: {known}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})", hint="fix the board definition") from None


def _flash_geometries() -> dict:
    from umeter_hil.board_shim import norflash

    return norflash.GEOMETRY


def uid_for(path: Path) -> bytes:
    """A stable 6-byte unique id (MAC-like, locally administered) derived from the board dir."""
    h = bytearray(hashlib.sha256(str(path.resolve()).encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02
    return bytes(h)


@dataclass
class Faults:
    """Fault injection knobs; the relay reads them on every chunk (thread-safe enough: ints)."""

    drop_to_board: int = 0  # drop the next N bytes from host to board
    drop_to_host: int = 0  # drop the next N bytes from board to host
    delay_s: float = 0.0  # stall every forwarded chunk by this long
    cut_after: int | None = None  # cut power after N more bytes from the host
    log: list[str] = field(default_factory=list)


class VirtualBoard:
    """One virtual board. `path` holds `flash/` (the board's filesystem) and `state/` (partitions,
    pins, control file). Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        board: str = "sim",
        *,
        tcp: bool = False,
        uid: bytes | None = None,
        heap: str | int | None = None,
        insecure: bool = False,
        uarts: dict[int, str] | None = None,
        romfs: str | int | None = None,
        romfs_style: str | None = None,
        flash: str | None = None,
    ) -> None:
        self.path = Path(path).resolve()
        # a board's flash (norflash.GEOMETRY) with LittleFS at /, in state/flash.img, instead
        # of the host directory flash/
        if flash is not None and flash not in _flash_geometries():
            raise ConfigError(f"flash {flash!r}", hint=f"one of {', '.join(_flash_geometries())}")
        self.flash_geometry = flash
        self.board_name = board
        self.board = load_board(board)
        self.heap = unixport.parse_heap(heap or self.board.get("heap", unixport.DEFAULT_HEAP))
        r = romfs if romfs is not None else self.board.get("romfs", 0)
        self.romfs = unixport.parse_heap(r) if r else 0  # bytes of the ROMFS partition, 0: none
        if self.romfs % 4096:
            raise ConfigError(f"ROMFS partition of {self.romfs} bytes", hint="a multiple of 4k")
        # how rom_ioctl(2) gives the partition: a memoryview (unix, qemu) or a block device
        # (esp32.Partition, rp2.Flash) -- the board's MCU decides unless told
        self.romfs_style = romfs_style or ("memory" if self.board.get("mcu", "unix") == "unix" else "block")
        if self.romfs_style not in ("memory", "block"):
            raise ConfigError(f"ROMFS style {self.romfs_style!r}", hint="memory or block")
        self.flash = self.path / "flash"
        self.state = self.path / "state"
        self.uid = uid or uid_for(self.path)
        self.uarts = dict(uarts or {})  # UART id -> host device (e.g. a SimBus pty) wired to it
        self.faults = Faults()
        self.want_tcp = tcp
        self.token = "" if insecure else secrets.token_hex(16)  # what a TCP client sends first
        self.port = ""  # /dev/pts/N once started
        self.tcp_port: int | None = None
        self.auth_refused = 0  # TCP connections closed for a wrong or missing token
        self.resets = 0  # child restarts (soft + hard + power)
        self.powered = False
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._bm = -1  # board-side pty master
        self._hm = -1  # host-side pty master
        self._hs = -1  # host-side pty slave, kept open
        self._lsock: socket.socket | None = None
        self._csock: socket.socket | None = None
        self._asock: socket.socket | None = None  # a TCP client that has not sent its token yet
        self._abuf = b""
        self._adeadline = 0.0
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stop = False
        self._pending_power: str | None = None
        # REPL state tracked from the relayed bytes
        self.mode = "friendly"
        self._busy = True
        self._mounted = False
        self._line = 0  # bytes typed on the current friendly-REPL line
        self._cont = False  # the friendly REPL shows a continuation prompt
        self._rawbuf = 0  # bytes sent in raw mode since the last prompt
        self._tail = b""
        self._htail = b""
        self._booting = True
        self._boot_raw = False
        self._swallow = False
        self._intr_pending = False
        self._intr_at: float | None = None  # when a host Ctrl-C became SIGINT, until a prompt shows
        self._since_intr = bytearray()  # what the host sent after that Ctrl-C (bounded)
        self._replay = b""  # ... to send again once a board that died of the Ctrl-C shows a prompt
        self._to_host = bytearray()
        self._to_tcp = bytearray()
        self._console = bytearray()  # the last _CONSOLE bytes the board printed (for diagnostics)
        self.console_path = self.state / "console.log"  # and all of it, for `umeter logs` (rotated)
        self._console_f = None

    # ----------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        """`socket://127.0.0.1:PORT?token=<token>` when started with tcp=True (no `?token` when
        insecure), else the pty path."""
        if not self.tcp_port:
            return self.port
        return f"socket://127.0.0.1:{self.tcp_port}" + (f"?token={self.token}" if self.token else "")

    def start(self) -> VirtualBoard:
        for d in (self.path, self.flash, self.state):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(self.path)
        (self.state / "pins.in").touch()
        self._console_f = open(self.console_path, "ab")  # noqa: SIM115 - closed in stop()
        # the UARTs' wires ({} = none: machine.UART still works, on a line with nothing on it)
        (self.state / "uart.json").write_text(json.dumps({str(k): str(v) for k, v in self.uarts.items()}))
        rom = self.state / "romfs.bin"
        if self.romfs and (not rom.exists() or rom.stat().st_size != self.romfs):
            rom.write_bytes(b"\xff" * self.romfs)  # erased flash (a new size is a new partition)
        self._hm, self._hs = os.openpty()
        tty.setraw(self._hs)
        os.set_blocking(self._hm, False)
        self.port = os.ttyname(self._hs)
        if self.want_tcp:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            s.setblocking(False)
            self._lsock = s
            self.tcp_port = s.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._spawn("power", "friendly")
        self._thread = threading.Thread(target=self._relay, name=f"vboard-{self.path.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread:
            self._thread.join(5)
        self._kill()
        for fd in (self._hm, self._hs, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._hm = self._hs = self._wake_r = self._wake_w = -1
        for s in (self._csock, self._asock, self._lsock):
            if s:
                s.close()
        if self._console_f is not None:
            self._console_f.close()
            self._console_f = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- faults and power
    def power_cut(self) -> None:
        """Cut power now: SIGKILL the interpreter (open files are not closed); stays off."""
        with self._lock:
            self._pending_power = "cut"
        self._wake()
        self._wait(lambda: not self.powered)

    def power_on(self) -> None:
        """Power on after a cut: boots from reset, runs boot.py and main.py."""
        with self._lock:
            self._pending_power = "on"
        self._wake()
        self._wait(lambda: self.powered)

    def cut_power_after(self, nbytes: int) -> None:
        """Cut power once `nbytes` more bytes arrived from the host (mid-transfer power loss)."""
        self.faults.cut_after = nbytes

    def wait_booted(self, timeout: float = 10.0) -> None:
        """Block until the board finished boot.py/main.py start-up (the boot marker was seen)."""
        self._wait(lambda: not self._booting, timeout)

    def wait_console(self, text: str, timeout: float = 10.0) -> str:
        """Block until the board printed `text` (see console()); return the console then.
        Raises DeviceError naming the text and the console's last lines when it does not come."""
        deadline = time.monotonic() + timeout
        while text not in (out := self.console()):
            if time.monotonic() > deadline:
                tail = "\n".join(out.splitlines()[-5:])
                raise DeviceError(
                    f"virtual board {self.path.name} did not print {text!r} within {timeout:g} s",
                    hint=f"its console ends:\n{tail}",
                )
            time.sleep(0.01)
        return out

    def pins_out(self) -> dict[int, int]:
        """Output pin levels the firmware drove (machine.Pin(n, OUT).value(v))."""
        p = self.state / "pins.out"
        raw = p.read_bytes() if p.exists() else b""
        return {i: int(chr(c)) for i, c in enumerate(raw) if chr(c) in "01"}

    def set_inputs(self, spec: dict) -> None:
        """Replace the input-pin schedule (see board_shim/vbmachine.py for the format)."""
        (self.state / "pins.in").write_text(json.dumps(spec))

    def ota_state(self) -> dict:
        p = self.state / "ota.json"
        return json.loads(p.read_text()) if p.exists() and p.read_text().strip() else {}

    def _wait(self, cond, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise DeviceError(f"virtual board {self.path.name} did not respond", hint="see its state/ dir")
            time.sleep(0.005)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _has_main(self) -> bool:
        if self.flash_geometry is None:
            return (self.flash / "main.py").exists()
        try:  # vboot.py looked inside the LittleFS image
            return (self.state / "main.flag").read_text() == "1"
        except OSError:
            return False

    # ----------------------------------------------------------------- child process
    def _spawn(self, reset: str, mode: str) -> None:
        bm, bs = os.openpty()
        tty.setraw(bs)
        env = dict(os.environ)
        env.update(
            UMETER_VB_ROOT=str(self.flash),
            UMETER_VB_STATE=str(self.state),
            UMETER_VB_MODE=mode,
            UMETER_VB_RESET=reset,
            UMETER_VB_BOARD=self.board_name,
            UMETER_VB_UID=self.uid.hex(),
            UMETER_VB_ROMFS=str(self.romfs),
            UMETER_VB_ROMFS_STYLE=self.romfs_style,
            UMETER_VB_FLASH=self.flash_geometry or "",
        )
        env.pop("MICROPYPATH", None)
        with contextlib.suppress(FileNotFoundError):
            (self.state / "ctl").unlink()
        heap = self.heap + (self.romfs + 4096 if self.romfs else 0)  # the partition is flash on a board
        boot = unixport.checked_arg("the virtual board's boot script path", str(SHIM_DIR / "vboot.py"))
        argv = [unixport.micropython_path(), "-X", f"heapsize={heap}", "-i", boot]
        self._proc = subprocess.Popen(
            argv, stdin=bs, stdout=bs, stderr=bs, env=env, cwd=str(self.state), start_new_session=True, umask=0o077
        )
        os.close(bs)
        os.set_blocking(bm, False)
        self._bm = bm
        self.mode = mode
        self._busy = True
        self._mounted = False
        self._line = self._rawbuf = 0
        self._tail = b""
        self._booting = True
        self._boot_raw = mode == "raw"
        self._swallow = False
        self._intr_pending = False
        self.powered = True

    def _kill(self) -> None:
        p = self._proc
        if p and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if self._bm >= 0:
            with contextlib.suppress(OSError):
                os.close(self._bm)
        self._bm = -1
        self.powered = False

    def _child_gone(self) -> None:
        """The interpreter exited: a soft reset (Ctrl-D, sys.exit), machine.reset() or a crash."""
        p = self._proc
        if p:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._restart(self._ctl_reason(), p.returncode if p else None)

    def _ctl_reason(self) -> str:
        with contextlib.suppress(OSError):
            return (self.state / "ctl").read_text().strip().split("\n")[0]
        return ""

    def _down_requested(self) -> None:
        """The stand-ins asked for a reset (machine.reset(), soft_reset(), bootloader(), or
        sys.exit() in main.py): the shim waits to be killed."""
        why = self._ctl_reason() or "soft"
        self._kill()
        self._restart(why, None)

    def _restart(self, why: str, returncode: int | None) -> None:
        with contextlib.suppress(OSError):
            os.close(self._bm)
        self._bm = -1
        self.resets += 1
        if why in ("hard", "bootloader"):
            self.faults.log.append(why)
            self._spawn("hard", "friendly")
        elif why == "watchdog":  # machine.WDT not fed in time: reset cause WDT_RESET
            self.faults.log.append(why)
            self._spawn("watchdog", "friendly")
        elif returncode == -signal.SIGINT:
            # A Ctrl-C raced the end of execution (the unix port's SIGINT is fatal at the
            # prompt). A board would just show the prompt again: restart quietly, same mode.
            self.faults.log.append("sigint at prompt")
            self._spawn("soft", self.mode)
        else:
            # Ctrl-D / sys.exit(): soft reboot into the same REPL mode, as a board does.
            intr = self._intr_at is not None and time.monotonic() - self._intr_at < _INTR_HOLD_S
            self._emit(SOFT_REBOOT)
            self._spawn("soft", self.mode)
            if intr:
                # The host's Ctrl-C made the running code die instead of stop (e.g. the unix
                # port's "FATAL: uncaught NLR" when a node out of memory is interrupted): the
                # host still waits for a prompt. Interrupt main.py as it starts, so the node
                # does not run into the same wall again, and give the new REPL what the host
                # typed after its Ctrl-C (mpremote's Ctrl-A), which died with the old process.
                self.faults.log.append("died on ctrl-c")
                self._intr_pending = True
                self._replay = bytes(self._since_intr)

    # ----------------------------------------------------------------- relay
    def console(self) -> str:
        """What the board printed lately (up to 64 KiB), whether or not a host was reading."""
        return self._console.decode(errors="replace")

    def _log_console(self, data: bytes) -> None:
        f = self._console_f
        if f is None or not data:
            return
        try:
            f.write(data)
            f.flush()
            if f.tell() > _CONSOLE_FILE:
                f.close()
                os.replace(self.console_path, self.console_path.with_suffix(".log.1"))
                self._console_f = open(self.console_path, "ab")  # noqa: SIM115 - closed in stop()
        except OSError:
            pass  # a full disk must not stop the board

    def _emit(self, data: bytes) -> None:
        self._log_console(data)
        self._console += data
        if len(self._console) > _CONSOLE:
            del self._console[: len(self._console) - _CONSOLE]
        if self.faults.drop_to_host:
            n = min(self.faults.drop_to_host, len(data))
            self.faults.drop_to_host -= n
            data = data[n:]
        self._to_host += data
        if len(self._to_host) > _OUT_LIMIT:
            del self._to_host[: len(self._to_host) - _OUT_LIMIT]
        if self._csock is not None:
            self._to_tcp += data

    def _from_board(self, data: bytes) -> None:
        i = data.find(DOWN)
        if i >= 0:
            if i:
                self._from_board(data[:i])
            self._down_requested()
            return
        if self._booting:
            buf = self._tail + data
            i = buf.find(MARKER)
            if i < 0:
                # hold back a possible partial marker
                keep = max(0, len(buf) - len(MARKER))
                out, self._tail = buf[:keep], buf[keep:]
                self._emit(bytes(out))
                return
            self._emit(bytes(buf[:i]))
            data = buf[i + len(MARKER) :]
            self._tail = b""
            self._booting = False
            self._swallow = self._boot_raw  # raw mode: hide the friendly banner, then Ctrl-A
            if self._intr_pending:
                self._intr_pending = False
                if not self._boot_raw and self._has_main():
                    self._sigint()  # main.py is starting: interrupt it (the shim catches it)
                else:
                    self._write_board(b"\x03")
        if self._swallow:
            self._tail = (self._tail + data)[-64:]
            if self._tail.endswith(b">>> "):
                self._swallow = False
                self._tail = b""
                self._write_board(b"\x01")
            return
        self._tail = (self._tail + data)[-64:]
        cont = _CONT.search(self._tail) is not None  # `... ` plus the REPL's auto-indent
        if cont or self._tail.endswith(_PROMPTS):
            self._busy = False
            self._intr_at = None
            self._since_intr.clear()
            self._cont = cont
            self._line = self._rawbuf = 0
            if self._tail.endswith(RAW_BANNER + b">"):
                self.mode = "raw"
            elif self._tail.endswith(b">>> "):
                self.mode = "friendly"
                if self._replay:
                    replay, self._replay = self._replay, b""
                    self._emit(data)
                    self._to_board(replay)
                    return
        self._emit(data)

    def _write_board(self, data: bytes) -> None:
        if self._bm < 0 or not data:
            return
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view:
            try:
                n = os.write(self._bm, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                select.select([], [self._bm], [], 0.05)
            except OSError:
                return

    def _from_host(self, data: bytes) -> None:
        f = self.faults
        if not self.powered:
            return  # a board without power hears nothing
        if f.cut_after is not None:
            if len(data) >= f.cut_after:
                data = data[: f.cut_after]
                self._to_board(data)
                f.cut_after = None
                f.log.append("power cut")
                self._kill()
                return
            f.cut_after -= len(data)
        if f.drop_to_board:
            n = min(f.drop_to_board, len(data))
            f.drop_to_board -= n
            data = data[n:]
        self._to_board(data)

    def _to_board(self, data: bytes) -> None:
        self._htail = (self._htail + data)[-24:]
        if b"umount(" in self._htail:
            self._mounted = False  # mpremote's umount_local(): os.umount("/remote")
        elif b"RemoteFS" in self._htail or b"__mount" in self._htail:
            self._mounted = True
        out = bytearray()
        for b in data:
            if b == 0x03 and self._booting:
                # Ctrl-C while the shim mounts the flash: never interrupt that; deliver it when
                # boot.py is done (to main.py if one runs, else as a byte to the REPL).
                self._intr_pending = True
                continue
            if b == 0x03 and self._busy and not self._mounted and not self._swallow:
                # Ctrl-C while code runs: the unix port only interrupts on SIGINT.
                self._write_board(bytes(out))
                out.clear()
                self._sigint()
                continue
            out.append(b)
            if self._intr_at is not None and len(self._since_intr) < 256:
                self._since_intr.append(b)
            if self._mounted or self._busy:
                continue
            if self.mode == "friendly":
                if b == 0x0D:
                    if self._line or self._cont:  # a statement, or the end of a compound one
                        self._busy = True
                    self._line = 0
                elif b == 0x01:
                    self.mode = "raw"
                elif b not in (0x03, 0x02):
                    self._line += 1
            else:
                if b == 0x04:
                    self._busy = True  # executes (or, on an empty buffer, soft-resets)
                elif b == 0x02 and not self._rawbuf:
                    self.mode = "friendly"
                elif b == 0x01 or b == 0x03:
                    self._rawbuf = 0
                else:
                    self._rawbuf += 1
        self._write_board(bytes(out))

    def _sigint(self) -> None:
        self._intr_at = time.monotonic()
        self._since_intr.clear()
        if self._proc and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGINT)

    def _relay(self) -> None:
        while not self._stop:
            with self._lock:
                pend, self._pending_power = self._pending_power, None
            if pend == "cut" and self.powered:
                self.faults.log.append("power cut")
                self._kill()
            elif pend == "on" and not self.powered:
                self.resets += 1
                self._spawn("power", "friendly")
            rd = [self._hm, self._wake_r]
            if self._bm >= 0:
                rd.append(self._bm)
            if self._lsock:
                rd.append(self._lsock)
            if self._csock:
                rd.append(self._csock)
            if self._asock:
                rd.append(self._asock)
                if time.monotonic() > self._adeadline:
                    self._refuse()
                    continue
            wr = []
            if self._to_host:
                wr.append(self._hm)
            if self._to_tcp and self._csock:
                wr.append(self._csock)
            try:
                r, w, _ = select.select(rd, wr, [], 0.5)
            except (OSError, ValueError):
                if self._stop:
                    return
                continue
            if not r and self.powered and self._bm >= 0 and self._ctl_reason():
                self._down_requested()  # the DOWN marker was lost (split read): the ctl file says it
                continue
            if self._wake_r in r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 64)
            # board output first, so a prompt is seen before a Ctrl-C that follows it
            if self._bm >= 0 and self._bm in r:
                try:
                    data = os.read(self._bm, 4096)
                except OSError as e:
                    data = b"" if e.errno == errno.EIO else None
                if data:
                    self._from_board(data)
                elif data is not None or (self._proc and self._proc.poll() is not None):
                    self._child_gone()
            if self._hm in r:
                try:
                    data = os.read(self._hm, 4096)
                except OSError:
                    data = b""
                if data:
                    self._forward(data)
            if self._lsock and self._lsock in r:
                c, _ = self._lsock.accept()
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.token:
                    if self._asock:  # one waiting for its token at a time
                        self._refuse()
                    self._asock, self._abuf, self._adeadline = c, b"", time.monotonic() + _AUTH_S
                else:
                    self._use_tcp(c, b"")
            if self._asock and self._asock in r and self._auth_read():
                continue  # the socket selected as waiting is the session now: read it next round
            if self._csock and self._csock in r:
                try:
                    data = self._csock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    self._forward(data)
                else:
                    self._csock.close()
                    self._csock = None
                    self._to_tcp.clear()
            if self._hm in w and self._to_host:
                try:
                    n = os.write(self._hm, self._to_host)
                    del self._to_host[:n]
                except OSError:
                    pass
            if self._csock and self._csock in w and self._to_tcp:
                try:
                    n = self._csock.send(self._to_tcp)
                    del self._to_tcp[:n]
                except OSError:
                    pass

    def _use_tcp(self, c: socket.socket, first: bytes) -> None:
        # An authenticated (or insecure) client becomes the one the board talks to.
        if self._csock:
            self._csock.close()
        self._csock = c
        self._to_tcp.clear()
        if first:
            self._forward(first)

    def _refuse(self) -> None:
        self.auth_refused += 1
        with contextlib.suppress(OSError):
            self._asock.close()
        self._asock, self._abuf = None, b""

    def _auth_read(self) -> bool:
        # Reads the waiting client's token line; True once it became the session.
        try:
            data = self._asock.recv(_AUTH_MAX)
        except OSError:
            data = b""
        if not data:
            self._refuse()
            return False
        self._abuf += data
        i = self._abuf.find(b"\n")
        if i < 0:
            if len(self._abuf) > _AUTH_MAX:
                self._refuse()
            return False
        line, rest = self._abuf[:i].strip(), self._abuf[i + 1 :]
        if not hmac.compare_digest(line, self.token.encode()):
            self._refuse()
            return False
        c, self._asock, self._abuf = self._asock, None, b""
        self._use_tcp(c, rest)
        return True

    def _forward(self, data: bytes) -> None:
        if self.faults.delay_s:
            time.sleep(self.faults.delay_s)
        self._from_host(data)


def _private(root: Path) -> None:
    """Takes group and other access away from a board directory tree (its flash holds the
    node's secrets): directories 0700, files 0600 or 0700 (executable)."""
    for dirpath, _dirs, filenames in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
        for n in filenames:
            p = os.path.join(dirpath, n)
            with contextlib.suppress(OSError):
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode & 0o700)


def start_many(
    base: str | os.PathLike[str],
    board: str = "sim",
    count: int = 1,
    *,
    tcp: bool = False,
    insecure: bool = False,
    romfs: str | None = None,
    flash: str | None = None,
) -> list[VirtualBoard]:
    """Start `count` boards in `base/<board>-<k>/`; each waits for its boot to finish."""
    if count < 1:
        raise ConfigError(f"--count must be at least 1, not {count}", hint="e.g. --count 4")
    vbs = []
    try:
        for k in range(count):
            vb = VirtualBoard(Path(base) / f"{board}-{k}", board, tcp=tcp, insecure=insecure, romfs=romfs, flash=flash)
            vbs.append(vb.start())
        for vb in vbs:
            vb.wait_booted()
    except BaseException:
        for vb in vbs:
            vb.stop()
        raise
    return vbs


def main(argv: list[str] | None = None) -> int:
    """`python -m umeter_hil.vboard DIR [--board NAME] [--tcp]`: prints the pty path first, then
    runs until killed (so `execpty:` style runners can use it)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m umeter_hil.vboard")
    ap.add_argument("dir")
    ap.add_argument("--board", default="sim")
    ap.add_argument("--tcp", action="store_true")
    ap.add_argument("--insecure", action="store_true", help="no token on the TCP listener")
    ap.add_argument("--romfs", default=None, help="a ROMFS partition of this size (e.g. 256k)")
    a = ap.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    vb = VirtualBoard(a.dir, a.board, tcp=a.tcp, insecure=a.insecure, romfs=a.romfs).start()
    print(vb.port, flush=True)
    if vb.tcp_port:
        print(vb.url, flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        vb.stop()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
