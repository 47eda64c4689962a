# The upload cursor: the highest sequence number the upstream acknowledged, persisted in a
# small file written atomically (temp file + rename, atomic on LittleFS and POSIX).  It only
# ever moves forward.  If the file is lost or corrupt the cursor restarts at 0: records are
# sent again and the consumer drops the duplicates by sequence number — never a lost record.
import binascii
import os
import struct

_FMT = "<II"


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
                b = f.read(8)
            seq, crc = struct.unpack(_FMT, b)
            if binascii.crc32(b[:4]) == crc:
                self.acked = self.saved = seq
        except (OSError, ValueError):
            pass

    def advance(self, seq):
        # Called when the upstream acknowledged every record up to and including `seq`.
        if seq <= self.acked:
            return
        self.acked = seq
        self._pending += 1
        if self._pending >= self.every:
            self.flush()

    def flush(self):
        if self.acked == self.saved:
            return
        b = struct.pack("<I", self.acked)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b + struct.pack("<I", binascii.crc32(b)))
        os.rename(tmp, self.path)
        self.saved = self.acked
        self._pending = 0
        self.writes += 1
