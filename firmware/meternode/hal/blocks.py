# Sample blocks shared by the board samplers (rp2 ADC, MCP3208 on PIO or a timer, ESP32 ADC1),
# and the timer-paced producer.
#
# The sampler timebase contract (hal/__init__.py): after each next_block() the sampler's
#   stamp_us     time.ticks_us() when the block's last set was converted,
#   lost         sets known lost since start (wraps below 2**30),
#   rate         the configured sets/s (board adc.rate), rate_actual what the hardware paces,
#   overruns     blocks (or partial blocks) given up because the consumer fell behind.
# Invariant: the sets inside one block are consecutive in time; every gap falls between two
# blocks and is counted in `lost`, so (sets delivered + lost, stamp_us) pairs measure the
# real rate and a gap is never silent.
#
# Ring: `nblocks` (a power of two, >= 2) blocks of nch * block_sets halfwords, each with two
# canary halfwords on both sides (checked by canaries_ok(): a DMA or ISR that wrote past a
# block shows there, see tests/hil).  bufs[k] is a memoryview made once; per-block
# metadata (stamp, lost before the block) lives in arrays the producer writes in its IRQ.
import array

_MASK = 0x3FFFFFFF  # counters wrap below 2**30: small ints on 32-bit ports
_GUARD = 2  # canary halfwords on each side of a block
_CANARY = 0xA5C3


class Ring:
    def __init__(self, nch, block_sets, nblocks=2):
        import asyncio

        if nblocks < 2 or nblocks & (nblocks - 1):
            raise ValueError("board.adc.ring = %d must be a power of two >= 2" % nblocks)
        n = nch * block_sets
        self.n = n
        self.nch = nch
        self.block_sets = block_sets
        self.nblocks = nblocks
        self.raw = []
        bufs = []
        for _ in range(nblocks):
            a = array.array("H", bytes(2 * (n + 2 * _GUARD)))
            for g in range(_GUARD):
                a[g] = _CANARY
                a[n + _GUARD + g] = _CANARY
            self.raw.append(a)
            bufs.append(memoryview(a)[_GUARD : _GUARD + n])
        self.bufs = tuple(bufs)
        self.stamp = array.array("i", bytes(4 * nblocks))  # ticks_us of each block's last set
        self.lostat = array.array("i", bytes(4 * nblocks))  # sets lost before each block
        self.flag = asyncio.ThreadSafeFlag()

    def byte_offset(self):
        # Where a block's samples start inside its raw array (for DMA write addresses).
        return 2 * _GUARD

    def canaries_ok(self):
        n = self.n
        for a in self.raw:
            for g in range(_GUARD):
                if a[g] != _CANARY or a[n + _GUARD + g] != _CANARY:
                    return False
        return True


