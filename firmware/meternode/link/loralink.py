# The LoRaWAN publisher: drains the record log from its own upload cursor as compact frames
# (loracodec), confirmed uplinks, one at a time, paced by the airtime governor.  The cursor
# advances only on the network's ACK.  Live telemetry is merged (only the newest waits) and
# goes out unconfirmed when the governor and the backlog allow.

from meternode import _nop
from meternode.link import loracodec
from meternode.link.lorawan import ModemError
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _now
from meternode.ticks import sleep_ms as _sleep_ms


class LoRaLink:
    def __init__(self, modem, log, cursor, gov, clock, port=2, confirmed=True, retry_ms=1000):
        self.modem = modem
        self.log = log
        self.cursor = cursor
        self.gov = gov  # the airtime governor (airtime.py)
        self.clock = clock
        self.port = port
        self.confirmed = confirmed
        self.retry_ms = retry_ms
        self._reader = log.reader()
        self.frame = None  # the newest live telemetry frame waiting (older ones are merged away)
        self.floor = None  # callable -> seq another link already delivered (fallback mode)
        self.active = None  # callable -> False while another link carries the records
        # fallback mode: how long the other link must have been down before this one joins
        # and speaks (a broker restart or a Wi-Fi blip is not worth a join and its airtime);
        # counted in the waits below, so no tick difference that wraps
        self.grace_ms = 0
        self._down_ms = 0
        self.sent = 0
        self.nacks = 0
        self.merged = 0
        self.failures = 0
        self.skipped = 0  # records with no LoRa layout (MQTT only)
        self.unreadable = 0  # records that do not decode: skipped, each with an event
        self.event = None  # callable(code, arg, text): the uplink service's event()
        self.last_error = None
        self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
        # the network's time (link/nettime.py; None: not asked): [the clock after the last good
        # sync or None, the last failure's text or None, ticks ms when due (None: at the next
        # uplink), the retry pause s, time_s, time_max_step_s]
        self.nettime = None

    def telemetry(self, frame):
        if self.frame is not None:
            self.merged += 1
        self.frame = frame

    def _unreadable(self, seq, why):
        self.unreadable += 1
        self.cursor.advance(seq)
        self.cursor.flush()
        if self.event is not None:
            from meternode.store import records

            self.event(records.EV_LOG_CORRUPT, seq, "lora skipped %d: %s" % (seq, why))

    async def wait(self, n):
        # until the airtime governor lets an uplink of n bytes go
        while True:
            self.beat()
            w = self.gov.wait_ms(n, _now(), self.clock.time())
            if w == 0:
                return
            await _sleep_ms(60000 if w < 0 else min(w, 60000))

    async def _send(self, frame, confirmed):
        # One uplink; the network's time rides on it when due (a DeviceTimeReq, link/nettime.py)
        t = self.nettime
        # due: at t[2] or after -- a deadline is at most time_s (6 days) ahead, so a difference
        # below -time_s is one that went past it and wrapped (no uplink for 6.2 days)
        if t is not None and (t[2] is None or not -t[4] * 1000 <= _diff(_now(), t[2]) < 0):
            from meternode import run

            return await run("meternode.link.nettime", "lorawan", self, frame, confirmed)
        return await self.modem.send(self.port, frame, confirmed)

    async def run(self):
        r = self._reader
        while True:
            self.beat()
            try:
                if self.active is not None:
                    if not self.active():
                        self._down_ms = 0
                        await _sleep_ms(500)
                        continue
                    if self._down_ms < self.grace_ms:  # down, but not yet for long
                        self._down_ms += 500
                        await _sleep_ms(500)
                        continue
                if not self.modem.joined:
                    await self.modem.join()
                start = self.cursor.acked
                if self.floor is not None and self.floor() > start:
                    start = self.floor()
                r.seek(start + 1)
                kind = r.next()
                if kind:
                    try:
                        frame = loracodec.encode_record(kind, r.seq, r.ts, r.payload[: r.n])
                    except loracodec.CodecError:
                        self.skipped += 1  # no LoRa layout (e.g. gateway readings): MQTT only
                        self.cursor.advance(r.seq)
                        continue
                    except ValueError as e:
                        # a record that checks (CRC) but does not decode: never raised into
                        # this task (it would stop every later uplink); skipped and said so
                        self._unreadable(r.seq, e)
                        continue
                    await self.wait(len(frame))
                    self.gov.sent_now(len(frame), _now())
                    self.log.mark_sent(r.seq)  # this seq is never issued again (store/log.py)
                    if await self._send(frame, self.confirmed):
                        self.cursor.advance(r.seq)
                        self.cursor.flush()
                        self.sent += 1
                    else:
                        self.nacks += 1
                        await _sleep_ms(self.retry_ms)
                elif self.frame is not None:
                    frame, self.frame = self.frame, None
                    await self.wait(len(frame))
                    self.gov.sent_now(len(frame), _now())
                    await self._send(frame, False)
                    self.sent += 1
                else:
                    await _sleep_ms(100)
            except ModemError as e:
                self.failures += 1
                self.last_error = e
                await _sleep_ms(self.retry_ms)
