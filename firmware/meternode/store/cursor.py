# The upload cursor: the highest sequence number the upstream acknowledged, persisted in a
# small file written atomically (temp file + rename, atomic on LittleFS and POSIX).  It only
# ever moves forward.  If the file is lost or corrupt the cursor restarts at 0: records are
# sent again and the consumer drops the duplicates by sequence number — never a lost record.
# The same class keeps the command counters (link/commands.py, policy/small.py): values are
# stored in full width (u64), so a counter above 2**32 is never truncated on flash.
#
# File: value u64 | crc32 of the value (12 bytes); an older 8-byte file (u32 | crc32) is read.
import binascii
import os
import struct


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
