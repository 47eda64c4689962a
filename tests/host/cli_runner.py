"""Runs many `umeter` command lines fast: imports the CLI once, then forks one child per command
line whose stdout and stderr are files, as the real entry point (`python -m umeter`) would run
it — `sys.exit(main(argv))`, an exception that escapes main() printed as a traceback.

    python cli_runner.py < cases.json > results.json
    cases:   [{"argv": [...], "cwd": "...", "timeout": 30}, ...]
    results: [{"argv": [...], "rc": int (-1: killed by the timeout), "stdout": str, "stderr": str}, ...]
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def _child(argv: list[str], cwd: str, out: str, err: str, timeout: int) -> None:
    os.dup2(os.open(out, os.O_WRONLY | os.O_TRUNC), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_TRUNC), 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(cwd)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(timeout)
    rc = 1
    try:
        from umeter.cli import main

        rc = main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()  # what `python -m umeter` prints for an escaped exception
        rc = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) else 1)


def run_all(cases: list[dict]) -> list[dict]:
    import umeter.cli  # noqa: F401  (imported once, before the forks)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, c in enumerate(cases):
            out, err = f"{tmp}/{k}.out", f"{tmp}/{k}.err"
            for p in (out, err):
                Path(p).touch()
            sys.stdout.flush()
            sys.stderr.flush()
            t0 = time.monotonic()
            pid = os.fork()
            if pid == 0:
                _child(c["argv"], c["cwd"], out, err, int(c.get("timeout", 30)))
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            results.append(
                {
                    "argv": c["argv"],
                    "rc": -1 if rc == -signal.SIGALRM else rc,
                    "seconds": round(time.monotonic() - t0, 2),
                    "stdout": Path(out).read_text(errors="replace"),
                    "stderr": Path(err).read_text(errors="replace"),
                }
            )
    return results


if __name__ == "__main__":
    json.dump(run_all(json.load(sys.stdin)), sys.stdout)