class TimerSampler:
    # One sample set per machine.Timer tick into a Ring (the ESP32 ADC1 backend, and the
    # MCP3208 where there is no PIO).  A subclass sets nch, rate, block_sets, bits, _timer
    # and calls _init_ring(board adc dict); it reads one set in _read_set(buf, i) -> index
    # after it, and may add _poll(now_us) for work done on every tick (pulse pins).
    #
    # Why time decides, not the tick count: ESP32 timer callbacks are soft IRQs queued by
    # mp_sched_schedule() (MicroPython py/scheduler.c, MICROPY_SCHEDULER_DEPTH 8 on esp32
    # and rp2); when the VM stalls (GC, a flash erase, a TLS handshake) ticks beyond the
    # queue's 8 are dropped and the queued ones run back to back.  So each callback reads
    # ticks_us() and places itself on the timer's own grid (the hardware period P, the same
    # clock as ticks_us): a tick more than P/2 early for the next slot is a queued
    # duplicate and reads nothing; a late one skips the slots it missed, counts them as
    # lost and starts a new block (a block never spans a gap).
    #
    # Rate: the timer runs on an integer period of microseconds (rp2 machine_timer.c keeps
    # delta_us, esp32 a count of its 10 MHz or 1 MHz clock), so P = round(1e6 / rate) and
    # rate_actual = 1e6 / P (2400/s -> 417 us -> 2398.08/s); `note` says so when it differs.
    def _init_ring(self, adc):
        self.ring = Ring(self.nch, self.block_sets, adc.get("ring", 4))
        self.bufs = self.ring.bufs
        p = (1000000 + self.rate // 2) // self.rate
        self.period_us = p
        self.rate_actual = 1000000.0 / p
        self.note = None
        if p * self.rate != 1000000:
            self.note = "adc.rate %d/s: the timer ticks every %d us, %.3f sets/s (the meter measures it)" % (
                self.rate,
                p,
                self.rate_actual,
            )
        # [due_us, pos (-1: dropping), completed, taken, lost, dups, late_max_us, running, overruns]
        self._st = array.array("i", bytes(4 * 9))
        self.stamp_us = 0
        self.lost = 0
        self.hard = False  # the timer callback is a hard IRQ (rp2 Timer(hard=True))
        self._tick = self._on_tick  # bind once: the timer callback must not allocate
        import time

        import machine

        self._periodic = machine.Timer.PERIODIC

        self._us = time.ticks_us
        self._diff = time.ticks_diff
        self._add = time.ticks_add
        self.running = False

    @property
    def overruns(self):
        # Times the consumer fell behind so far that sets were dropped (counted in `lost`).
        return self._st[8]

    @property
    def dups(self):
        # Queued ticks that found their slot already read (soft IRQs run back to back).
        return self._st[5]

    @property
    def late_max_us(self):
        # The latest a tick has run after its slot (jitter; above P/2 it is a lost set).
        return self._st[6]

    def _poll(self, now):
        pass

    def _on_tick(self, t):
        # The timer callback: no allocation, small ints only (it may be a hard IRQ).
        st = self._st
        if not st[7]:
            return
        now = self._us()
        p = self.period_us
        late = self._diff(now, st[0])
        if late < -(p >> 1):
            st[5] = (st[5] + 1) & _MASK  # a queued tick for a slot already read
            return
        r = self.ring
        n = r.n
        if late >= p - (p >> 1):  # missed slots: skip them, the block restarts after the gap
            miss = (late + (p >> 1)) // p
            st[0] = self._add(st[0], miss * p)
            st[4] = (st[4] + miss + (st[1] // r.nch if st[1] > 0 else 0)) & _MASK
            st[1] = 0
            late -= miss * p
        if late > st[6]:
            st[6] = late
        st[0] = self._add(st[0], p)
        self._poll(now)
        pos = st[1]
        k = st[2] & (r.nblocks - 1)
        if pos <= 0:
            if ((st[2] - st[3]) & _MASK) >= r.nblocks - 1:
                st[4] = (st[4] + 1) & _MASK  # every block is full or held: drop this set
                if pos == 0:
                    st[1] = -1
                    st[8] += 1
                return
            pos = 0
            r.lostat[k] = st[4]
        pos = self._read_set(r.bufs[k], pos)
        if pos >= n:
            r.stamp[k] = now
            st[2] = (st[2] + 1) & _MASK
            pos = 0
            r.flag.set()
        st[1] = pos

    def start(self):
        st = self._st
        for i in range(9):
            st[i] = 0
        self.lost = 0
        # The first tick is due one period after init (rp2: alarm in delta_us; esp32: the
        # gptimer alarm at `period` counts from 0).
        st[0] = self._add(self._us(), self.period_us)
        st[7] = 1
        kw = {"mode": self._periodic, "period": self.period_us, "tick_hz": 1000000, "callback": self._tick}
        try:
            self._timer.init(hard=True, **kw)  # rp2 (MicroPython >= 1.26): a hard IRQ
            self.hard = True
        except (TypeError, ValueError):
            self._timer.init(**kw)  # esp32: "hard Timers are not implemented"
            self.hard = False
        self.running = True

    def stop(self):
        self._st[7] = 0
        self._timer.deinit()
        self.running = False

    async def next_block(self):
        st = self._st
        r = self.ring
        while True:
            done = st[2]
            taken = st[3]
            if (done - taken) & _MASK:
                k = taken & (r.nblocks - 1)
                self.stamp_us = r.stamp[k]
                self.lost = r.lostat[k]
                st[3] = (taken + 1) & _MASK
                return r.bufs[k]
            await r.flag.wait()


def measure_skew(s, sets=32, rounds=4):
    # The time between consecutive conversions of a set, measured on this board in the
    # sampler's own read path (ticks_us around `sets` sets; the fastest of `rounds`, as
    # interrupts only ever add): the per-slot delay the meter's phase correction needs.
    import time

    buf = s.ring.bufs[0]
    best = None
    for _ in range(rounds):
        t0 = time.ticks_us()
        for _ in range(sets):
            s._read_set(buf, 0)
        dt = time.ticks_diff(time.ticks_us(), t0)
        if best is None or dt < best:
            best = dt
    return best / (sets * s.nch) if s.nch > 1 else 0.0
