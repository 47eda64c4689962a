# The polling scheduler of one bus: each meter at its own interval, one transaction at a
# time, with a timeout per answer, bounded retries, the bus's turnaround gap before every
# request, and exponential backoff (to `backoff_max_s`) for a meter that stopped
# answering.  A meter that stops answering is an event (once), and its last good reading
# stays as it was, marked stale; nothing is ever invented for it.  A misconfigured or
# broken meter is reported once and never stops the others.
#
# Valve commands (`ops`, queued by the service) go out on this task between polls, so the
# bus carries one transaction at a time; the meter is read right after.
#
# The sink (gateway/service.py) receives: reading(meter, readings) (before meter.last
# takes the new readings), silent(meter, why),
# back(meter), note(meter, text), valve_done(meter, close, tag, why) ("" = confirmed).
from meternode import _nop
from meternode.gateway import drivers
from meternode.gateway import reading as R
from meternode.ticks import add as _add
from meternode.ticks import diff as _diff
from meternode.ticks import ms as _ms
from meternode.ticks import sleep_ms as _sleep_ms


class Meter:
    # One meter's schedule and state: small, since a node may read dozens (`index`, the
    # config entry's position, is not kept).
    def __init__(self, driver, interval_ms, index=0):
        self.driver = driver
        self.interval_ms = interval_ms
        self.due = _ms()
        self.last = R.Readings(driver.values)  # the last good reading (kept while silent)
        self.have = False
        self.fails = 0  # polls in a row without an answer
        self.silent = False
        self.good = 0
        self.errors = 0  # polls that failed
        self.last_error = ""

    @property
    def id(self):
        return self.driver.id


class Poller:
    def __init__(self, bus, meters, sink, timeout_ms=500, retries=2, backoff_max_s=3600, silent_after=2):
        self.bus = bus
        self.meters = meters
        self.beat = _nop  # the supervisor's progress report (supervisor.py), once per loop
        self.sink = sink
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.backoff_max_ms = backoff_max_s * 1000
        self.silent_after = silent_after
        self.tx = bytearray(300)
        self._sc = {}
        self._r = R.Readings()
        self.cycles = 0
        self.retried = 0
        self.garbled = 0  # answers that were no frame (noise, bad checksum)
        self.cycle_ms = 0  # the last full round over every due meter
        self._noted = []
        self.ops = []  # [(meter, close, tag)] valve commands waiting for the bus

    def scanner(self, kind):
        sc = self._sc.get(kind)
        if sc is None:
            sc = self._sc[kind] = drivers.scanner(kind)
        return sc

    def note(self, meter_driver, text):
        # Something about a meter worth saying once (a DI it lacks, an exception).
        key = meter_driver.id + text
        if key in self._noted:
            return
        if len(self._noted) < 64:
            self._noted.append(key)
        self.sink.note(meter_driver.id, text)

    async def xfer(self, n, sc, tries=0):
        # Sends self.tx[:n], returns the answer's length (at sc.buf[sc.start:]).  Retries
        # a missing or garbled answer up to `retries` times; raises NoAnswer / BadAnswer.
        tries = tries or self.retries + 1
        bad = 0
        for attempt in range(tries):
            if attempt:
                self.retried += 1
            k = await self.bus.request(self.tx, n, sc, self.timeout_ms)
            if k > 0:
                return k
            if k == 0:
                bad += 1
                self.garbled += 1
        if bad:
            raise drivers.BadAnswer("garbled answer (%d of %d tries)" % (bad, tries))
        raise drivers.NoAnswer("no answer in %d ms (%d tries)" % (self.timeout_ms, tries))

    def next_due(self):
        now = _ms()
        best = None
        wait = 0
        for m in self.meters:
            d = _diff(m.due, now)
            if best is None or d < wait:
                best = m
                wait = d
        return best, wait

    async def run(self):
        if not self.meters:
            return
        while True:
            self.beat()
            if self.ops:
                await self.valve(self.ops.pop(0))
                continue
            m, wait = self.next_due()
            if wait > 0:
                await _sleep_ms(wait if wait < 1000 else 1000)
                continue
            await self.poll(m)

    async def valve(self, op):
        m, close, tag = op
        try:
            why = await m.driver.valve(self, close)
        except Exception as e:  # no answer, garbled, refused config: the result says which
            why = str(e)
        m.due = _ms()  # read it now: its status shows the valve
        self.sink.valve_done(m, close, tag, why)

    async def poll(self, m):
        r = self._r
        r.clear()
        t0 = _ms()
        try:
            await m.driver.poll(self, r)
            ok = True
        except drivers.NoAnswer as e:
            ok = False
            m.last_error = str(e)
        except (drivers.BadAnswer, ValueError) as e:  # FrameErrors are ValueErrors
            ok = False
            m.last_error = str(e)
        except Exception as e:  # a driver's bug: say so, keep polling the others
            ok = False
            m.last_error = "error: %r" % (e,)
        now = _ms()
        if ok:
            m.fails = 0
            m.good += 1
            m.due = _add(t0, m.interval_ms)
            if _diff(m.due, now) < 0:
                m.due = now
            if m.silent:
                m.silent = False
                self.sink.back(m)
            # the sink sees the new reading while m.last still holds the one before: a freeze
            # that falls due now (midnight) takes every meter's last reading before it
            self.sink.reading(m, r)
            m.last.copy_from(r)
            m.have = True
            return True
        m.errors += 1
        m.fails += 1
        back = m.interval_ms
        for _ in range(m.fails - 1):
            back *= 2
            if back >= self.backoff_max_ms:
                back = self.backoff_max_ms
                break
        if back < m.interval_ms:
            back = m.interval_ms
        m.due = _add(now, back)
        if m.fails >= self.silent_after and not m.silent:
            m.silent = True
            self.sink.silent(m, m.last_error)
        return False

    async def cycle(self):
        # Polls every meter once, in order (discovery, benchmarks, tests); returns the
        # milliseconds it took.
        t0 = _ms()
        for m in self.meters:
            await self.poll(m)
        self.cycles += 1
        self.cycle_ms = _diff(_ms(), t0)
        return self.cycle_ms

    def stats(self):
        return {
            "bus": self.bus.name,
            "meters": [
                {"id": m.id, "polls": m.good + m.errors, "good": m.good, "errors": m.errors, "silent": m.silent,
                 "error": m.last_error}
                for m in self.meters
            ],
            "retried": self.retried,
            "garbled": self.garbled,
            "bus_stats": self.bus.stats(),
        }


