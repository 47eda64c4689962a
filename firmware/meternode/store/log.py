# Append-only, segmented record log on the board's filesystem (LittleFS on boards, a
# directory on the unix port).
#
# Record on disk (little-endian):
#   magic 0xA5 | kind u8 | length u16 | seq u32 | ts u32 | payload[length] | crc32 u32
# The CRC covers kind..payload.  Records never span segments; a segment file is
# `<path>/NNNNNNNN.seg` and grows to `segment_bytes`, then a new one starts.  When the log
# holds more than `max_bytes`, the oldest segment is deleted and its records are counted
# (`dropped`, persisted, and reported by an EV_LOG_DROPPED event).  That retention is the
# only thing that deletes records nobody has received: when a write fails (flash full), only
# segments every publisher already delivered (`delivered()`) are deleted to make room; if
# there are none the append raises LogError, the record is counted in `unwritten` and the
# service says so with an EV_LOG_FULL event once it can write again.
#
# On open (store/storeinit.py) every segment is scanned: a torn last record (power cut mid-append) is skipped and
# appends continue in a fresh segment (no truncate on MicroPython); a corrupt record is
# skipped by resynchronising on the next magic byte whose CRC checks, so nothing after it
# is lost.  Sequence numbers continue from the highest of: the newest record seen, `floor`
# (the upload cursor) and the high-water mark in `meta`, which publishers raise with
# mark_sent() before a record leaves the node.  So a seq the upstream may have seen is never
# issued again, even when the newest records are corrupted or the cursor was saved lower; an
# unreadable meta moves the next seq on by HW_MARGIN.  The seqs skipped so are a gap the
# outbox fills with `missing` documents.
import binascii
import os
import struct

from micropython import const

from meternode import run
from meternode.store import records

_MAGIC = const(0xA5)
HEADER = const(12)
_TRAILER = const(4)
MAX_PAYLOAD = const(496)  # a record is at most 512 bytes on disk
_HDR = const("<BBHII")
_META = const("meta")
_HW_AHEAD = const(7)  # mark_sent() reserves up to this many more records (one meta write per window)
HW_MARGIN = const(256)  # seqs skipped when the meta (and so the high-water mark) is unreadable


class LogError(ValueError):
    pass


def _seg_name(path, num):
    return "%s/%08d.seg" % (path, num)


