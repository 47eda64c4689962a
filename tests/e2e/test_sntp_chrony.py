"""The node's SNTP client (firmware/meternode/link/sntp.py) against a real NTP server: chronyd,
serving its local clock on a loopback port, run by the MicroPython unix port. The scripted
servers of the firmware tests (hil/umeter_hil/ntpsim.py) cover the faults; this is the
interoperability check with an implementation that is not ours or ntplib's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import ntplib
import pytest

from umeter import unixport

CHRONYD = shutil.which("chronyd") or ("/usr/sbin/chronyd" if Path("/usr/sbin/chronyd").exists() else None)

SCRIPT = r"""
import asyncio, sys
from meternode.link import sntp

class Clock:
    t = 946684800  # 2000-01-01: a board's RTC after a power cut
    def time(self):
        return self.t
    def set_time(self, t):
        self.t = t

async def main():
    c = Clock()
    step = await sntp.sync(c, "127.0.0.1", int(sys.argv[1]))
    again = await sntp.sync(c, "127.0.0.1", int(sys.argv[1]))
    print("RESULT", c.t, step, again)

asyncio.run(main())
"""


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def chronyd(tmp_path):
    if CHRONYD is None:
        pytest.skip("chronyd is not installed (apt-get install chrony); CI installs it")
    port = _free_udp_port()
    conf = tmp_path / "chrony.conf"
    conf.write_text(
        f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n"
        f"pidfile {tmp_path}/chronyd.pid\ndriftfile {tmp_path}/drift\n"
    )
    # -x: never touch the host's clock; -d: in the foreground, logging to stderr
    p = subprocess.Popen([CHRONYD, "-x", "-d", "-u", "root", "-f", str(conf)], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(50):  # up once it answers (ntplib as the client)
            try:
                ntplib.NTPClient().request("127.0.0.1", port=port, version=4, timeout=0.2)
                break
            except (ntplib.NTPException, OSError):
                if p.poll() is not None:
                    pytest.fail("chronyd exited: " + (p.stderr.read() if p.stderr else ""))
        else:
            pytest.fail("chronyd did not answer in 10 s")
        yield port
    finally:
        p.terminate()
        p.wait(10)


def test_a_board_clock_set_from_chronyd(chronyd, tmp_path):
    script = tmp_path / "sntp_chrony.py"
    script.write_text(SCRIPT)
    env = {"MICROPYPATH": unixport.micropypath(), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        unixport.command(script, str(chronyd)), capture_output=True, text=True, timeout=60, env=env
    )
    host = time.time()
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, r.stdout + r.stderr
    t, step, again = (int(x) for x in lines[-1][1:])
    assert abs(t - host) <= 2, (t, host)  # chronyd serves the host's clock
    assert step == t - 946684800 and again == 0, (step, again)
