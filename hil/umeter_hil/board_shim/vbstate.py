# Shared state of a virtual board's stand-ins: identity and paths from the relay's environment,
# and the control file through which the board tells the relay why it is going down.
# Host paths are opened here, BEFORE vboot.py remounts the board's flash at /.
import os
import sys
import time

MARKER = "\x1b[vboot-done]"  # stripped by the relay: the shim finished booting
DOWN = "\x1b[vboot-down]"  # stripped by the relay: reset requested, see the ctl file
ROOT = ""
STATE = ""
MODE = "friendly"
RESET = "power"
UID = b"\x00\x00\x00\x00\x00\x00"
BOARD = "sim"
_ctl = None
files = {}


def init():
    global ROOT, STATE, MODE, RESET, UID, BOARD, _ctl
    ROOT = os.getenv("UMETER_VB_ROOT")
    STATE = os.getenv("UMETER_VB_STATE")
    if not ROOT or not STATE:
        raise SystemExit("vboot.py: UMETER_VB_ROOT/UMETER_VB_STATE not set (start through umeter_hil.vboard)")
    MODE = os.getenv("UMETER_VB_MODE") or "friendly"
    RESET = os.getenv("UMETER_VB_RESET") or "power"
    BOARD = os.getenv("UMETER_VB_BOARD") or "sim"
    u = os.getenv("UMETER_VB_UID") or "000000000000"
    UID = bytes(int(u[i : i + 2], 16) for i in range(0, len(u), 2))
    _ctl = open(STATE + "/ctl", "w")
    try:  # UARTs wired to host devices (VirtualBoard(uarts=...)): vbuart.py opens them now
        os.stat(STATE + "/uart.json")
    except OSError:
        return
    import vbuart

    vbuart.wire(STATE + "/uart.json")


def open_state(name, mode="r+b", size=0):
    # A file in the state directory (outside the flash), kept open across the remount.
    path = STATE + "/" + name
    try:
        f = open(path, mode)
    except OSError:
        with open(path, "wb") as f:
            if size:
                f.seek(size - 1)
                f.write(b"\xff")
        f = open(path, mode)
    files[name] = f
    return f


def state_path(name):
    return STATE + "/" + name


def _down(why):
    # Tell the relay why the board goes down, then wait to be killed: a SystemExit would not
    # end `micropython -i` (it drops into the REPL) and could be caught by the code running.
    _ctl.write(why + "\n")
    _ctl.flush()
    sys.stdout.write(DOWN)
    while True:
        time.sleep_ms(100)


def hard_reset():
    _down("hard")


def soft_reset():
    _down("soft")


def bootloader():
    _down("bootloader")


def watchdog():
    _down("watchdog")
