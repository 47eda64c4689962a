# What store-and-forward does once, at start: open the record log (checks, meta, the scan of
# every segment and the recovery after a power cut: log.py says what it guarantees), read the
# newest good register checkpoint (checkpoint.py) and restore the registers, check
# config.store and open the uplink service's store and wiring (link/service.py; the MQTT
# link's and outbox's own state and the config.mqtt checks: link/linkinit.py).  Loaded for
# the call and forgotten when it returns (meternode.run, docs/memory.md): a running node does
# not hold this code.  Each function is a method kept out of its class, `self` the resident
# object it fills (a RecordLog, CheckpointStore, Checkpointer, Registers, UplinkService); the
# classes keep the methods a running node uses.
import binascii
import json
import os
import struct

from micropython import const

# (log.py is imported inside the functions that need it: restoring a checkpoint, at Node(),
# does not load the record log before the uplink does)
_TRAILER = const(4)  # log.py's record layout
_META = const("meta")
_CK_MAGIC = const(b"UMCK")  # checkpoint.py's slot layout
_CK_VERSION = const(1)
_CK_HDR = const("<4sBBHII")
_CK_HDR_LEN = const(16)
_UJ_PER_MILLI_H = const(3600000)  # registers.py: 1 mWh in uJ
_LO_BITS = const(30)
_LO_MASK = const(0x3FFFFFFF)


