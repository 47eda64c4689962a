# Boot script of a virtual board (runs on the MicroPython unix port, started by the relay in
# umeter_hil/vboard.py as `micropython -X heapsize=N -i vboot.py`).
#
# Does what a board's firmware does between reset and the REPL:
#   1. installs the stand-ins for what the unix port lacks (machine, network, esp32, os.rename),
#   2. mounts the board's own flash directory at / (so /boot.py, /lib, /main.py are the board's),
#   3. runs /boot.py, then /main.py only when the REPL will be the friendly one (as esp32 main.c),
#   4. prints the end-of-boot marker the relay waits for (after boot.py, before main.py), and
#      returns to the REPL (-i).
# The relay passes everything in the environment: UMETER_VB_ROOT, UMETER_VB_STATE,
# UMETER_VB_MODE (friendly|raw), UMETER_VB_RESET (power|hard|soft|watchdog), UMETER_VB_UID (hex),
# UMETER_VB_ROMFS (bytes of a ROMFS partition, none if 0) and UMETER_VB_ROMFS_STYLE, and
# UMETER_VB_FLASH: a board's flash (norflash.GEOMETRY: pico_w, pico, esp32) whose LittleFS is
# mounted at / instead of the host directory UMETER_VB_ROOT, as that board's MicroPython does
# (in state/flash.img, formatted at the first boot).
import os
import sys

import vbstate
import vfs

vbstate.init()
# the ROMFS partition, here rather than in vbstate (tests load vbstate into small heaps)
_romfs = int(os.getenv("UMETER_VB_ROMFS") or "0")
if _romfs:
    # the partition first, while the heap is empty: one allocation the size of the flash area
    import vbvfs

    vbvfs.init(_romfs, os.getenv("UMETER_VB_ROMFS_STYLE") or "memory")
    sys.modules["vfs"] = vbvfs

import esp32  # noqa: E402  (stand-ins load from the host directory, before the remount)
import network  # noqa: E402
import vbmachine  # noqa: E402
import vbos  # noqa: E402

sys.modules["machine"] = vbmachine
sys.modules["os"] = vbos
esp32.boot(vbstate.RESET)
_flash = os.getenv("UMETER_VB_FLASH")
if _flash:
    import norflash

    _main = vbstate.open_state("main.flag", "w")  # (host paths: before the mount)
    norflash.mount(None, _flash, "/", (vbstate.open_state("flash.img"), vbstate.open_state("flash.img.wear")))
    try:  # whether the flash holds a main.py, for the relay (it cannot look inside the image)
        os.stat("/main.py")
        _main.write("1")
    except OSError:
        _main.write("0")
    _main.flush()
    del norflash, _main
else:
    vfs.mount(vfs.VfsPosix(vbstate.ROOT), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
if _romfs:
    vbvfs.mount()  # a valid image at /rom, and /rom, /rom/lib on sys.path, as a board does


def _run(name):
    try:
        os.stat(name)  # noqa: F821  (deleted from the REPL namespace at the end)
    except OSError:
        return True
    g = {"__name__": "__main__", "__file__": name}
    try:
        with open(name) as f:
            src = f.read()
        exec(compile(src, name, "exec"), g)
    except SystemExit:
        # sys.exit() in boot.py/main.py soft-resets a board.
        return False
    except BaseException as e:  # a board prints the traceback and carries on to the REPL
        sys.print_exception(e)
    return True


_ok = _run("boot.py")
sys.stdout.write(vbstate.MARKER)  # the relay's "booted": from here on main.py and the REPL
if not _ok or (vbstate.MODE == "friendly" and not _run("main.py")):
    vbstate.soft_reset()
if _romfs:
    del vbvfs
del _ok, _run, _romfs, _flash, os, vfs, esp32, network, vbmachine, vbos, vbstate