class RecordLog:
    def __init__(self, path, segment_bytes=16384, max_bytes=262144, floor=0):
        # Opening runs once (store/storeinit.py, loaded for it and forgotten after): the
        # checks, the state (attributes listed there), the meta, the scan of every segment
        # and the recovery after a power cut, the next seq.
        run("meternode.store.storeinit", "open_log", self, path, segment_bytes, max_bytes, floor)

    def _save_meta(self):
        # meta: dropped u32 | through u32 | hw u32 | crc32 of what precedes it (read at open:
        # storeinit.open_log says what each field is for)
        b = struct.pack("<III", self.dropped, self._through, self._hw)
        tmp = self.path + "/" + _META + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b + struct.pack("<I", binascii.crc32(b)))
        os.rename(tmp, self.path + "/" + _META)

    def _read_at(self, f, pos, size):
        # Tries the record at `pos`: returns (kind, seq, ts, length) or None when it does not
        # check.  Leaves the payload in self._buf.
        if size - pos < HEADER + _TRAILER:
            return None
        f.seek(pos)
        if f.readinto(self._hdr) != HEADER or self._hdr[0] != _MAGIC:
            return None
        magic, kind, n, seq, ts = struct.unpack(_HDR, self._hdr)
        if n > MAX_PAYLOAD or pos + HEADER + n + _TRAILER > size:
            return None
        pv = self._bufv[:n]
        if n and f.readinto(pv) != n:
            return None
        if f.readinto(self._tail) != _TRAILER:
            return None
        crc = binascii.crc32(pv, binascii.crc32(self._hdrv[1:]))
        if struct.unpack("<I", self._tail)[0] != crc:
            return None
        return kind, seq, ts, n

    def _resync(self, f, pos, size):
        # Next offset >= pos holding a record that checks, or -1.
        one = bytearray(1)
        while pos < size:
            f.seek(pos)
            if f.readinto(one) != 1:
                return -1
            if one[0] == _MAGIC and self._read_at(f, pos, size) is not None:
                return pos
            pos += 1
        return -1

    def _new_segment(self):
        if self._f is not None:
            self._f.close()
            self._f = None
        num = self.segs[-1][0] + 1 if self.segs else 1
        if self.segs and not self.segs[-1][4]:
            self.segs.pop()  # an empty segment (a failed start) is reused, not left behind
            num -= 1
        self.segs.append([num, 0, 0, 0, 0])
        self._f = open(_seg_name(self.path, num), "wb")
        self._broken = False

    # -- appending -----------------------------------------------------------------------
    def append(self, kind, ts, payload):
        # Appends one record and returns its sequence number.  The write is one call followed
        # by a flush (a sync on LittleFS), so a power cut leaves at most one torn record.
        n = len(payload)
        if n > MAX_PAYLOAD:
            raise LogError("record payload of %d bytes is over the %d-byte limit" % (n, MAX_PAYLOAD))
        if not 0 < kind < 256:
            raise LogError("record kind %d is outside 1..255" % kind)
        need = HEADER + n + _TRAILER
        seq = self.last_seq + 1
        struct.pack_into(_HDR, self._hdr, 0, _MAGIC, kind, n, seq, int(ts) & 0xFFFFFFFF)
        crc = binascii.crc32(payload, binascii.crc32(self._hdrv[1:]))
        struct.pack_into("<I", self._tail, 0, crc)
        rec = self._hdr + payload + self._tail
        try:
            seg = self._room(need)
            self._f.write(rec)
            self._f.flush()
        except OSError as e:
            # Flash full (or failing): whatever part was written stays past this segment's
            # known end and is never read; the next write starts a new segment.  Room is made
            # only from segments every publisher has delivered, never from unsent records.
            self._broken = True
            try:
                # the oldest segments whose records were all delivered go; none: no room
                d = self.delivered() if self.delivered is not None else self.last_seq
                k = 0
                while len(self.segs) > 1 and self.segs[0][2] <= d:
                    self._drop_oldest()
                    k += 1
                if not k:
                    raise e
                seg = self._room(need)
                self._f.write(rec)
                self._f.flush()
            except OSError as e2:
                self._broken = True
                self.unwritten += 1
                raise LogError("record log cannot write seq %d: %s (flash full?)" % (seq, e2))
        self.last_seq = seq
        self.last_ts = int(ts) & 0xFFFFFFFF
        if not seg[3]:
            seg[1] = seq
        seg[2] = seq
        seg[3] += 1
        seg[4] += need
        return seq

    def _room(self, need):
        # The segment the next record goes to: a new one when this one is full or holds a
        # failed write; retention runs when a segment is started.
        seg = self.segs[-1]
        if self._broken or self._f is None or (seg[4] and seg[4] + need > self.segment_bytes):
            self._new_segment()
            # retention: the oldest segments go until the log fits max_bytes (never this one)
            while len(self.segs) > 1 and self.bytes_used() > self.max_bytes - self.segment_bytes:
                self._drop_oldest()
        return self.segs[-1]

    def mark_sent(self, seq):
        # A publisher is about to send `seq`: raise the high-water mark first (persisted in
        # the meta, a few records ahead so that it is one write per window, never past the
        # newest record).  A failed write is retried with the next record.
        if seq <= self._hw:
            return
        hw = self._hw
        self._hw = seq + _HW_AHEAD if seq + _HW_AHEAD < self.last_seq else self.last_seq
        if self._hw < seq:
            self._hw = seq
        try:
            self._save_meta()
        except OSError:
            self._hw = hw

    def bytes_used(self):
        t = 0
        for s in self.segs:
            t += s[4]
        return t

    def _drop_oldest(self):
        if len(self.segs) < 2:
            return
        num, first, last, count, size = self.segs.pop(0)
        if count:
            # count first, then remove: a power cut in between is completed on open
            self.dropped += count
            if last > self._through:
                self._through = last
            try:
                self._save_meta()
            except OSError:
                pass  # counted in RAM; saved with the next drop
        try:
            os.remove(_seg_name(self.path, num))
        except OSError:
            pass
        if count and self.on_drop is not None:
            self.on_drop(count, first, last)

    def first_seq(self):
        for s in self.segs:
            if s[3]:
                return s[1]
        return self.last_seq + 1

    def stats(self):
        # -> the counters as a dict (link/stats.py: loaded for the call, forgotten after)
        return run("meternode.link.stats", "log", self)

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def reader(self):
        return LogReader(self)


