"""Boards opened in parallel (`umeter provision -j 8`, benchmarks/provision.py) each keep
mpremote's prints to themselves, and the process's stdout is the real one afterwards:
contextlib.redirect_stdout in threads left it pointing at one thread's buffer, and a command's
output on a pipe vanished."""

from __future__ import annotations

import io
import sys
import threading

from umeter.transport import _captured


def test_parallel_captures_keep_their_prints_apart_and_restore_stdout():
    real = sys.stdout
    bufs = [io.StringIO() for _ in range(4)]
    inside = threading.Barrier(4)
    leave = [threading.Event() for _ in range(4)]

    def work(k: int) -> None:
        with _captured(bufs[k]):
            inside.wait(5)
            print(f"thread {k}")
            leave[k].wait(5)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for k in (2, 0, 3, 1):  # leave in another order than entered
        leave[k].set()
    for t in ts:
        t.join(5)
    assert sys.stdout is real
    assert [b.getvalue() for b in bufs] == [f"thread {k}\n" for k in range(4)]
