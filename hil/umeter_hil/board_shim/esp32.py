# `esp32` stand-in for a virtual board: Partition with two OTA app slots and the ESP-IDF
# rollback state machine, and an NVS namespace store.  Slots and the OTA data live in the
# board's state directory (outside its flash), so they survive resets like real partitions.
#
# OTA state (ota.json): {"boot": 0|1, "running": 0|1, "state": ["valid"|"new"|"pending"|"aborted", x2]}
#   set_boot() on slot k      -> boot = k, state[k] = "new"
#   power-on/hard reset boots `boot`: "new" -> "pending" (first trial boot);
#     still "pending" at the next reset -> "aborted" and boot falls back to the other slot
#   mark_app_valid_cancel_rollback() -> state[running] = "valid"
import json

import vbstate

_BLOCK = 4096
_SLOT_BLOCKS = 64  # 256 KiB per app slot: enough for a firmware image in tests
_OTA_BASE = 0x10000
_st = {"boot": 0, "running": 0, "state": ["valid", "valid"]}
_slots = []
_ota = None


def _save():
    _ota.seek(0)
    raw = json.dumps(_st)
    _ota.write(raw + " " * (256 - len(raw)))
    _ota.flush()


def boot(reset):
    # Called by vboot.py at every start; only a power-on or hard reset boots a new slot.
    global _ota
    for k in range(2):
        _slots.append(vbstate.open_state("ota_%d.bin" % k, "r+b", _SLOT_BLOCKS * _BLOCK))
    _ota = vbstate.open_state("ota.json", "r+", 0)
    _ota.seek(0)
    raw = _ota.read().strip()
    if raw:
        _st.update(json.loads(raw))
    if reset != "soft":
        b = _st["boot"]
        s = _st["state"]
        if s[b] == "new":
            s[b] = "pending"
        elif s[b] == "pending":
            s[b] = "aborted"
            b = 1 - b
            _st["boot"] = b
        _st["running"] = b
    _save()


def ota_state():
    return dict(_st)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=_BLOCK):
        if id == Partition.RUNNING:
            k = _st["running"]
        elif id == Partition.BOOT:
            k = _st["boot"]
        elif id in ("ota_0", "ota_1"):
            k = int(id[-1])
        else:
            raise ValueError("partition not found")
        self._k = k
        self._bs = block_size

    def info(self):
        return (
            0,
            0x10 + self._k,
            _OTA_BASE + self._k * _SLOT_BLOCKS * _BLOCK,
            _SLOT_BLOCKS * _BLOCK,
            "ota_%d" % self._k,
            False,
        )

    def get_next_update(self):
        return Partition("ota_%d" % (1 - _st["running"]))

    def readblocks(self, block, buf, offset=0):
        f = _slots[self._k]
        f.seek(block * self._bs + offset)
        f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        f = _slots[self._k]
        if offset is None:
            f.seek(block * self._bs)
            f.write(b"\xff" * self._bs)
            offset = 0
        f.seek(block * self._bs + offset)
        f.write(buf)
        f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return _SLOT_BLOCKS * _BLOCK // self._bs
        if op == 5:
            return self._bs
        if op == 6:
            f = _slots[self._k]
            f.seek(arg * self._bs)
            f.write(b"\xff" * self._bs)
            f.flush()
            return 0
        return None

    def set_boot(self):
        _st["boot"] = self._k
        _st["state"][self._k] = "new"
        _save()

    @classmethod
    def find(cls, type=TYPE_APP, subtype=0xFF, label=None):
        if type != cls.TYPE_APP:
            return []
        ks = [0, 1] if label is None else [int(label[-1])] if label in ("ota_0", "ota_1") else []
        return [Partition("ota_%d" % k) for k in ks]

    @staticmethod
    def mark_app_valid_cancel_rollback():
        _st["state"][_st["running"]] = "valid"
        _save()

    def __repr__(self):
        return "<Partition type=0, subtype=%d, address=%d, size=%d, label=ota_%d, encrypted=0>" % (
            0x10 + self._k,
            self.info()[2],
            self.info()[3],
            self._k,
        )


class NVS:
    def __init__(self, namespace):
        self._ns = namespace
        self._f = vbstate.files.get("nvs.json")
        self._d = {}

    def set_i32(self, key, value):
        self._d[key] = value

    def get_i32(self, key):
        if key not in self._d:
            raise OSError(-0x1102)
        return self._d[key]

    def set_blob(self, key, value):
        self._d[key] = bytes(value)

    def get_blob(self, key, buf):
        v = self._d[key]
        buf[: len(v)] = v
        return len(v)

    def erase_key(self, key):
        del self._d[key]

    def commit(self):
        pass
