"""The firmware's load-and-forget (meternode.forget / run) shared with the host tools under CPython.

The host resolves calibration with the firmware's own code, from several threads when it
provisions boards in parallel.  A module forgotten by one thread while another imports it made
that import fail ("cannot import name 'calcheck'"), so under CPython nothing is forgotten.
"""

import sys
import threading

import meternode
from meternode.metrology import calibration


def test_forget_keeps_modules_under_cpython():
    from meternode.metrology import calcheck  # noqa: F401

    meternode.forget("meternode.metrology.calcheck")
    assert "meternode.metrology.calcheck" in sys.modules


def test_calibration_checks_from_many_threads_at_once():
    errors = []
    go = threading.Barrier(8)

    def work():
        go.wait()
        try:
            for _ in range(300):
                calibration.check({"gain": 1.01, "phase": 0.5}, "board.channels.I1.cal")
        except Exception as e:  # any failure is the finding
            errors.append(repr(e))

    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
