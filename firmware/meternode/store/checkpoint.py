# Power-fail-safe register checkpoints: two alternating slot files with a sequence number
# and a CRC.
#
# Slot file (`<dir>/ckpt0`, `<dir>/ckpt1`), little-endian:
#   magic b"UMCK" | version u8 | pad u8 u16 | seq u32 | length u32 | payload | crc32 u32
# The CRC covers version..payload; the payload is JSON (the meter's register state plus
# whatever the caller adds: pulse registers, the tariff).  A write always goes to the slot
# that does NOT hold the newest good checkpoint, so a power cut during a write can only
# spoil that slot: restore() (store/storeinit.py) reads both and takes the valid one with the higher sequence.
#
# When to write (Checkpointer.due):
#   - energy moved by at least `delta_mwh` since the last checkpoint (default 50 Wh: the
#     most a power cut can lose, like emon32's 200 Wh rule but tighter),
#   - or `period_s` passed with any change (default 3600 s),
#   - never more often than `min_interval_s` (default 60 s) except on brown-out,
#   - at once on a brown-out signal where the board has one (save(force=True)).
# Wear budget (docs/metrology.md): at most 1440 writes a day by the interval floor, about
# 24 + (daily kWh / 0.05) in practice (224 for 10 kWh a day); each write rewrites one
# small file, which LittleFS spreads over its free blocks.
#
# Time is ticks_ms, compared only through ticks.diff() (a checkpoint is due across a wrap
# like any other time); more than 6.2 days since the last one reads as negative: overdue.
# Energy moved is taken from the registers' 30-bit low words (wrapping difference), so the
# per-block check allocates nothing however large the registers grow.
import binascii
import json
import struct

from micropython import const

from meternode import run
from meternode.ticks import MASK, diff

_MAGIC = const(b"UMCK")
_VERSION = const(1)
_HDR = const("<4sBBHII")
_HDR_LEN = const(16)
# reading the slots back and restoring them run at start only: store/storeinit.py, loaded for
# the call and forgotten after (docs/memory.md)


class CheckpointError(ValueError):
    pass


class CheckpointStore:
    def __init__(self, directory):
        # The directory made, the newest good checkpoint's seq and slot read (storeinit.py:
        # self.dir, seq, writes and the slots' paths)
        run("meternode.store.storeinit", "open_ckpt", self, directory)

    def restore(self):
        # The newest good checkpoint's payload, or None when there is none.
        best = run("meternode.store.storeinit", "_newest", self)
        return None if best is None else best[2]

    def write(self, payload):
        body = json.dumps(payload).encode()
        seq = self.seq + 1
        slot = 1 - self._slot
        hdr = struct.pack(_HDR, _MAGIC, _VERSION, 0, 0, seq, len(body))
        crc = binascii.crc32(hdr[4:])
        crc = binascii.crc32(body, crc) & 0xFFFFFFFF
        with open(self._paths[slot], "wb") as f:
            f.write(hdr)
            f.write(body)
            f.write(struct.pack("<I", crc))
        self.seq = seq
        self._slot = slot
        self.writes += 1
        return seq


class Checkpointer:
    # Decides when the meter's registers go to the store, and restores them at start.
    def __init__(self, store, meter, delta_mwh=50000, period_s=3600, min_interval_s=60, extra=None):
        # The limits checked (CheckpointError) and the state set (storeinit.py: self.store,
        # meter, delta, period_ms, min_ms, extra, rejected and the mark)
        run("meternode.store.storeinit", "checkpointer", self, store, meter, delta_mwh, period_s, min_interval_s, extra)

    def restore(self):
        # Puts the newest good checkpoint back into the meter; returns its payload or None.
        # A checkpoint for another register layout (the board changed) is set aside, not
        # restored: `rejected` says why, and the next save writes a fresh one.
        return run("meternode.store.storeinit", "restore", self)

    def due(self, now_ms):
        if self._last_ms is None:
            self._last_ms = now_ms
            return False
        age = diff(now_ms, self._last_ms)
        if age < 0:  # more than 2**29 ms (6.2 days) ago: long overdue
            age = self.period_ms
        if age < self.min_ms:
            return False
        # active energy moved either way since the mark (mWh), from the wrapping low words
        r = self.meter.registers
        moved = ((r.low_import() - self._last_imp) & MASK) + ((r.low_export() - self._last_exp) & MASK)
        return moved >= self.delta or (age >= self.period_ms and moved > 0)

    def save(self, now_ms, force=False):
        # Writes when due (or forced: brown-out, shutdown); returns True when written.
        if not force and not self.due(now_ms):
            return False
        self.meter.flush()
        payload = {"registers": self.meter.registers.state()}
        if self.extra is not None:
            payload["extra"] = self.extra()
        self.store.write(payload)
        self._last_ms = now_ms
        r = self.meter.registers  # the mark due() measures energy moved from
        self._last_imp = r.low_import()
        self._last_exp = r.low_export()
        return True