class LogReader:
    # Sequential reader from a sequence number on; follows appends and survives the segment
    # under it being dropped (it jumps to the oldest record still held).
    def __init__(self, log):
        self.log = log
        self._f = None
        self._num = 0
        self._pos = 0
        self.kind = 0
        self.seq = 0
        self.ts = 0
        self.n = 0
        self.payload = log._bufv  # valid until the next call; length self.n
        self._want = 1

    def seek(self, seq):
        # Positions on the first record with sequence number >= seq.
        if self._f is not None:
            self._f.close()
            self._f = None
        self._want = seq
        segs = self.log.segs
        k = 0
        while k < len(segs) - 1 and (not segs[k][3] or segs[k][2] < seq):
            k += 1
        self._num = segs[k][0]
        self._pos = 0

    def next(self):
        # Reads the next record: returns its kind (fields in self.*) or 0 when none is there yet.
        log = self.log
        segs = log.segs
        if self._num < segs[0][0]:
            self.seek(self._want)
        while True:
            if self._f is None:
                try:
                    self._f = open(_seg_name(log.path, self._num), "rb")
                except OSError:
                    self.seek(self._want)
                    if self._f is None and self._num == segs[-1][0]:
                        return 0
                    continue
            size = 0  # bytes of this segment known to hold whole records (the log's own count)
            for g in segs:
                if g[0] == self._num:
                    size = g[4]
                    break
            r = log._read_at(self._f, self._pos, size) if self._pos < size else None
            if r is None and self._pos < size:
                nxt = log._resync(self._f, self._pos + 1, size)
                if nxt >= 0:
                    self._pos = nxt
                    continue
            if r is None:
                self._f.close()  # reopened next time: LittleFS handles may not see later appends
                self._f = None
                if self._num >= segs[-1][0]:
                    return 0
                for g in segs:  # the next segment the log holds
                    if g[0] > self._num:
                        self._num = g[0]
                        break
                self._pos = 0
                continue
            kind, seq, ts, n = r
            self._pos += HEADER + n + _TRAILER
            if seq < self._want:
                continue
            self.kind = kind
            self.seq = seq
            self.ts = ts
            self.n = n
            self._want = seq + 1
            return kind

    def record(self):
        # The current record as a JSON-ready dict (allocates; for the publisher and tests).
        return records.fields(self.kind, self.payload[: self.n])


# The upload cursor (Cursor): the highest sequence number the upstream acknowledged, kept in
# a small file written atomically (temp file + rename, atomic on LittleFS and POSIX).  It only
# ever moves forward.  If the file is lost or corrupt the cursor restarts at 0: records are
# sent again and the consumer drops the duplicates by sequence number — never a lost record.
# The same class keeps the command counters (link/commands.py, policy/small.py): values are
# stored in full width (u64), so a counter above 2**32 is never truncated on flash.  It lives
# here, not in a module of its own, because every node that keeps one keeps the log too (a
# module costs ~0.2 KB held beyond its code: docs/memory.md).
#
# File: value u64 | crc32 of the value (12 bytes); an older 8-byte file (u32 | crc32) is read.
class Cursor:
    def __init__(self, path, every=16):
        self.path = path
        self.every = every  # persist after this many advances (and always on flush())
        self.acked = 0
        self.saved = 0
        self.writes = 0
        self._pending = 0
        try:
            with open(path, "rb") as f:
                b = f.read(12)
        except OSError:
            return  # no cursor yet: from the start
        if len(b) == 12:
            lo, hi, crc = struct.unpack("<III", b)
            seq = lo | (hi << 32)
        elif len(b) == 8:
            lo, crc = struct.unpack("<II", b)
            seq = lo
        else:
            return  # torn or foreign: from the start (resend, never lose)
        if binascii.crc32(b[: len(b) - 4]) == crc:
            self.acked = self.saved = seq

    def advance(self, seq):
        # Called when the upstream acknowledged every record up to and including `seq`.
        if seq < 0 or seq >> 64:  # not a u64
            raise ValueError("cursor value %r is outside 0..2**64-1" % (seq,))
        if seq <= self.acked:
            return
        self.acked = seq
        self._pending += 1
        if self._pending >= self.every:
            self.flush()

    def flush(self):
        if self.acked == self.saved:
            return
        v = self.acked
        b = struct.pack("<II", v & 0xFFFFFFFF, v >> 32)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b + struct.pack("<I", binascii.crc32(b)))
        os.rename(tmp, self.path)
        self.saved = v
        self._pending = 0
        self.writes += 1
