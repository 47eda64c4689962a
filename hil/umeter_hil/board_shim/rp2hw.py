# RP2040 stand-in for firmware tests on the unix port (and host tests on CPython): the parts
# of the chip the samplers program, modelled at register level from the RP2040 datasheet
# (2.5 DMA, 3 PIO, 4.9 ADC) and MicroPython's rp2 modules, so the real hal/rp2040.py,
# hal/rp2dma.py and hal/mcp3208.py run against it unchanged.
#
#   chip = RP2040(hz=48_000_000 * 256)       # the world's time unit: 1/256 ADC clock
#   undo = chip.install()                     # machine, rp2, uctypes, time in sys.modules
#   s = rp2040.RP2Sampler(board); undo()      # bound to the stand-ins at construction
#   chip.run_us(40_000)                       # conversions, DMA transfers, IRQs happen
#   chip.flash_erase_us(300_000)              # interrupts masked, DMA and ADC keep going
#
# SRAM: uctypes.addressof(obj) gives each buffer a fake address at 0x20000000 + n, with a
# gap after it; a DMA write that lands outside every known buffer is a "wild write" (the
# heap corruption of a real board), counted in chip.wild (first ones in chip.wild_at) and
# never performed.
# DMA: 12 channels, CTRL bits as rp2.DMA.pack_ctrl packs them, TRANS_COUNT reload on each
# trigger, chaining, read/write rings, AL2_WRITE_ADDR_TRIG, CHAN_ABORT (with erratum
# RP2040-E13: aborting a busy channel raises its completion interrupt), INTR/INTE0 and the
# shared DMA_IRQ_0 handler of ports/rp2/rp2_dma.c (acknowledge, then call).  Interrupts
# can be masked (flash erase: rp2_flash.c); pending ones run when unmasked.
# ADC: CS/FCS/FIFO/DIV, round robin in ascending order from AINSEL, a 4-deep FIFO whose
# overflow sets OVER and loses the new result, DREQ 36.  chip.source(input, t_us) gives
# each conversion's 12-bit value.
# PIO: rp2.asm_pio (encodings per datasheet 3.4), a cycle-level state-machine emulator
# (Sm) with pins, and an MCP3208 model on those pins (Mcp3208) that checks the SPI timing;
# rp2.StateMachine runs the emulator for the first sets to learn when each result is
# pushed and which channel it is, then replays that schedule at transfer level.
import sys

_MASK30 = 0x3FFFFFFF
_SRAM = 0x20000000
_DMA = 0x50000000
_ADC = 0x4004C000
_PIO = (0x50200000, 0x50300000)


