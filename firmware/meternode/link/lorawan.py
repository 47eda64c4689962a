# LoRaWAN through an AT-command modem on a UART: the RAK3172 / RUI3 dialect (the Wio-E5
# family speaks a close cousin).  One reader task splits the modem's lines into command
# replies (OK / AT_*_ERROR) and asynchronous events (+EVT:...).  Busy replies are retried
# with backoff; every wait has a timeout; errors raise ModemError naming the modem's reply.
#
#   m = LoRaModem(reader, writer); m.start()
#   await m.configure(deveui, appeui, appkey, band=4, dr=0)
#   await m.join()                          # OTAA, retried
#   ok = await m.send(2, frame, confirmed=True)
#   m.downlinks -> the last _KEEP_DOWNLINKS [(port, bytes, rssi, snr)] (also on_downlink(port, data))
import asyncio

from meternode.aio import sleep_ms as _sleep_ms
from meternode.aio import wait_for_ms as _wait_for_ms

_KEEP_DOWNLINKS = 8  # recent downlinks kept for diagnostics (each is also handed to on_downlink)

BANDS = {"EU868": 4, "CN470": 1}


class ModemError(Exception):
    def __init__(self, msg, code=None):
        super().__init__(msg)
        self.code = code


def _hex(b):
    return "".join("%02X" % x for x in b)


def _unhex(s):
    return bytes(int(s[i : i + 2], 16) for i in range(0, len(s), 2))


class LoRaModem:
    def __init__(self, reader, writer, timeout_ms=3000, busy_retries=5):
        self.r = reader
        self.w = writer
        self.timeout_ms = timeout_ms
        self.busy_retries = busy_retries
        self._lines = None  # reply lines of the command in progress
        self._done = asyncio.Event()
        self._events = []
        self._evflag = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task = None
        self.downlinks = []
        self.on_downlink = None
        self.joined = False
        self.busy = 0  # busy replies seen
        self.errors = 0

    def start(self):
        self._task = asyncio.create_task(self._reader())

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _reader(self):
        while True:
            raw = await self.r.readline()
            if not raw:
                await _sleep_ms(20)
                continue
            line = raw.decode().strip()
            if not line:
                continue
            if line.startswith("+EVT:"):
                self._event(line[5:])
            elif self._lines is not None:
                self._lines.append(line)
                if line == "OK" or line.startswith("AT_"):
                    self._done.set()

    def _event(self, ev):
        if ev.startswith("RX_"):
            # RX_1:<rssi>:<snr>:UNICAST:<port>:<hex>
            parts = ev.split(":")
            if len(parts) >= 6:
                try:
                    port = int(parts[4])
                    data = _unhex(parts[5]) if len(parts[5]) % 2 == 0 else b""
                    d = (port, data, int(parts[1]), int(parts[2]))
                    if len(self.downlinks) >= _KEEP_DOWNLINKS:
                        self.downlinks.pop(0)  # a node runs for years: keep the newest only
                    self.downlinks.append(d)
                    if self.on_downlink is not None:
                        self.on_downlink(port, data)
                except ValueError:
                    self.errors += 1
            return
        self._events.append(ev)
        self._evflag.set()

    async def cmd(self, text, timeout_ms=None):
        # Sends one AT command; returns its value lines; raises ModemError on an error reply
        # (after `busy_retries` tries for AT_BUSY_ERROR) or when no reply comes in time.
        delay = 100
        for attempt in range(self.busy_retries + 1):
            async with self._lock:
                self._lines = []
                self._done.clear()
                self.w.write((text + "\r\n").encode())
                await self.w.drain()
                try:
                    await _wait_for_ms(self._done.wait(), timeout_ms or self.timeout_ms)
                except asyncio.TimeoutError:
                    self._lines = None
                    raise ModemError("modem did not answer %s" % text.split("=")[0], "timeout")
                lines, self._lines = self._lines, None
            last = lines[-1]
            if last == "OK":
                return lines[:-1]
            if last == "AT_BUSY_ERROR" and attempt < self.busy_retries:
                self.busy += 1
                await _sleep_ms(delay)
                delay = min(delay * 2, 2000)
                continue
            self.errors += 1
            raise ModemError("modem refused %s: %s" % (text.split("=")[0], last), last)

    async def wait_event(self, prefixes, timeout_ms):
        # The first event starting with one of `prefixes`, or ModemError after timeout_ms.
        left = timeout_ms
        while True:
            for k, ev in enumerate(self._events):
                for p in prefixes:
                    if ev.startswith(p):
                        self._events.pop(k)
                        return ev
            if left <= 0:
                raise ModemError("no %s event within %d ms" % ("/".join(prefixes), timeout_ms), "timeout")
            self._evflag.clear()
            try:
                await _wait_for_ms(self._evflag.wait(), min(left, 200))
            except asyncio.TimeoutError:
                pass
            left -= 200

    async def configure(self, deveui, appeui, appkey, band="EU868", dr=0):
        if band not in BANDS:
            raise ModemError("lora.band = %r must be one of %s" % (band, ", ".join(sorted(BANDS))), "config")
        await self.cmd("AT")
        await self.cmd("AT+NWM=1")
        await self.cmd("AT+BAND=%d" % BANDS[band])
        await self.cmd("AT+NJM=1")
        await self.cmd("AT+CLASS=A")
        await self.cmd("AT+DEVEUI=" + deveui)
        await self.cmd("AT+APPEUI=" + appeui)
        await self.cmd("AT+APPKEY=" + appkey)
        await self.cmd("AT+ADR=0")
        await self.cmd("AT+DR=%d" % dr)

    async def join(self, attempts=3, timeout_ms=20000, backoff_ms=500):
        # OTAA join; retried `attempts` times with a doubling pause.  Raises ModemError.
        why = ""
        for _ in range(attempts):
            self._events = []
            await self.cmd("AT+JOIN=1:0:10:8")
            ev = await self.wait_event(("JOINED", "JOIN_FAILED"), timeout_ms)
            if ev == "JOINED":
                self.joined = True
                return True
            why = ev
            await _sleep_ms(backoff_ms)
            backoff_ms *= 2
        self.joined = False
        raise ModemError("join failed %d times (%s)" % (attempts, why), "join")

    async def send(self, port, data, confirmed=False, timeout_ms=15000):
        # One uplink.  True when sent (unconfirmed) or acknowledged (confirmed); False when a
        # confirmed uplink got no ACK.  ModemError for refusals (not joined, bad length, ...).
        await self.cmd("AT+CFM=%d" % (1 if confirmed else 0))
        try:
            await self.cmd("AT+SEND=%d:%s" % (port, _hex(data)))
        except ModemError as e:
            if e.code == "AT_NO_NETWORK_JOINED":
                self.joined = False
            raise
        ev = await self.wait_event(("TX_DONE", "SEND_CONFIRMED_OK", "SEND_CONFIRMED_FAILED"), timeout_ms)
        return ev != "SEND_CONFIRMED_FAILED" and not ev.startswith("SEND_CONFIRMED_FAILED")