# -- the record log ----------------------------------------------------------------------------
def open_log(self, path, segment_bytes, max_bytes, floor):
    # RecordLog.__init__: checks, state, meta, scan; the next seq (see log.py's top).
    from meternode.store.log import HEADER, HW_MARGIN, MAX_PAYLOAD, LogError

    if not 0 <= floor <= 0xFFFFFFFF:
        raise LogError("the upload cursor %d is not a record seq (u32)" % floor)
    if segment_bytes < 1024:
        raise LogError("store.segment_bytes = %d is below 1024" % segment_bytes)
    if max_bytes < 2 * segment_bytes:
        raise LogError("store.max_bytes = %d must be at least 2 * segment_bytes (%d)" % (max_bytes, 2 * segment_bytes))
    self.path = path
    self.segment_bytes = segment_bytes
    self.max_bytes = max_bytes
    self._hdr = bytearray(HEADER)
    self._hdrv = memoryview(self._hdr)
    self._tail = bytearray(_TRAILER)
    self._buf = bytearray(MAX_PAYLOAD)
    self._bufv = memoryview(self._buf)
    self.segs = []  # [num, first_seq, last_seq, count, size], oldest first
    self.dropped = 0  # records deleted by retention, all time (persisted)
    self._through = 0  # newest seq retention has dropped (persisted with `dropped`)
    self.corrupt = 0  # corrupt records skipped on the last open
    self.torn = 0  # torn tails skipped on the last open
    self.last_seq = 0
    self.last_ts = 0  # timestamp of the newest record (0: none)
    self.on_drop = None  # callback(n_records, first_seq, last_seq) after a segment is dropped
    self.delivered = None  # callable -> seq every publisher has delivered (None: no publisher)
    self.unwritten = 0  # appends refused for want of space, all time
    self.meta_bad = False  # the meta was there but unreadable on open
    self._hw = 0  # high-water mark: no seq up to it is ever issued again (persisted)
    self._f = None
    self._broken = False  # the segment being written holds a failed write past its end
    try:
        os.stat(path)
    except OSError:
        os.mkdir(path)
    # meta: dropped u32 | through u32 | hw u32 | crc32 of what precedes it (older metas of 12
    # bytes without `hw` and 8 bytes without `through` are read too).  `through` is the
    # newest seq retention has dropped: it is written *before* the segment is removed, so a
    # power cut between the two leaves a segment that the scan removes (the drop completes,
    # counted once).  `hw` is the high-water mark (log.py's top).
    try:
        with open(path + "/" + _META, "rb") as f:
            b = f.read(16)
    except OSError:
        b = None  # no meta yet
    if b is not None:
        self.meta_bad = True
        if len(b) in (8, 12, 16):
            v = struct.unpack("<%dI" % (len(b) // 4), b)
            if binascii.crc32(b[: len(b) - 4]) == v[-1]:
                self.meta_bad = False
                self.dropped = v[0]
                if len(b) > 8:
                    self._through = v[1]
                if len(b) > 12:
                    self._hw = v[2]
    _scan_all(self)
    if self.last_seq < floor:
        self.last_seq = floor
    if self.last_seq < self._hw:
        self.last_seq = self._hw
    if self.meta_bad:
        self.last_seq += HW_MARGIN
        self._hw = self.last_seq
        try:
            self._save_meta()  # good again: the next open adds no second margin
        except OSError:
            pass


def _scan_all(self):
    # Every segment, oldest first: its records (a corrupt one skipped by resynchronising on
    # the next magic byte whose CRC checks), the newest seq and timestamp, a torn tail.
    from meternode.store.log import HEADER, _seg_name

    nums = []
    for name in os.listdir(self.path):
        if name.endswith(".seg") and len(name) == 12:
            try:
                nums.append(int(name[:8]))
            except ValueError:
                pass
    nums.sort()
    # the table in one allocation, before the segments' own entries: grown an append at a
    # time it needed ever larger free runs in a heap those entries cut up (a log of 260
    # segments did not open in 128 KB on the 64-bit port, for want of 4 KB in one piece)
    segs = self.segs = [None] * len(nums)
    j = 0
    torn_tail = False
    for k, num in enumerate(nums):
        name = _seg_name(self.path, num)
        size = os.stat(name)[6]
        first = last = count = 0
        pos = end = 0  # end: where the last good record ends
        with open(name, "rb") as f:
            while pos < size:
                r = self._read_at(f, pos, size)
                if r is None:
                    nxt = self._resync(f, pos + 1, size)
                    if nxt < 0:
                        break  # nothing valid after pos: a torn tail (or garbage to the end)
                    self.corrupt += 1
                    pos = nxt
                    continue
                kind, seq, ts, n = r
                if not count:
                    first = seq
                last = seq
                if seq >= self.last_seq:
                    self.last_ts = ts
                count += 1
                pos += HEADER + n + _TRAILER
                end = pos
        if count and last <= self._through and k < len(nums) - 1:
            # a drop the power cut interrupted after the meta was saved: complete it
            try:
                os.remove(name)
                continue
            except OSError:
                pass
        segs[j] = [num, first, last, count, size]
        j += 1
        if count:
            self.last_seq = max(self.last_seq, last)
        torn_tail = k == len(nums) - 1 and end != size
    del segs[j:]
    if torn_tail:
        self.torn += 1
    if not self.segs or torn_tail:
        self._new_segment()
    else:
        self._f = open(_seg_name(self.path, self.segs[-1][0]), "ab")


# -- checkpoints -------------------------------------------------------------------------------
def open_ckpt(self, directory):
    # CheckpointStore.__init__
    self.dir = directory
    try:
        os.mkdir(directory)
    except OSError:
        pass  # exists
    self._paths = (directory + "/ckpt0", directory + "/ckpt1")
    self.seq = 0
    self._slot = 0  # slot of the newest good checkpoint
    self.writes = 0
    best = _newest(self)
    if best is not None:
        self.seq, self._slot, _ = best


def checkpointer(self, store, meter, delta_mwh, period_s, min_interval_s, extra):
    # Checkpointer.__init__
    from meternode.store.checkpoint import CheckpointError

    if delta_mwh < 1:
        raise CheckpointError("checkpoint.delta_mwh must be at least 1, not %r" % (delta_mwh,))
    if min_interval_s < 0 or period_s < min_interval_s:
        raise CheckpointError("checkpoint.period_s must be >= min_interval_s >= 0")
    self.store = store
    self.meter = meter
    self.delta = delta_mwh
    self.period_ms = int(period_s * 1000)
    self.min_ms = int(min_interval_s * 1000)
    self.extra = extra  # optional callable -> dict saved beside the registers
    self._last_ms = None
    _mark(self)
    self.rejected = None


def _mark(self):
    # Checkpointer: the registers' low words now, the mark due() measures energy moved from
    # (checkpoint.py's save() sets it after each write)
    r = self.meter.registers
    self._last_imp = r.low_import()
    self._last_exp = r.low_export()


def _newest(self):
    # CheckpointStore: (seq, slot, payload) of the newest good slot, or None; a slot that is
    # missing, torn or corrupt does not count.
    best = None
    for k in (0, 1):
        try:
            with open(self._paths[k], "rb") as f:
                data = f.read()
        except OSError:
            continue
        if len(data) < _CK_HDR_LEN + 4:
            continue
        magic, ver, _, _, seq, n = struct.unpack_from(_CK_HDR, data, 0)
        if magic != _CK_MAGIC or ver != _CK_VERSION or len(data) != _CK_HDR_LEN + n + 4:
            continue
        crc = struct.unpack_from("<I", data, _CK_HDR_LEN + n)[0]
        if binascii.crc32(memoryview(data)[4 : _CK_HDR_LEN + n]) & 0xFFFFFFFF != crc:
            continue
        try:
            p = json.loads(data[_CK_HDR_LEN : _CK_HDR_LEN + n])
        except ValueError:
            continue
        if best is None or seq > best[0]:
            best = (seq, k, p)
    return best


def restore(self):
    # Checkpointer.restore: the newest good checkpoint back into the meter; its payload or
    # None.  A checkpoint for another register layout (the board changed) is set aside, not
    # restored: `rejected` says why, and the next save writes a fresh one.
    best = _newest(self.store)
    if best is None:
        return None
    p = best[2]
    try:
        registers(self.meter.registers, p["registers"])
    except (KeyError, TypeError, ValueError) as e:
        self.rejected = "checkpoint %d not restored: %s" % (self.store.seq, e)
        return None
    _mark(self)
    return p


def registers(self, st):
    # Registers.restore: the registers exactly as Registers.state() saved them, checked first.
    size = self.size
    if st.get("n") != self.n or st.get("tariffs") != self.tariffs:
        raise ValueError(
            "register state is for %r elements / %r tariffs, not %d / %d"
            % (st.get("n"), st.get("tariffs"), self.n, self.tariffs)
        )
    for key in ("r", "rem"):
        v = st.get(key)
        if not isinstance(v, list) or len(v) != size:
            raise ValueError("register state %s has %d values, expected %d" % (key, len(v or ()), size))
        for x in v:
            if not isinstance(x, int) or x < 0:
                raise ValueError("register state %s holds %r, not a count" % (key, x))
    for x in st["rem"]:
        if x >= _UJ_PER_MILLI_H:
            raise ValueError("register state rem holds %r, not below one mWh" % x)
    # maximum demand: [mW, end, month, last month's three] (registers.py); a checkpoint
    # of a firmware before billing months holds [mW, end]
    md = st.get("md", [0, 0])
    if not isinstance(md, list) or len(md) not in (2, 6):
        raise ValueError("register state md is %r, not 2 or 6 counts" % (md,))
    for x in md:
        if not isinstance(x, int) or x < 0:
            raise ValueError("register state md holds %r, not a count" % (x,))
    if len(md) == 2:
        from meternode.ticks import month

        md = md + [month(md[1] - 1) if md[1] else 0, 0, 0, 0]
    self.lo = [x & _LO_MASK for x in st["r"]]
    self.hi = [x >> _LO_BITS for x in st["r"]]
    self.rem = list(st["rem"])
    self.md = list(md)
    self.tariff = int(st.get("tariff", 0))


# -- the uplink service (link/service.py; the MQTT link's and outbox's state: link/linkinit.py)
def service(self, node, reason):
    # UplinkService.__init__
    self.node = node
    cfg = node.config
    self.clock = node.hal.clock
    self._unwritten_said = 0  # log.unwritten already reported by a log_full event
    self._results = []  # [accepted?, JSON text], oldest first, at most RESULTS_MAX
    self.results_dropped = 0
    path = open_store(self, cfg)
    self.commands = None
    if cfg.get("cmd_key"):
        # The node keeps the commands' state and checks (commands.py); what carries out an
        # authentic one (actions.py) is loaded for it and forgotten after.  Loaded once now
        # too, while the heap is emptiest: its names are interned for good then, not later
        # in a fragmented heap (docs/memory.md).
        from meternode import forget
        from meternode.link.commands import Commands

        __import__("meternode.link.actions")
        forget("meternode.link.actions")
        self.commands = Commands(
            node.id,
            cfg["cmd_key"],
            path + ".ctr",
            self.clock,
            None,  # the actions: made per command (actions.py) for this service
            self.event,
            cfg.get("time_max_step_s", 86400),
        )
        self.commands.service = self
    started(self, cfg, path, reason)


def profile(self, log, period_s, mains, on_record, regs):
    # ProfileRecorder.__init__ (profile.py)
    if not 60 <= period_s <= 86400 or 86400 % period_s:
        raise ValueError("config.profile_s = %r must divide a day and be 60..86400" % (period_s,))
    self.log = log
    self.regs = regs  # the meter's Registers: the MONTHLY freeze's maximum demand (None: none)
    self.period_s = period_s
    self.mains = mains  # element names counted in the totals (None: all)
    self.on_record = on_record  # callback(seq) after each append (wakes the outbox)
    self._end = None  # epoch s: the end of the interval in progress (None: no snapshot yet)
    self._per = period_s  # its period (a new period_s applies from the next interval)
    self._ts = None  # the last snapshot's time, its registers in e_imp_mwh, e_exp_mwh
    self._day = None
    self._month = None
    self.n = 0  # snapshots in this interval
    # V, I and P of the interval: sum, min and max each, in one array of the port's floats
    # (three lists held nine boxed floats)
    from meternode.metrology import floats

    self.acc = a = floats(9)
    for k in (1, 4, 7):
        a[k] = 1e30
        a[k + 1] = -1e30
    self.e_imp_mwh = 0
    self.e_exp_mwh = 0
    self.water_l = 0
    self.gas_l = 0


def commands(self, node_id, key, path, clock, actions, event, time_max_step_s):
    # Commands.__init__ (link/commands.py)
    from meternode.link.commands import Hmac
    from meternode.store.log import Cursor

    if isinstance(key, str):
        try:
            key = binascii.unhexlify(key)
        except Exception:
            raise ValueError("not hex")
    if len(key) < 16:
        raise ValueError("config.cmd_key must be at least 16 bytes (32 hex digits)")
    self.node_id = node_id
    self._mac = Hmac(key)
    self._ctr = Cursor(path, every=1)  # the counter file
    self.clock = clock
    self.actions = actions
    self.event = event
    self.rollback = {}  # key -> value before the last accepted `set`
    self.accepted = 0
    self.rejected = 0
    self.failed = 0
    self.reboot_pending = False
    self.time_max_step_s = time_max_step_s
    # rejection events (link/commands.py): the Limiter is made at the first refusal, so a node
    # that is sent only authentic commands never loads link/limiter.py
    self.limiter = None


# config.store's defaults (`umeter provision` sets a board's free flash against them; private
# consts: folded into the code, no name kept on a node)
_SEGMENT_BYTES = const(16384)
_MAX_BYTES = const(262144)


def open_store(self, cfg):
    # UplinkService.__init__, first: config.store checked, the upload cursor and the record
    # log opened (a bad store config is a ConfigError), the log's hooks; -> the store's path.
    from meternode.config import ConfigError, need
    from meternode.store.log import Cursor, RecordLog

    s = need(cfg, "store", dict, "config", default={})
    need(s, "path", str, "config.store", default="store")
    need(s, "segment_bytes", int, "config.store", default=_SEGMENT_BYTES, lo=1024, hi=1 << 20)
    need(s, "max_bytes", int, "config.store", default=_MAX_BYTES, lo=2048, hi=1 << 30)
    need(cfg, "profile_s", int, "config", default=900, lo=60, hi=86400)
    # the largest step a `time` command may make once the clock is set (commands.py)
    need(cfg, "time_max_step_s", int, "config", default=86400, lo=1, hi=10 * 366 * 86400)
    if "cmd_key" in cfg:
        k = need(cfg, "cmd_key", str, "config")
        if len(k) < 32 or len(k) % 2:
            raise ConfigError("config.cmd_key must be at least 32 hex digits, an even number")
    path = s.get("path", "store")
    self.cursor = Cursor(path + ".cursor")
    try:
        seg, top = s.get("segment_bytes", _SEGMENT_BYTES), s.get("max_bytes", _MAX_BYTES)
        self.log = RecordLog(path, seg, top, self.cursor.acked)
    except ValueError as e:
        raise ConfigError(str(e))
    self.log.on_drop = self._dropped
    self.log.delivered = self._delivered  # flash full: only delivered segments make room
    m = cfg.get("mqtt") or {}
    self.outbox = None
    if m:
        # only nodes with MQTT load the outbox and the MQTT link (with its client): a
        # metering-only or LoRa-only node saves ~16 KB of heap (docs/memory.md)
        from meternode.link.outbox import Outbox

        self.outbox = Outbox(
            self.log,
            self.cursor,
            self.node.id,
            m.get("prefix", "umeter"),
            m.get("backlog_rate", 20.0),
            m.get("window", 8),
            m.get("ack_timeout_ms", 10000),
        )
        self.outbox.on_unreadable = self._unreadable
    from meternode.store.profile import ProfileRecorder

    node = self.node
    regs = getattr(getattr(node, "meter", None), "registers", None)  # the monthly maximum demand
    self.profile = ProfileRecorder(self.log, cfg.get("profile_s", 900), getattr(node, "mains", None), self._wake, regs)
    return path


def started(self, cfg, path, reason):
    # UplinkService.__init__, last (after the commands): the MQTT link, LoRaWAN (loraservice.py,
    # only LoRa nodes load it), the relay's events; then what the log's opening found and why
    # this boot, as events.
    from meternode.store import records

    m = cfg.get("mqtt")
    self.link = None
    if m:
        from meternode.link.uplink import MqttLink

        self.link = MqttLink(self.node.id, m, self.outbox, self._on_command if self.commands else None, self._describe)
    self.lora = None
    # fport -> callback(bytes): LoRaWAN downlinks (policy frames); None without LoRaWAN (no
    # dict, and no handler the policy service would register in it, held for nothing)
    self.lora_ports = None
    if cfg.get("lora"):
        self.lora_ports = {}
        from meternode.link import loraservice

        self.lora = loraservice.make(self, cfg["lora"], path)
    log = self.log
    if log.corrupt or log.torn:
        self.event(records.EV_LOG_CORRUPT, log.corrupt, "torn %d" % log.torn)
    if reason is None:
        # a service made without the node's reason: why this boot, as a word
        # (hal.halinit.reset_cause; "start" on the unix port)
        from meternode import run

        reason = run("meternode.hal.halinit", "reset_cause")
    if reason == "power_on" and log.last_ts:
        # The outage began after the newest record we hold (an estimate no later than it
        # by more than one record period) and ends now.
        now = int(self.clock.time())
        log.append(records.EVENT, log.last_ts, records.event(records.EV_POWER_DOWN, 0, "estimated"))
        self.event(records.EV_POWER_UP, now - log.last_ts if now > log.last_ts else 0, "")
    self.event(records.EV_REBOOT, 0, reason)
    if getattr(self.node.hal, "relay", None) is not None:
        from meternode.hal.relay import relay_control  # only nodes with a relay load it

        # every switch the policy (or an override's end) makes is a relay event
        relay_control(self.node).on_change = self._relay_changed
