# RP2040 DMA ring: a peripheral FIFO (the ADC's, or a PIO state machine's RX FIFO) drained
# into a Ring of N blocks by two DMA channels, with the CPU out of the loop.
#
# Written to the RP2040 datasheet, section 2.5 (DMA), and MicroPython's rp2.DMA
# (ports/rp2/rp2_dma.c).  Why this shape: every LittleFS erase or program on rp2 runs with
# interrupts disabled and the other core parked (ports/rp2/rp2_flash.c,
# begin_critical_flash_section), for up to the flash's sector-erase time (W25Q16JV: 45 ms
# typical, 400 ms max).  A ring re-armed by the CPU in the completion IRQ lets the hardware
# run past its buffer during such a stall.  Here:
#   data channel  16-bit reads of the FIFO (fixed address), incrementing writes, paced by
#                 the FIFO's DREQ, nch * block_sets transfers, chains to the control channel
#                 and raises its IRQ on completion;
#   control chan. one 32-bit transfer from a table of the N block addresses (read ring of
#                 4*N bytes, the table aligned to its size) into the data channel's
#                 AL2_WRITE_ADDR_TRIG (+0x2C): it points the data channel at the next block
#                 and restarts it (TRANS_COUNT reloads on every trigger).
# The hardware cycles through the N blocks on its own, whether or not the CPU answers; it
# only ever writes inside them.  The CPU observes: the control channel's READ_ADDR says
# which table entry comes next (so which block is being written), TRANS_COUNT how far, and
# ticks_us when; the completion IRQ (hard, no allocation) keeps a reference (blocks
# completed, time of the last completion).  After a stall the IRQs of several completions
# arrive as one; the elapsed time (ticks_us and the DREQ source run from the same crystal)
# tells how many, the block index modulo N makes it exact.  A block the hardware
# overwrote before the consumer took it is counted in `lost`, never handed out.
#
# Stopping follows erratum RP2040-E13 (an abort with transfers in flight raises a spurious
# completion IRQ; pico-sdk dma_channel_cleanup): IRQ disabled first, both channels aborted
# together through CHAN_ABORT (+0x444), then polled until ABORT and BUSY read zero, then
# the raw IRQ status (INTR, +0x400) cleared.
import array

from micropython import const

from meternode.hal.blocks import _MASK

_DMA_BASE = const(0x50000000)
_INTR = const(0x400)
_CHAN_ABORT = const(0x444)
_AL2_WRITE_ADDR_TRIG = const(0x2C)
_TREQ_PERMANENT = const(0x3F)
_SPIN = const(100000)  # bound on every register poll (a stuck bit raises instead of hanging)


