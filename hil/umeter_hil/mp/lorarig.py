# The LoRaWAN driver's rig on the unix port (tests/host/test_lora.py, test_lora_time.py): the
# AT driver on the simulated RAK3172's pty, a record log with `n` profile records and the
# LoRa cursor, in directory `d`; mptest's RTC.
import asyncio

from meternode.link.lorawan import LoRaModem
from meternode.store import records
from meternode.store.log import Cursor, RecordLog
from mptest import RTC  # noqa: F401 (the drivers' clock)


def rig(port, d, n):
    # -> (modem, log, cursor)
    f = open(port, "r+b")
    # the simulated module is a thread of the test process: on a loaded machine it may take
    # seconds to answer, which a RAK3172 never does; the timeouts here are not what is tested
    m = LoRaModem(asyncio.StreamReader(f), asyncio.StreamWriter(f, {}), timeout_ms=8000)
    log = RecordLog(d + "/log", 4096, 65536)
    for i in range(n):
        log.append(
            records.PROFILE,
            1700000000 + 900 * i,
            records.profile(900, 1000 * i, 0, (2300, 2290, 2310), (1000, 900, 1100), (2300, 2000, 2500)),
        )
    return m, log, Cursor(d + "/lora.cursor")