# -- time -----------------------------------------------------------------------------------
class FakeTime:
    # The `time` module as the samplers use it, on the chip's clock (wraps like a board's).
    def __init__(self, chip, t0_us):
        self._chip = chip
        self._t0 = t0_us

    def ticks_us(self):
        return self._chip.us  # kept current by the chip: no arithmetic (IRQs may hold the heap lock)

    def ticks_ms(self):
        return ((self._t0 + self._chip.now_us()) // 1000) & _MASK30

    def ticks_add(self, a, b):
        # as time.ticks_add, with no intermediate >= 2**30 (a boxed int would allocate)
        if b >= 0:
            return a - _MASK30 + b - 1 if a > _MASK30 - b else a + b
        s = a + b
        return s + _MASK30 + 1 if s < 0 else s

    def ticks_diff(self, a, b):
        d = (a - b) & _MASK30
        return d - _MASK30 - 1 if d > _MASK30 >> 1 else d  # no intermediate >= 2**30

    def time(self):
        return 1700000000 + self._chip.now_us() // 1000000

    def sleep_ms(self, ms):
        self._chip.run_us(ms * 1000)


# -- SRAM -----------------------------------------------------------------------------------
class Sram:
    def __init__(self):
        self.regions = []  # [base, size, obj, itemsize]
        self.next = _SRAM + 0x1000

    def addressof(self, obj):
        for r in self.regions:
            if r[2] is obj:
                return r[0]
        isz = _itemsize(obj)
        size = len(obj) * isz
        base = (self.next + 15) & ~15  # GC blocks are 16 bytes on a 32-bit port
        self.regions.append([base, size, obj, isz])
        self.next = base + size + 16  # the next heap object starts after a gap
        return base

    def find(self, addr, size):
        for base, n, obj, isz in self.regions:
            if base <= addr and addr + size <= base + n:
                return obj, addr - base, isz
        return None, 0, 1


def _itemsize(obj):
    if isinstance(obj, (bytes, bytearray)):
        return 1
    return {"H": 2, "h": 2, "I": 4, "i": 4, "B": 1, "b": 1}.get(_typecode(obj), 1)


def _typecode(obj):
    tc = getattr(obj, "typecode", None)
    if tc is not None:
        return tc
    s = repr(obj[:0])  # MicroPython: array('H')
    i = s.find("'")
    return s[i + 1] if i >= 0 else "B"


def _store(obj, off, isz, size, value):
    if isz == size:
        obj[off // size] = value & ((1 << (8 * size)) - 1)
        return
    for k in range(size):  # byte-wise (little endian)
        i = (off + k) // isz
        sh = 8 * ((off + k) % isz)
        obj[i] = (obj[i] & ~(0xFF << sh)) | (((value >> (8 * k)) & 0xFF) << sh)


def _load(obj, off, isz, size):
    if isz == size:
        return obj[off // size]
    v = 0
    for k in range(size):
        i = (off + k) // isz
        sh = 8 * ((off + k) % isz)
        v |= ((obj[i] >> sh) & 0xFF) << (8 * k)
    return v


class FakeUctypes:
    def __init__(self, sram):
        self._sram = sram

    def addressof(self, obj):
        return self._sram.addressof(obj)


# -- DMA ------------------------------------------------------------------------------------
# CTRL field layout as ports/rp2/rp2_dma.c packs it: (name, shift, length)
_CTRL_FIELDS = (
    ("enable", 0, 1),
    ("high_pri", 1, 1),
    ("size", 2, 2),
    ("inc_read", 4, 1),
    ("inc_write", 5, 1),
    ("ring_size", 6, 4),
    ("ring_sel", 10, 1),
    ("chain_to", 11, 4),
    ("treq_sel", 15, 6),
    ("irq_quiet", 21, 1),
    ("bswap", 22, 1),
    ("sniff_en", 23, 1),
)


def _field(ctrl, name):
    for n, sh, ln in _CTRL_FIELDS:
        if n == name:
            return (ctrl >> sh) & ((1 << ln) - 1)
    raise KeyError(name)


class Channel:
    def __init__(self, chip, ch):
        self.chip = chip
        self.ch = ch
        self.read = 0
        self.write = 0
        self.count = 0  # live TRANS_COUNT
        self.reload = 0
        self.busy = False
        self.ctrl = 0

    @property
    def ctrl(self):
        return self._ctrl

    @ctrl.setter
    def ctrl(self, v):
        # decoded once per write: the transfer path runs for every sample
        self._ctrl = v
        self.en = _field(v, "enable")
        self.size = 1 << _field(v, "size")
        self.inc_r = _field(v, "inc_read")
        self.inc_w = _field(v, "inc_write")
        rs = _field(v, "ring_size")
        self.ring_m = (1 << rs) - 1 if rs else 0
        self.ring_w = _field(v, "ring_sel")
        self.chain = _field(v, "chain_to")
        self.treq = _field(v, "treq_sel")
        self.quiet = _field(v, "irq_quiet")

    def trigger(self):
        if not self.en:
            return
        self.count = self.reload
        self.busy = True
        if self.treq == 0x3F:
            self.chip.dma_run(self)  # unpaced: as fast as it goes

    def transfer(self):
        # One transfer (the DREQ or the unpaced loop decided it may go).
        size = self.size
        chip = self.chip
        chip.bus_write(self.write, size, chip.bus_read(self.read, size))
        m = self.ring_m
        if self.inc_r:
            nxt = self.read + size
            self.read = (self.read & ~m) | (nxt & m) if m and not self.ring_w else nxt
        if self.inc_w:
            nxt = self.write + size
            self.write = (self.write & ~m) | (nxt & m) if m and self.ring_w else nxt
        self.count -= 1
        chip.transfers += 1
        if self.count == 0:
            self.busy = False
            if not self.quiet:
                chip.intr |= 1 << self.ch
            if self.chain != self.ch:
                chip.chan[self.chain].trigger()
            chip.irq_check()


class FakeDMA:
    # rp2.DMA on a stand-in channel.
    def __init__(self, chip):
        self._chip = chip
        ch = None
        for k in range(12):
            if k not in chip.claimed:
                ch = k
                break
        if ch is None:
            raise OSError(16)  # EBUSY
        chip.claimed.append(ch)
        self.channel = ch
        self._c = chip.chan[ch]

    def pack_ctrl(self, **kw):
        # DEFAULT_DMA_CONFIG of rp2_dma.c: quiet, unpaced, both increment, 32-bit, enabled,
        # chained to itself (no chain).
        v = (1 << 21) | (0x3F << 15) | (1 << 5) | (1 << 4) | (2 << 2) | 1 | (self.channel << 11)
        if "default" in kw:
            v = kw.pop("default")
        for name, value in kw.items():
            for n, sh, ln in _CTRL_FIELDS:
                if n == name:
                    m = (1 << ln) - 1
                    if value & m != value:
                        raise ValueError("bad field value")
                    v = (v & ~(m << sh)) | (value << sh)
                    break
            else:
                raise TypeError("unknown ctrl field " + name)
        return v

    @staticmethod
    def unpack_ctrl(v):
        return {n: (v >> sh) & ((1 << ln) - 1) for n, sh, ln in _CTRL_FIELDS}

    def _addr(self, v):
        return v if isinstance(v, int) else self._chip.sram.addressof(v)

    def config(self, read=None, write=None, count=None, ctrl=None, trigger=False):
        c = self._c
        if read is not None:
            c.read = self._addr(read)
        if write is not None:
            c.write = self._addr(write)
        if count is not None:
            c.reload = count
        if ctrl is not None:
            c.ctrl = ctrl
        if trigger:
            c.trigger()

    @property
    def read(self):
        return self._c.read

    @read.setter
    def read(self, v):
        self._c.read = self._addr(v)

    @property
    def write(self):
        return self._c.write

    @write.setter
    def write(self, v):
        self._c.write = self._addr(v)

    @property
    def count(self):
        return self._c.count

    @count.setter
    def count(self, v):
        self._c.reload = v  # TRANS_COUNT written: the value the next trigger loads

    @property
    def ctrl(self):
        return self._c.ctrl

    @ctrl.setter
    def ctrl(self, v):
        self._c.ctrl = v

    def irq(self, handler=None, hard=False):
        chip = self._chip
        bit = 1 << self.channel
        if self.channel not in chip.handlers:
            chip.intr &= ~bit  # "clear any existing IRQs on this DMA channel"
        chip.handlers[self.channel] = (handler, self)
        if handler is None:
            chip.inte0 &= ~bit
        else:
            chip.inte0 |= bit
            chip.irq_check()

    def active(self, v=None):
        if v is not None:
            if v:
                self._c.trigger()
            else:
                self._chip.abort(1 << self.channel)
        return self._c.busy

    def close(self):
        self._chip.abort(1 << self.channel)
        self._chip.claimed.remove(self.channel)


# -- ADC ------------------------------------------------------------------------------------
class Adc:
    def __init__(self, chip):
        self.chip = chip
        self.cs = 0
        self.fcs = 0
        self.div = 0
        self.fifo = []
        self.next_t = None  # world time of the next conversion result
        self.conversions = 0
        self.cs_log = []  # every value written to CS
        self.powerup = 0
        self.ready_seen = False
        self.started_unready = 0  # START_MANY written before READY was ever read

    def period(self):
        # One conversion every 1 + INT + FRAC/256 ADC cycles (96 at least): world units.
        ip = (self.div >> 8) & 0xFFFF
        fr = self.div & 0xFF
        p256 = 256 * (1 + ip) + fr
        if p256 < 96 * 256:
            p256 = 96 * 256
        return p256 * self.chip.hz // (48000000 * 256)

    def write(self, off, v):
        if off == 0x00:
            self.cs_log.append(v)
            if v & 1 and not self.cs & 1:
                self.powerup = 2  # READY reads 0 while the ADC powers up
                self.ready_seen = False
            if v & 8 and not self.cs & 8 and not self.ready_seen:
                self.started_unready += 1
            was = self.cs & 8
            self.cs = v & 0x1F740F  # READY/ERR are read-only
            if v & 8 and v & 1 and not was:
                self.next_t = self.chip.t + 96 * self.chip.hz // 48000000
            if not v & 8:
                self.next_t = None
        elif off == 0x08:
            self.fcs = (self.fcs & ~0x0F00000F) | (v & 0x0F00000F)
            self.fcs &= ~(v & 0xC00)  # OVER/UNDER: write 1 to clear
        elif off == 0x10:
            self.div = v & 0xFFFFFF

    def read(self, off):
        if off == 0x00:
            if not self.cs & 1:
                return self.cs
            if self.powerup:
                self.powerup -= 1
                return self.cs
            self.ready_seen = True
            return self.cs | 0x100  # READY (a conversion in progress still reads ready here)
        if off == 0x08:
            n = len(self.fifo)
            return (self.fcs & ~0xF0300) | (n << 16) | (0x100 if n == 0 else 0) | (0x200 if n >= 4 else 0)
        if off == 0x0C:
            return self.pop()
        if off == 0x10:
            return self.div
        return 0

    def pop(self):
        if not self.fifo:
            self.fcs |= 0x400  # UNDER
            return 0
        return self.fifo.pop(0)

    def convert(self):
        inp = (self.cs >> 12) & 7
        v = self.chip.source(inp, self.chip.now_us()) & 0xFFF
        self.conversions += 1
        if self.fcs & 1:
            if len(self.fifo) >= 4:
                self.fcs |= 0x800  # OVER: the new result is lost
            else:
                self.fifo.append(v)
        rr = (self.cs >> 16) & 0x1F
        if rr:
            for k in range(1, 6):
                j = (inp + k) % 5
                if rr & (1 << j):
                    self.cs = (self.cs & ~0x7000) | (j << 12)
                    break


# -- PIO assembler (rp2.asm_pio) ----------------------------------------------------------------
class PIO:
    IN_LOW = 0
    IN_HIGH = 1
    OUT_LOW = 2
    OUT_HIGH = 3
    SHIFT_LEFT = 0
    SHIFT_RIGHT = 1
    JOIN_NONE = 0
    JOIN_TX = 1
    JOIN_RX = 2


_PIO_FUNCS = {
    "gpio": 0,
    "pins": 0,
    "x": 1,
    "y": 2,
    "null": 3,
    "pindirs": 4,
    "pc": 5,
    "status": 5,
    "isr": 6,
    "osr": 7,
    "exec": 8,
    "not_x": 1,
    "x_dec": 2,
    "not_y": 3,
    "y_dec": 4,
    "x_not_y": 5,
    "pin": 6,
    "not_osre": 7,
    "noblock": 0x01,
    "block": 0x21,
    "iffull": 0x40,
    "ifempty": 0x40,
    "clear": 0x40,
}


class _Emit:
    # Encodes per RP2040 datasheet 3.4 (instruction encodings); two passes like the real
    # assembler (labels first).
    def __init__(self, out_init=None, set_init=None, sideset_init=None, in_shiftdir=0, out_shiftdir=0,
                 autopush=False, autopull=False, push_thresh=32, pull_thresh=32, fifo_join=0):  # fmt: skip
        self.cfg = {
            "out_init": out_init,
            "set_init": set_init,
            "sideset_init": sideset_init,
            "in_shiftdir": in_shiftdir,
            "out_shiftdir": out_shiftdir,
            "autopush": autopush,
            "autopull": autopull,
            "push_thresh": push_thresh,
            "pull_thresh": pull_thresh,
            "fifo_join": fifo_join,
        }
        if sideset_init is None:
            self.ss = 0
        elif isinstance(sideset_init, int):
            self.ss = 1
        else:
            self.ss = len(sideset_init)
        self.labels = {}
        self.words = []
        self.wrap_target_at = 0
        self.wrap_at = None

    def start(self, p):
        if p == 1:
            if self.wrap_at is None:
                self.wrap_at = self.n - 1
            self.opt = self.ss and self.nside != self.n
            self.ssbits = self.ss + (1 if self.opt else 0)
            self.delay_max = 31 >> self.ssbits
        self.p = p
        self.n = 0
        self.nside = 0
        self.words = []

    def word(self, instr, label=None):
        self.n += 1
        if self.p:
            if label is not None:
                if label not in self.labels:
                    raise ValueError("unknown label %s" % label)
                instr |= self.labels[label]
            self.words.append(instr)
        return self

    def side(self, v):
        self.nside += 1
        if self.p:
            if not self.ss:
                raise ValueError("no sideset")
            if v >= 1 << self.ss:
                raise ValueError("sideset too large")
            self.words[-1] |= (1 << 12 if self.opt else 0) | v << (13 - self.ssbits)
        return self

    def __getitem__(self, d):
        if self.p:
            if d > self.delay_max:
                raise ValueError("delay too large")
            self.words[-1] |= d << 8
        return self

    def label(self, name):
        if self.p == 0:
            if name in self.labels:
                raise ValueError("duplicate label %s" % name)
            self.labels[name] = self.n

    def wrap_target(self):
        self.wrap_target_at = self.n

    def wrap(self):
        self.wrap_at = self.n - 1

    def nop(self):
        return self.word(0xA042)

    def jmp(self, cond, label=None):
        if label is None:
            label, cond = cond, 0
        return self.word(cond << 5, label)

    def wait(self, pol, src, idx):
        src = 1 if src == 6 else (2 if src else 0)
        return self.word(0x2000 | pol << 7 | src << 5 | idx)

    def in_(self, src, n):
        return self.word(0x4000 | src << 5 | n & 0x1F)

    def out(self, dest, n):
        return self.word(0x6000 | (7 if dest == 8 else dest) << 5 | n & 0x1F)

    def push(self, v=0, v2=0):
        v |= v2
        if not v & 1:
            v |= 0x20
        return self.word(0x8000 | v & 0x60)

    def pull(self, v=0, v2=0):
        v |= v2
        if not v & 1:
            v |= 0x20
        return self.word(0x8080 | v & 0x60)

    def mov(self, dest, src):
        return self.word(0xA000 | (4 if dest == 8 else dest) << 5 | src)

    def irq(self, mod, idx=None):
        if idx is None:
            idx, mod = mod, 0
        return self.word(0xC000 | mod & 0x60 | idx)

    def set(self, dest, data):
        return self.word(0xE000 | dest << 5 | data)


def asm_pio(**kw):
    def dec(f):
        e = _Emit(**kw)
        gl = f.__globals__
        old = dict(gl)
        gl.clear()
        try:
            gl.update(_PIO_FUNCS)
            gl["invert"] = lambda s: s | 0x08
            gl["reverse"] = lambda s: s | 0x10
            for name in ("wrap_target", "wrap", "label", "word", "nop", "jmp", "wait", "in_", "out", "push", "pull",
                         "mov", "irq", "set"):  # fmt: skip
                gl[name] = getattr(e, name)
            e.start(0)
            f()
            e.start(1)
            f()
        finally:
            gl.clear()
            gl.update(old)
        return Program(e)

    return dec


class Program:
    def __init__(self, e):
        self.words = list(e.words)
        self.wrap_target = e.wrap_target_at
        self.wrap = e.wrap_at
        self.ss = e.ss
        self.ssbits = e.ssbits
        self.opt = e.opt
        self.cfg = e.cfg


# -- PIO state machine (cycle level) ----------------------------------------------------------
class Sm:
    # Executes a Program one PIO cycle at a time.  pins: dict gpio -> level, shared with the
    # device model; in_base/out_base/set_base/sideset_base as StateMachine takes them.
    def __init__(self, prog, pins, in_base=None, out_base=None, set_base=None, sideset_base=None, on_pins=None):
        self.p = prog
        self.pins = pins
        self.in_base = in_base
        self.out_base = out_base
        self.set_base = set_base
        self.ss_base = sideset_base
        self.on_pins = on_pins  # called after each cycle's pin changes
        c = prog.cfg
        self.pull_thresh = c["pull_thresh"] & 0x1F or 32
        self.push_thresh = c["push_thresh"] & 0x1F or 32
        self.out_left = c["out_shiftdir"] == PIO.SHIFT_LEFT
        self.in_left = c["in_shiftdir"] == PIO.SHIFT_LEFT
        self.pc = 0
        self.x = self.y = 0
        self.osr = 0
        self.osr_n = 32  # nothing left to shift out
        self.isr = 0
        self.isr_n = 0
        self.tx = []
        self.rx = []
        self.rx_depth = 8 if c["fifo_join"] == PIO.JOIN_RX else 4
        self.delay = 0
        self.cycle = 0
        self.pushes = []  # (cycle, value)
        self.wraps = []  # cycles after which the program wrapped
        self.stalls = 0
        ss = c["sideset_init"]
        if ss is not None:
            for k, lv in enumerate(ss if isinstance(ss, tuple) else (ss,)):
                pins[sideset_base + k] = 1 if lv in (PIO.OUT_HIGH, PIO.IN_HIGH) else 0
        if c["out_init"] is not None and out_base is not None:
            for k, lv in enumerate(c["out_init"] if isinstance(c["out_init"], tuple) else (c["out_init"],)):
                pins[out_base + k] = 1 if lv in (PIO.OUT_HIGH, PIO.IN_HIGH) else 0

    def _advance(self):
        p = self.p
        if self.pc == p.wrap:
            self.pc = p.wrap_target
            return True
        self.pc = (self.pc + 1) % 32
        return False

    def step(self):
        self.cycle += 1
        if self.delay:
            self.delay -= 1
            return
        p = self.p
        w = p.words[self.pc]
        hi = (w >> 8) & 0x1F
        db = 5 - p.ssbits
        delay = hi & ((1 << db) - 1)
        if p.ss:
            if not p.opt or hi & 0x10:
                v = (hi >> db) & ((1 << p.ss) - 1)
                for k in range(p.ss):
                    self.pins[self.ss_base + k] = (v >> k) & 1
        op = w >> 13
        jumped = False
        stalled = False
        if op == 0:  # JMP
            cond = (w >> 5) & 7
            go = (
                cond == 0
                or cond == 1
                and self.x == 0
                or cond == 2
                and self.x != 0
                or cond == 3
                and self.y == 0
                or cond == 4
                and self.y != 0
                or cond == 5
                and self.x != self.y
                or cond == 7
                and self.osr_n < self.pull_thresh
            )
            if cond == 6:
                raise NotImplementedError("jmp pin")
            if cond == 2:
                self.x = (self.x - 1) & 0xFFFFFFFF
            if cond == 4:
                self.y = (self.y - 1) & 0xFFFFFFFF
            if go:
                self.pc = w & 0x1F
                jumped = True
        elif op == 2:  # IN
            src = (w >> 5) & 7
            n = w & 0x1F or 32
            if src == 0:
                d = 0
                for k in range(n):
                    d |= self.pins.get(self.in_base + k, 0) << k
            elif src == 1:
                d = self.x
            elif src == 2:
                d = self.y
            elif src == 3:
                d = 0
            elif src == 6:
                d = self.isr
            else:
                d = self.osr
            d &= (1 << n) - 1
            if self.in_left:
                self.isr = ((self.isr << n) | d) & 0xFFFFFFFF
            else:
                self.isr = ((self.isr >> n) | (d << (32 - n))) & 0xFFFFFFFF
            self.isr_n = min(32, self.isr_n + n)
        elif op == 3:  # OUT
            dest = (w >> 5) & 7
            n = w & 0x1F or 32
            if self.out_left:
                d = self.osr >> (32 - n)
                self.osr = (self.osr << n) & 0xFFFFFFFF
            else:
                d = self.osr & ((1 << n) - 1)
                self.osr >>= n
            self.osr_n = min(32, self.osr_n + n)
            if dest == 0:
                for k in range(n):
                    self.pins[self.out_base + k] = (d >> k) & 1
            elif dest == 1:
                self.x = d
            elif dest == 2:
                self.y = d
            elif dest != 3:
                raise NotImplementedError("out dest %d" % dest)
        elif op == 4:  # PUSH / PULL
            cond = w & 0x40
            blk = w & 0x20
            if w & 0x80:  # PULL
                if not (cond and self.osr_n < self.pull_thresh):
                    if self.tx:
                        self.osr = self.tx.pop(0)
                        self.osr_n = 0
                    elif blk:
                        stalled = True
                    else:
                        self.osr = self.x
                        self.osr_n = 0
            elif not (cond and self.isr_n < self.push_thresh):
                if len(self.rx) < self.rx_depth:
                    self.rx.append(self.isr)
                    self.pushes.append((self.cycle, self.isr))
                    self.isr = 0
                    self.isr_n = 0
                elif blk:
                    stalled = True
                    self.stalls += 1
                else:
                    self.isr = 0
                    self.isr_n = 0
        elif op == 5:  # MOV
            dest = (w >> 5) & 7
            mop = (w >> 3) & 3
            src = w & 7
            d = (0, self.x, self.y, 0, 0, 0, self.isr, self.osr)[src]
            if src == 0:
                raise NotImplementedError("mov from pins")
            if mop == 1:
                d = ~d & 0xFFFFFFFF
            elif mop == 2:
                d = int("{:032b}".format(d)[::-1], 2)
            if dest == 1:
                self.x = d
            elif dest == 2:
                self.y = d
            elif dest == 6:
                self.isr = d
                self.isr_n = 0
            elif dest == 7:
                self.osr = d
                self.osr_n = 0
            else:
                raise NotImplementedError("mov dest %d" % dest)
        elif op == 7:  # SET
            dest = (w >> 5) & 7
            d = w & 0x1F
            if dest == 1:
                self.x = d
            elif dest == 2:
                self.y = d
            elif dest == 0:
                for k in range(5):
                    self.pins[self.set_base + k] = (d >> k) & 1
            else:
                raise NotImplementedError("set dest %d" % dest)
        else:
            raise NotImplementedError("opcode %d" % op)
        if self.on_pins is not None:
            self.on_pins(self.cycle)
        if stalled:
            return
        if not jumped and self._advance():
            self.wraps.append(self.cycle + delay)  # the cycle before the wrap target runs
        self.delay = delay


class Mcp3208:
    # The ADC on four pins (datasheet DS21298 section 5): start bit, SGL/DIFF, D2 D1 D0 on
    # rising SCK; the sample ends on the falling edge of the clock after D0, which also
    # drives the null bit; B11..B0 follow on falling edges.  Checks tCSH (500 ns), the clock
    # high/low times and the clock rate (`fmax`), and that CS falls before a conversion.
    def __init__(self, pins, cs, sck, mosi, miso, source, ns_per_cycle, fmax=1350000):
        self.pins = pins
        self.cs, self.sck, self.mosi, self.miso = cs, sck, mosi, miso
        self.source = source  # source(channel, t_ns) -> 12-bit
        self.ns = ns_per_cycle
        self.fmax = fmax
        self.prev = (1, 0)
        self.state = "idle"
        self.bits = []
        self.ch = None
        self.value = 0
        self.out = 0
        self.t_cs_up = -(10**9)
        self.t_edge = 0
        self.errors = []
        self.conversions = []  # (channel, sample time ns)
        pins[miso] = 0

    def __call__(self, cycle):
        t = cycle * self.ns
        cs = self.pins.get(self.cs, 1)
        sck = self.pins.get(self.sck, 0)
        pcs, psck = self.prev
        self.prev = (cs, sck)
        if cs != pcs:
            if cs:
                self.t_cs_up = t
                self.state = "idle"
            else:
                if t - self.t_cs_up < 500:
                    self.errors.append("tCSH %d ns < 500 ns" % (t - self.t_cs_up))
                self.state = "start"
                self.bits = []
        if cs or sck == psck:
            return
        half = t - self.t_edge
        self.t_edge = t
        if half < 1e9 / self.fmax / 2 - 1:
            self.errors.append("SCK half period %d ns: above %d Hz" % (half, self.fmax))
        if sck:  # rising edge: the device samples DIN
            d = self.pins.get(self.mosi, 0)
            if self.state == "start":
                if d:
                    self.state = "cfg"
            elif self.state == "cfg":
                self.bits.append(d)
                if len(self.bits) == 4:
                    if not self.bits[0]:
                        self.errors.append("differential mode requested")
                    self.ch = self.bits[1] << 2 | self.bits[2] << 1 | self.bits[3]
                    self.state = "sample"
            elif self.state == "sample":
                self.state = "hold"
        elif self.state == "hold":  # falling edge ending the sample: null bit
            self.value = self.source(self.ch, t) & 0xFFF
            self.conversions.append((self.ch, t))
            self.pins[self.miso] = 0
            self.out = 11
            self.state = "data"
        elif self.state == "data":
            if self.out >= 0:
                self.pins[self.miso] = (self.value >> self.out) & 1
                self.out -= 1
            else:
                self.pins[self.miso] = 0


# -- the chip ---------------------------------------------------------------------------------
class RP2040:
    def __init__(self, hz=48000000 * 256, t0_us=(1 << 30) - 150000, clk_sys=125000000):
        self.hz = hz  # world time units per second
        self.t = 0
        self.t0_us = t0_us
        self.us = t0_us & _MASK30  # ticks_us now
        self.clk_sys = clk_sys
        self.time = FakeTime(self, t0_us)
        self.sram = Sram()
        self.uctypes = FakeUctypes(self.sram)
        self.chan = [Channel(self, k) for k in range(12)]
        self.claimed = []
        self.handlers = {}
        self.intr = 0
        self.inte0 = 0
        self.masked = False
        self.irqs = 0
        self.spurious = 0
        self.transfers = 0
        self.wild = 0  # DMA writes outside every known buffer (heap corruption on a board)
        self.wild_at = []  # the first few (address, size)
        self.adc = Adc(self)
        self.sms = {}
        self.clkdiv = {}
        self.fdebug = [0, 0]
        self.starve = False  # the DMA gets no bus time (provokes FIFO overflows)
        self.lock_irq = False  # run IRQ handlers under micropython.heap_lock()
        self.source = lambda inp, t_us: 0
        self.machine = _Machine(self)
        self.rp2 = _Rp2(self)

    def now_us(self):
        return self.t * 1000000 // self.hz

    def set_t(self, t):
        self.t = t
        self.us = (self.t0_us + t * 1000000 // self.hz) & _MASK30

    def install(self):
        saved = {k: sys.modules.get(k) for k in ("machine", "rp2", "uctypes", "time")}
        sys.modules["machine"] = self.machine
        sys.modules["rp2"] = self.rp2
        sys.modules["uctypes"] = self.uctypes
        sys.modules["time"] = self.time

        def undo():
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v

        return undo

    # -- bus --------------------------------------------------------------------------------
    def bus_read(self, addr, size):
        if addr == _ADC + 0x0C:
            return self.adc.pop()
        for k in range(2):
            base = _PIO[k] + 0x20
            if base <= addr < base + 16:
                sm = self.sms.get(4 * k + (addr - base) // 4)
                return sm.pop() if sm is not None else 0
        obj, off, isz = self.sram.find(addr, size)
        if obj is None:
            raise OSError("DMA read from unknown address 0x%08x" % addr)
        return _load(obj, off, isz, size)

    def bus_write(self, addr, size, v):
        if _DMA <= addr < _DMA + 0x1000:
            self.mem_write(addr, v)
            return
        obj, off, isz = self.sram.find(addr, size)
        if obj is None:
            self.wild += 1
            if len(self.wild_at) < 8:
                self.wild_at.append((addr, size))
            return
        _store(obj, off, isz, size, v)

    def mem_write(self, addr, v):
        if _DMA <= addr < _DMA + 0x300:
            ch = self.chan[(addr - _DMA) >> 6]
            off = (addr - _DMA) & 0x3F
            if off in (0x00, 0x14, 0x28):
                ch.read = v
            elif off in (0x04, 0x18, 0x34):
                ch.write = v
            elif off in (0x08, 0x1C, 0x24, 0x38):
                ch.reload = v
            elif off in (0x0C, 0x10, 0x20, 0x30):
                ch.ctrl = v
            if off in (0x0C, 0x1C, 0x2C, 0x3C):
                if off == 0x2C:
                    ch.write = v
                if off == 0x3C:
                    ch.read = v
                ch.trigger()
        elif addr == _DMA + 0x400:
            self.intr &= ~v
        elif addr == _DMA + 0x404:
            self.inte0 = v
        elif addr == _DMA + 0x40C:
            self.intr &= ~v
        elif addr == _DMA + 0x444:
            self.abort(v)
        elif _ADC <= addr < _ADC + 0x24:
            self.adc.write(addr - _ADC, v)
        else:
            for k in range(2):
                if _PIO[k] <= addr < _PIO[k] + 0x200:
                    off = addr - _PIO[k]
                    if off == 0x08:
                        self.fdebug[k] &= ~v
                    elif 0xC8 <= off < 0xC8 + 4 * 0x18 and (off - 0xC8) % 0x18 == 0:
                        self.clkdiv[4 * k + (off - 0xC8) // 0x18] = v
                    return

    def mem_read(self, addr):
        if _DMA <= addr < _DMA + 0x300:
            ch = self.chan[(addr - _DMA) >> 6]
            off = (addr - _DMA) & 0x3F
            return {0x00: ch.read, 0x04: ch.write, 0x08: ch.count, 0x0C: ch.ctrl | (1 << 24 if ch.busy else 0)}.get(
                off, 0
            )
        if addr == _DMA + 0x400:
            return self.intr
        if addr == _DMA + 0x404:
            return self.inte0
        if addr == _DMA + 0x40C:
            return self.intr & self.inte0
        if addr == _DMA + 0x444:
            return 0  # aborts complete at once here
        if _ADC <= addr < _ADC + 0x24:
            return self.adc.read(addr - _ADC)
        for k in range(2):
            if _PIO[k] <= addr < _PIO[k] + 0x200:
                off = addr - _PIO[k]
                if off == 0x08:
                    return self.fdebug[k]
                return 0
        return 0

    def abort(self, mask):
        for k in range(12):
            if mask & (1 << k):
                c = self.chan[k]
                if c.busy:
                    self.intr |= 1 << k  # RP2040-E13: a spurious completion interrupt
                    self.spurious += 1
                c.busy = False
                c.count = 0
        self.irq_check()

    # -- DMA engine ---------------------------------------------------------------------------
    def dma_run(self, c):
        n = 0
        while c.busy and c.treq == 0x3F:
            c.transfer()
            n += 1
            if n > 100000:
                raise RuntimeError("unpaced DMA runaway")

    def dreq(self, treq):
        # A peripheral asks for one transfer: the channel paced by it takes it (-> True).
        if self.starve:
            return False
        for c in self.chan:
            if c.busy and c.treq == treq:
                c.transfer()
                return True
        return False

    def irq_check(self):
        if self.masked:
            return
        pend = self.intr & self.inte0
        while pend:
            for k in range(12):
                if pend & (1 << k):
                    h = self.handlers.get(k)
                    if h is not None and h[0] is not None:
                        self.intr &= ~(1 << k)  # dma_channel_acknowledge_irq0, then the handler
                        self.irqs += 1
                        if self.lock_irq:
                            import micropython

                            micropython.heap_lock()
                            try:
                                h[0](h[1])
                            finally:
                                micropython.heap_unlock()
                        else:
                            h[0](h[1])
            pend = self.intr & self.inte0 & ~pend

    # -- time -----------------------------------------------------------------------------------
    def run_us(self, us):
        self.run_to(self.t + us * self.hz // 1000000)

    def run_to(self, end):
        # Every conversion and PIO push up to `end` (world units), in time order.
        adc = self.adc
        while True:
            nxt = None
            sm_due = None
            if adc.next_t is not None:
                nxt = adc.next_t
            for sm in self.sms.values():
                tt = sm.next_push()
                if tt is not None and (nxt is None or tt < nxt):
                    nxt = tt
                    sm_due = sm
            if nxt is None or nxt > end:
                self.set_t(end)
                return
            self.set_t(nxt)
            if sm_due is not None:
                sm_due.fire()
            else:
                adc.convert()
                adc.next_t = nxt + adc.period()
                while adc.fifo and adc.fcs & 8 and self.dreq(36):
                    pass  # DREQ stays asserted while the FIFO holds results

    def flash_erase_us(self, us):
        # A LittleFS erase on rp2: interrupts off (rp2_flash.c), the DMA keeps running.
        self.masked = True
        try:
            self.run_us(us)
        finally:
            self.masked = False
        self.irq_check()


class _Mem32:
    def __init__(self, chip):
        self._chip = chip

    def __getitem__(self, addr):
        return self._chip.mem_read(addr)

    def __setitem__(self, addr, v):
        self._chip.mem_write(addr, v)


class _Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 8
    IRQ_FALLING = 4

    def __init__(self, n, mode=-1, pull=-1, value=None):
        self.n = n
        self.v = 0 if value is None else value

    def __call__(self, v=None):
        if v is None:
            return self.v
        self.v = v

    value = __call__


class _ADCPin:
    def __init__(self, pin, atten=None):
        self.pin = pin


class _Machine:
    def __init__(self, chip):
        self._chip = chip
        self.mem32 = _Mem32(chip)
        self.Pin = _Pin
        self.ADC = _ADCPin

    def freq(self):
        return self._chip.clk_sys


class _StateMachine:
    # rp2.StateMachine: the program runs on the cycle emulator until its push schedule is
    # periodic (two whole sets), then the schedule repeats at transfer level.
    def __init__(self, chip, smid, prog, freq=-1, sideset_base=None, out_base=None, in_base=None, set_base=None):
        self.chip = chip
        self.id = smid
        self.prog = prog
        self.bases = (sideset_base, out_base, in_base, set_base)
        self.tx = []
        self.rx = []
        self.on = False
        self.sched = None
        chip.sms[smid] = self

    def put(self, v):
        self.tx.append(v & 0xFFFFFFFF)

    def get(self):
        return self.rx.pop(0)

    def rx_fifo(self):
        return len(self.rx)

    def pop(self):
        if not self.rx:
            return 0
        return self.rx.pop(0)

    def _learn(self):
        chip = self.chip
        ss, out, inp, st = (b.n if b is not None else None for b in self.bases)
        pins = {}
        self.div256 = chip.clkdiv.get(self.id, 1 << 16) >> 8  # INT.FRAC as written in CLKDIV
        ns = self.div256 * 1e9 / 256 / chip.clk_sys
        box = {}

        def src(ch, t_ns):
            box.setdefault("ch", []).append((ch, t_ns))
            return 0

        dev = Mcp3208(pins, ss, ss + 1, out, inp, src, ns)
        sm = Sm(self.prog, pins, in_base=inp, out_base=out, set_base=st, sideset_base=ss, on_pins=dev)
        sm.tx = list(self.tx)
        self.tx = []
        while len(sm.wraps) < 3:
            sm.step()
            if sm.rx:
                del sm.rx[:]  # an endless drain while learning
            if sm.cycle > 200000:
                raise RuntimeError("PIO program never wrapped")
        wraps = sm.wraps
        period = wraps[2] - wraps[1]
        if wraps[1] - wraps[0] != period:
            raise RuntimeError("PIO set period not constant")
        pushes = [c - wraps[0] for c, v in sm.pushes if wraps[0] <= c < wraps[1]]
        chans = [ch for ch, t in box["ch"]]
        nconv = len(pushes)
        self.errors = dev.errors
        self.period_cycles = period
        self.offsets = pushes
        self.channels = chans[-nconv:] if nconv else []
        self.sample_offsets = [int(t / ns + 0.5) - wraps[1] for ch, t in box["ch"][-nconv:]] if nconv else []
        self.first = wraps[0] - period  # the first set starts here (the period is constant)
        first_set = [c - self.first for c, v in sm.pushes if c < wraps[0]]
        if first_set != pushes:
            raise RuntimeError("PIO first set differs from the steady state: %r vs %r" % (first_set, pushes))
        self.k = 0  # pushes made

    def active(self, v=None):
        if v:
            if not self.on:
                self._learn()
                self.on = True
                self.t_start = self.chip.t
                self.stall_shift = 0
        elif v is not None:
            self.on = False
        return self.on

    def _cycle_t(self, cycles):
        # world units of `cycles` PIO cycles (world unit = 1/256 system clock)
        return cycles * self.div256

    def next_push(self):
        if not self.on or not self.offsets:
            return None
        n = len(self.offsets)
        s, m = divmod(self.k, n)
        c = self.first + s * self.period_cycles + self.offsets[m]
        return self.t_start + self._cycle_t(c) + self.stall_shift

    def fire(self):
        chip = self.chip
        if len(self.rx) >= 4:  # blocking push: the state machine waits for room
            chip.fdebug[self.id >> 2] |= 1 << (self.id & 3)
            self.stalled_at = chip.t
            self.stall_shift += self._cycle_t(1)
            return
        n = len(self.offsets)
        s, m = divmod(self.k, n)
        ch = self.channels[m]
        t_sample = self.t_start + self._cycle_t(self.first + s * self.period_cycles + self.sample_offsets[m])
        v = chip.source(ch, t_sample * 1000000 // chip.hz) & 0xFFF
        self.rx.append(v)
        self.k += 1
        chip.dreq(self.treq())

    def treq(self):
        return (4 if self.id < 4 else 12) + (self.id & 3)


class _Rp2:
    PIO = PIO

    def __init__(self, chip):
        self._chip = chip
        self.asm_pio = asm_pio

    def DMA(self):  # noqa: N802  (rp2.DMA is a class on the board)
        return FakeDMA(self._chip)

    def StateMachine(self, smid, prog, **kw):  # noqa: N802
        return _StateMachine(self._chip, smid, prog, **kw)