class DmaRing:
    # ring: a blocks.Ring.  read_addr/treq: the FIFO and its DREQ.  Timing of the source in
    # integer "units" (upus units per microsecond): transfer k of a set ends conv*(k+1)
    # after the set starts, sets are `period` apart; for a free-running ADC period = nch *
    # conv.  keep: how many complete blocks may wait (N - 2, at least 1) -- the rest of the
    # ring is the margin the consumer has while it processes one.
    def __init__(self, ring, read_addr, treq, conv, period, upus):
        import struct
        import time

        import machine
        import rp2
        import uctypes

        self.ring = ring
        nb = ring.nblocks
        self._mem = machine.mem32
        self._us = time.ticks_us
        self._diff = time.ticks_diff
        self._add = time.ticks_add
        self.read_addr = read_addr
        self.treq = treq
        # keep block arithmetic below 2**29: coarser units for very long blocks
        while ring.block_sets * period >= 1 << 29:
            conv >>= 1
            period >>= 1
            upus >>= 1
        if upus < 1 or conv < 1:
            raise ValueError("board.adc.block = %d sets is too long for the DMA ring's timing" % ring.block_sets)
        self.conv = conv
        self.period = period
        self.upus = upus
        self.block_us = ring.block_sets * period // upus
        # the table of block addresses, aligned to its own size for the read ring
        raw = bytearray(8 * nb)
        base = uctypes.addressof(raw)
        off = (-base) & (4 * nb - 1)
        self._table_raw = raw
        self.table = base + off
        self.addrs = []
        for k in range(nb):
            a = uctypes.addressof(ring.raw[k]) + ring.byte_offset()
            self.addrs.append(a)
            struct.pack_into("<I", raw, off + 4 * k, a)
        self.data = rp2.DMA()
        self.ctl = rp2.DMA()
        self._mask = (1 << self.data.channel) | (1 << self.ctl.channel)
        self._trig = _DMA_BASE + 0x40 * self.data.channel + _AL2_WRITE_ADDR_TRIG
        ring_bits = 0
        while (1 << ring_bits) < 4 * nb:
            ring_bits += 1
        self._data_ctrl = self.data.pack_ctrl(
            size=1, inc_read=False, inc_write=True, treq_sel=treq, chain_to=self.ctl.channel, irq_quiet=False
        )
        self._ctl_ctrl = self.ctl.pack_ctrl(
            size=2,
            inc_read=True,
            inc_write=False,
            ring_sel=0,
            ring_size=ring_bits,
            treq_sel=_TREQ_PERMANENT,
            chain_to=self.ctl.channel,
            irq_quiet=True,
        )
        self.keep = nb - 2 if nb > 2 else 1
        # [running, completed, t_completed_us, seq, taken, held (-1: none), torn]
        self._st = array.array("i", bytes(4 * 7))
        self._w = array.array("i", bytes(4 * 3))  # where(): [completed mod N, done, ticks_us]
        self._r = array.array("i", bytes(4 * 2))  # reference(): [completed, t_completed_us]
        self._irq = self._on_irq  # bind once: the hard IRQ must not allocate
        self.lost = 0
        self.overruns = 0
        self.stamp_us = 0

    # -- hardware ------------------------------------------------------------------------------
    def arm(self):
        # Program both channels and arm the data channel (it waits for its DREQ).
        ring = self.ring
        st = self._st
        for i in range(7):
            st[i] = 0
        st[5] = -1
        self.lost = 0
        self.ctl.config(read=self.table + 4, write=self._trig, count=1, ctrl=self._ctl_ctrl)
        self.data.config(read=self.read_addr, write=self.addrs[0], count=ring.n, ctrl=self._data_ctrl, trigger=True)
        self._mem[_DMA_BASE + _INTR] = self._mask  # no stale completion
        self.data.irq(self._irq, hard=True)

    def started(self, t_us):
        # The source starts converting now: the reference for the first completion.
        st = self._st
        st[2] = t_us
        st[0] = 1

    def disarm(self):
        # RP2040-E13-safe stop of both channels.
        st = self._st
        st[0] = 0
        self.data.irq(None)
        m = self._mem
        mask = self._mask
        m[_DMA_BASE + _CHAN_ABORT] = mask
        for _ in range(_SPIN):
            if not m[_DMA_BASE + _CHAN_ABORT] & mask:
                break
        else:
            raise OSError("DMA channels did not abort")
        for _ in range(_SPIN):
            if not (self.data.active() or self.ctl.active()):
                break
        else:
            raise OSError("DMA channels stayed busy after the abort")
        m[_DMA_BASE + _INTR] = mask  # the spurious completion of RP2040-E13

    def where(self):
        # Fills self._w = [blocks completed mod N, transfers into the block being written,
        # ticks_us], sampled so that the control channel did not move in between (no
        # allocation: it runs in the hard IRQ).
        nb = self.ring.nblocks
        ctl = self.ctl
        data = self.data
        for _ in range(4):
            k1 = ctl.read
            cnt = data.count
            now = self._us()
            if ctl.read == k1:
                break
        k = ((k1 - self.table) >> 2) & (nb - 1)
        w = (k - 1) & (nb - 1)  # the block the data channel writes
        r = self._w
        r[2] = now
        if cnt == 0:
            r[0] = (w + 1) & (nb - 1)  # just completed, the next not yet started
            r[1] = 0
        else:
            r[0] = w
            r[1] = self.ring.n - cnt

    def _since(self, done):
        # Microseconds from the last completion to the end of transfer `done` of the next block.
        if done <= 0:
            return 0
        nch = self.ring.nch
        d = done - 1
        return ((d // nch + 1) * self.period - (nch - 1 - d % nch) * self.conv) // self.upus

    def _on_irq(self, dma):
        # Hard IRQ on each data-channel completion (several merge into one after a stall).
        st = self._st
        if not st[0]:
            return
        self.where()
        r = self._w
        w = r[0]
        t = self._add(r[2], -self._since(r[1]))
        el = self._diff(t, st[2])
        bu = self.block_us
        est = (el + (bu >> 1)) // bu if el > 0 else 0
        c = st[1] + est
        nb = self.ring.nblocks
        d = (w - c) & (nb - 1)
        if d > nb >> 1:
            d -= nb
        c += d
        if c <= st[1]:
            return  # nothing new (a spurious or repeated IRQ)
        st[1] = c & _MASK
        st[2] = t
        st[3] = (st[3] + 1) & _MASK
        self.ring.flag.set()

    def reference(self):
        # Fills self._r = [blocks completed, ticks_us of the last completion], consistent
        # with each other (the IRQ may update them in between: retried).
        st = self._st
        r = self._r
        while True:
            s = st[3]
            r[0] = st[1]
            r[1] = st[2]
            if st[3] == s:
                return r

    @property
    def torn(self):
        # Blocks the hardware began to overwrite while the consumer still held them.
        return self._st[6]

    def release(self):
        # The consumer is done with the block it took last: was it overwritten meanwhile?
        st = self._st
        held = st[5]
        if held >= 0:
            st[5] = -1
            c = self.reference()[0]
            if ((c - held) & _MASK) >= self.ring.nblocks and ((c - held) & _MASK) < 1 << 28:
                st[6] += 1

    def take(self):
        # The oldest intact block not yet taken, or None; sets stamp_us and lost.
        st = self._st
        r = self.reference()
        c = r[0]
        t = r[1]
        ring = self.ring
        nb = ring.nblocks
        taken = st[4]
        pend = (c - taken) & _MASK
        if not pend or pend >= 1 << 28:
            return None
        if pend > self.keep:
            skip = pend - self.keep
            self.lost = (self.lost + skip * ring.block_sets) & _MASK
            self.overruns += 1
            taken = (taken + skip) & _MASK
        self.stamp_us = self._add(t, -((c - 1 - taken) & _MASK) * self.block_us)
        st[4] = (taken + 1) & _MASK
        st[5] = taken
        return ring.bufs[taken & (nb - 1)]
