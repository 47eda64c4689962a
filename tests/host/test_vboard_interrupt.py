"""Reaching a board whose code is running: a node that misses the first Ctrl-C, or dies of it
and boots into main.py again, must not lock out `umeter provision` or stock mpremote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from umeter.transport import Board
from umeter_hil.vboard import VirtualBoard

MPREMOTE = str(Path(sys.executable).parent / "mpremote")

# main.py that keeps running through its first KeyboardInterrupt (a node busy in a handler)
STUBBORN = (
    "import time\nn = 0\nwhile True:\n    try:\n        time.sleep_ms(20)\n"
    "    except KeyboardInterrupt:\n        n += 1\n        print('ignored ctrl-c', n)\n"
    "        if n >= 2:\n            break\n"
)
# main.py that never stops on Ctrl-C while /deaf exists (the test then kills the interpreter, as
# if it crashed of the Ctrl-C); started again without it, it stops like any code
DEAF = (
    "import os, time\ndeaf = 'deaf' in os.listdir('/')\nwhile True:\n    try:\n        time.sleep_ms(20)\n"
    "    except KeyboardInterrupt:\n        if not deaf:\n            raise\n        print('caught')\n"
)


def _booted_with(tmp_path: Path, main: str) -> VirtualBoard:
    vb = VirtualBoard(tmp_path / "vb", "sim")
    vb.flash.mkdir(parents=True, exist_ok=True)
    (vb.flash / "main.py").write_text(main)
    vb.start()
    vb.wait_booted()
    return vb


def test_board_open_gets_the_repl_from_code_that_ignores_the_first_ctrl_c(tmp_path):
    vb = _booted_with(tmp_path, STUBBORN)
    try:
        time.sleep(0.3)
        with Board(vb.port, timeout=5, retries=1) as b:  # one attempt: the repeated Ctrl-C does it
            assert b.eval("6 * 7") == 42
        assert "ignored ctrl-c 1" in vb.console()
    finally:
        vb.stop()


def test_a_board_that_dies_of_the_ctrl_c_comes_back_to_the_repl_mpremote_asked_for(tmp_path):
    (tmp_path / "vb" / "flash").mkdir(parents=True)
    (tmp_path / "vb" / "flash" / "deaf").write_text("")
    vb = _booted_with(tmp_path, DEAF)
    try:
        time.sleep(0.3)
        pid = vb._proc.pid
        with serial.Serial(vb.port, 115200, timeout=0.2) as s:
            s.write(b"\r\x03")  # what mpremote's enter_raw_repl sends: Ctrl-C ...
            vb.wait_console("caught", timeout=5)
            s.write(b"\r\x01")  # ... then Ctrl-A, which the dying process never reads
            (vb.flash / "deaf").unlink()
            time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)  # the crash (the unix port's "FATAL: uncaught NLR")
            got = b""
            deadline = time.monotonic() + 10
            while not got.endswith(b"raw REPL; CTRL-B to exit\r\n>"):
                assert time.monotonic() < deadline, (got[-300:], vb.faults.log)
                got += s.read(256)
        assert "died on ctrl-c" in vb.faults.log
        assert b"KeyboardInterrupt" in got, "main.py was stopped as it started again"
    finally:
        vb.stop()


@pytest.mark.parametrize("mode", ["exec", "resume"])
def test_stock_mpremote_reaches_a_board_whose_main_py_ignores_ctrl_c_once(tmp_path, mode):
    # stock mpremote sends one Ctrl-C: the board answers once the code stops (here: the second)
    vb = _booted_with(tmp_path, STUBBORN)
    try:
        time.sleep(0.3)
        with serial.Serial(vb.port, 115200, timeout=0.2) as s:
            s.write(b"\r\x03")  # a first Ctrl-C from someone else
        argv = [MPREMOTE, "connect", vb.port, *(["resume"] if mode == "resume" else []), "exec", "print(6 * 7)"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "42", (r.stdout, r.stderr, vb.console()[-500:])
    finally:
        vb.stop()
