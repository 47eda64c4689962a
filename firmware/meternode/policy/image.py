# The full-image OTA path on ESP32 OTA partition layouts, over esp32.Partition (or the
# virtual board's stand-in): the app image goes to Partition(RUNNING).get_next_update() block
# by block, is read back and hashed, then set_boot(); after the reset the health check calls
# mark_app_valid_cancel_rollback(), and the bootloader rolls back an image never marked valid.
# The partition class comes from the HAL (only hal/ imports esp32).
from meternode.policy.ota import Rejected


class ImageUpdate:
    # The full-image path as an OTA target beside Slots: a bundle whose build says
    # {"image": "app"} carries one file, the app image, written to the next OTA partition
    # with PartitionUpdate.  The bootloader does the trial boot and the rollback; the
    # pointer file only remembers what was staged (for anti-rollback and the boot report).
    def __init__(self, slots, partition_cls):
        self.slots = slots
        self.P = partition_cls
        self.trial = False
        self._pu = None
        self._man = None
        self._name = None
        self._n = 0

    def _running(self):
        return self.P(self.P.RUNNING).info()[4]

    def begin(self, man):
        files = man["files"]
        if len(files) != 1:
            raise Rejected("malformed: an app image bundle carries exactly one file, not %d" % len(files))
        self._name = list(files)[0]
        self._man = man
        self._n = 0
        self._pu = PartitionUpdate(self.P)
        self._pu.begin(files[self._name]["size"])
        return self._pu.part.info()[4]

    def write(self, name, data, offset=0):
        if self._pu is None:
            raise Rejected("malformed: no firmware staging in progress")
        if name != self._name:
            raise Rejected("bad file: %s is not in the manifest" % name)
        if offset != self._n:
            raise Rejected("bad file: %s chunk at %d, have %d bytes" % (name, offset, self._n))
        if self._n + len(data) > self._man["files"][name]["size"]:
            raise Rejected("bad file: %s is longer than its %d bytes" % (name, self._man["files"][name]["size"]))
        self._pu.write(data)
        self._n += len(data)

    def abort(self):
        # The partition is not a file: nothing to remove (the next begin() overwrites it).
        self._pu = None

    def finish(self, mtext):
        if self._pu is None:
            raise Rejected("malformed: no firmware staging in progress")
        man, name, pu = self._man, self._name, self._pu
        self._pu = None
        fi = man["files"][name]
        if self._n != fi["size"]:
            raise Rejected("bad file: %s was not received (%d of %d bytes)" % (name, self._n, fi["size"]))
        pu.finish(fi["size"], fi["sha256"])  # reads back, checks the hash, set_boot()
        label = pu.part.info()[4]
        st = self.slots.state()
        st["image"] = {"label": label, "version": man["version"]}
        st["seen"] = max(st.get("seen", 0), man["version"])
        st["campaign"] = man.get("campaign")
        st["last"] = "version %d staged in %s" % (man["version"], label)
        self.slots._save(st)
        return label

    def after_boot(self):
        # At start: running the staged image (a trial until healthy()), or the bootloader
        # rolled it back.  Returns "trial", "rolled back" or None.
        st = self.slots.state()
        im = st.get("image")
        if not im:
            return None
        if self._running() == im["label"]:
            self.trial = True
            return "trial"
        st["last"] = "version %d not confirmed: the bootloader rolled back to %s" % (im["version"], self._running())
        del st["image"]
        self.slots._save(st)
        return "rolled back"

    def healthy(self):
        PartitionUpdate(self.P).healthy()
        st = self.slots.state()
        im = st.get("image")
        if im and self._running() == im["label"]:
            st["image_version"] = im["version"]
            st["last"] = "version %d confirmed" % im["version"]
            del st["image"]
            self.slots._save(st)
        self.trial = False


class PartitionUpdate:
    # The full-image path on ESP32 OTA layouts, over esp32.Partition (or a stand-in).
    def __init__(self, partition_cls):
        self.P = partition_cls
        self.part = None
        self._bs = 4096
        self._n = 0
        self._buf = None
        self._fill = 0

    def begin(self, size):
        self.part = self.P(self.P.RUNNING).get_next_update()
        self._bs = self.part.ioctl(5, 0) or 4096
        blocks = self.part.ioctl(4, 0)
        if size > blocks * self._bs:
            raise Rejected("too big: image of %d bytes, slot holds %d" % (size, blocks * self._bs))
        self._n = 0
        self._buf = bytearray(self._bs)
        self._fill = 0

    def write(self, data):
        mv = memoryview(data)
        i = 0
        while i < len(data):
            k = min(len(data) - i, self._bs - self._fill)
            self._buf[self._fill : self._fill + k] = mv[i : i + k]
            self._fill += k
            i += k
            if self._fill == self._bs:
                self._flush()

    def _flush(self):
        if self._fill < self._bs:
            for j in range(self._fill, self._bs):
                self._buf[j] = 0xFF
        self.part.writeblocks(self._n // self._bs, self._buf)
        self._n += self._fill
        self._fill = 0

    def finish(self, size, sha256_hex):
        # Reads the image back, checks its hash, then sets it to boot next.
        import hashlib
        from binascii import hexlify

        if self._fill:
            self._flush()
        h = hashlib.sha256()
        buf = bytearray(self._bs)
        left = size
        blk = 0
        while left > 0:
            self.part.readblocks(blk, buf)
            k = min(left, self._bs)
            h.update(buf[:k] if k < self._bs else buf)
            left -= k
            blk += 1
        if hexlify(h.digest()).decode() != sha256_hex:
            raise Rejected("bad file: image read back does not match its hash")
        self.part.set_boot()

    def resume(self):
        # What select() decided at this boot, read back from the pointer (for code loaded
        # after the boot-time select(), which may be a fresh copy of this module).
        st = self.state()
        self.trial = bool(st["pending"]) and st["tries"] > 0
        self.running = st["pending"] if self.trial else st["active"]
        return self.running

    def healthy(self):
        # After the health check on the first boot of the new image.
        try:
            self.P.mark_app_valid_cancel_rollback()
        except OSError:
            pass  # rollback not enabled in this bootloader
