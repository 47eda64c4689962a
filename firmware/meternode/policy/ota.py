# Firmware OTA of the Python modules: two slot directories, an atomic boot pointer, a trial
# boot that must pass a health check before a deadline, automatic rollback on the next boot,
# and a boot counter that catches crash loops.  For ESP32 OTA partition layouts the
# full-image path is image.py (esp32.Partition).
#
# Layout under <root>/fw:  a/ and b/ (slot directories: files by manifest name, plus
# manifest.json), boot.json (the pointer, replaced atomically via boot.tmp):
#   {"active": "a"|"b"|null, "pending": null|"a"|"b", "tries": n, "boots": n,
#    "versions": {"a": n, "b": n}, "last": "what happened at the last switch"}
# active = the confirmed slot (null: the factory modules in <root>), pending = a slot on
# trial.  Each boot: select() counts the boot; a pending slot gets `max_tries` boots to be
# confirmed, after that the next boot goes back to `active` (rollback).  A confirmed slot
# that boots `boot_limit` times without ever reaching healthy (a crash loop) falls back to
# the other slot if that one holds a build.  Call select() before importing the firmware
# (see boot_path()).
#
# Staging never fills the flash: begin() checks that the files (rounded to the filesystem's
# blocks) plus `reserve` bytes plus what `reserve_fn()` asks for (the record log's room to
# grow) are free, else refuses with "no space"; a write that fails anyway, a file that does
# not match, or a transfer given up removes the partial slot at once, and a slot left half
# written by a power cut is removed at the next start (resume()).  The pointer forgets the
# build a slot held before its files are touched.
import json
import os

from meternode import run
from meternode.policy.apply import mkdirs


class Rejected(Exception):
    # A bundle or an OTA message refused: "<category>: <detail>" (bundle.py lists them).
    # Here, not in bundle.py, which a running node loads only while a bundle is checked.
    pass


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        p = path + "/" + n
        if os.stat(p)[0] & 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class Slots:
    def __init__(self, root, max_tries=1, boot_limit=5):
        self.root = root
        self.dir = root + "/fw"
        self.max_tries = max_tries
        self.boot_limit = boot_limit
        mkdirs(self.dir)
        self.running = None  # slot this boot runs ("a"/"b"/None = factory)
        self.trial = False  # running a pending slot that is not confirmed yet
        self.rolled_back = None  # reason, if select() rolled back
        self._staging = None  # (slot, manifest) between begin() and finish()
        self.reserve = 16384  # bytes kept free beside a staged build (config ota.reserve_bytes)
        self.reserve_fn = None  # callable -> more bytes to keep free (the record log's room)

    def state(self):
        try:
            with open(self.dir + "/boot.json") as f:
                st = json.load(f)
            if isinstance(st, dict) and "versions" in st:
                return st
        except (OSError, ValueError):
            pass
        return {"active": None, "pending": None, "tries": 0, "boots": 0, "versions": {}, "last": ""}

    def _save(self, st):
        tmp = self.dir + "/boot.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(st))
        os.rename(tmp, self.dir + "/boot.json")

    def slot_dir(self, slot):
        return self.dir + "/" + slot

    def version(self):
        # The anti-rollback floor: the highest version ever staged (a build that failed its
        # health check cannot be pushed again under the same version), 0 = factory only.
        st = self.state()
        v = st["versions"].get(st["active"], 0) if st["active"] else 0
        return max(v, st.get("seen", 0))

    # -- boot ---------------------------------------------------------------------------------
    def select(self):
        # Counts this boot and returns the slot directory to import from (None = factory).
        st = self.state()
        st["boots"] = st.get("boots", 0) + 1
        self.rolled_back = None
        self.trial = False
        if st["pending"]:
            if st["tries"] >= self.max_tries:
                v = st["versions"].get(st["pending"], 0)
                self.rolled_back = "version %d not confirmed after %d boot(s): rolled back" % (v, st["tries"])
                st["last"] = self.rolled_back
                st["versions"].pop(st["pending"], None)
                st["pending"] = None
                st["tries"] = 0
                st["boots"] = 1
            else:
                st["tries"] += 1
                self.trial = True
        elif st["boots"] > self.boot_limit and st["active"]:
            other = "b" if st["active"] == "a" else "a"
            if other in st["versions"]:
                self.rolled_back = "crash loop: %d boots without a healthy run, back to version %d" % (
                    st["boots"] - 1,
                    st["versions"][other],
                )
                st["last"] = self.rolled_back
                st["active"] = other
                st["boots"] = 1
        self._save(st)
        self.running = st["pending"] if self.trial else st["active"]
        return self.slot_dir(self.running) if self.running else None

    def resume(self):
        # What select() decided at this boot, read back from the pointer (for code loaded
        # after the boot-time select(), which may be a fresh copy of this module).
        st = self.state()
        self.trial = bool(st["pending"]) and st["tries"] > 0
        self.running = st["pending"] if self.trial else st["active"]
        self.clean(st)
        return self.running

    def clean(self, st=None):
        # Removes slot directories the pointer does not name (a staging cut short): their
        # space belongs to the record log.  -> slots removed.
        st = st or self.state()
        gone = []
        for slot in ("a", "b"):
            if slot not in st["versions"] and slot not in (st["active"], st["pending"], self.running):
                d = self.slot_dir(slot)
                try:
                    os.stat(d)
                except OSError:
                    continue
                _rmtree(d)
                gone.append(slot)
        return gone

    def healthy(self):
        # The health check passed: confirm a trial build, reset the crash-loop counter.
        st = self.state()
        if self.trial and st["pending"] == self.running:
            st["active"] = st["pending"]
            st["pending"] = None
            st["tries"] = 0
            st["last"] = "version %d confirmed" % st["versions"].get(st["active"], 0)
            self.trial = False
        st["boots"] = 0
        self._save(st)
        return st["last"]

    # -- staging a new build ------------------------------------------------------------------
    def begin(self, man):
        # `man` is a verified firmware manifest.  Stages into the slot not in use.  An int:
        # the size of a manifest that streams in first (write() without a name, to
        # <slot>/manifest~), checked, then begin(manifest) keeps its slot.
        st = self.state()
        if self._staging and isinstance(self._staging[1], int):
            slot = self._staging[0]
        else:
            busy = (st["active"], st["pending"], self.running)
            slot = "b" if "a" in busy and "b" not in busy else "a"
            if slot in busy:
                raise Rejected("busy: both slots in use (a trial boot is pending)")
            if slot in st["versions"]:
                del st["versions"][slot]  # its build is about to go: never fall back into it
                self._save(st)
            _rmtree(self.slot_dir(slot))
        d = self.slot_dir(slot)
        try:
            f = os.statvfs(self.dir)
            free, bs = f[0] * f[4], f[0]  # bytes free and block size of the filesystem
        except (OSError, AttributeError):
            free = None  # unknown: not checked
        if free is not None and not isinstance(man, int):
            need = run("meternode.policy.otaspace", "build_bytes", man["files"], bs)
            keep = self.reserve + (self.reserve_fn() if self.reserve_fn is not None else 0)
            if need + keep > free:
                raise Rejected(
                    "no space: the build needs %d bytes and %d more stay free for the record log, %d are free"
                    % (need, keep, free)
                )
        mkdirs(d)
        self._staging = (slot, man)
        return slot

    def abort(self):
        # Gives up the staging in progress and removes what it wrote.
        if self._staging is not None:
            _rmtree(self.slot_dir(self._staging[0]))
            self._staging = None

    def write(self, name, data, offset=0):
        # -> True when it completes a streamed manifest (begin(size))
        if self._staging is None:
            raise Rejected("malformed: no firmware staging in progress")
        slot, man = self._staging
        path = self.slot_dir(slot) + "/"
        if isinstance(man, int):  # the manifest streams in: its chunks come without a name
            if name is not None:
                raise Rejected("malformed: %s before the whole manifest" % name)
            name = "manifest"
            size = man
            path += "manifest~"
        else:
            if name is None:
                raise KeyError  # (the agent: malformed chunk)
            fi = man["files"].get(name)
            if fi is None:
                raise Rejected("bad file: %s is not in the manifest" % name)
            size = fi["size"]
            path += name
        if offset + len(data) > size:
            raise Rejected("bad file: %s is longer than its %d bytes" % (name, size))
        k = path.rfind("/")
        if offset:
            try:
                have = os.stat(path)[6]
            except OSError:
                have = 0
            if have != offset:
                raise Rejected("bad file: %s chunk at %d, have %d bytes" % (name, offset, have))
        try:
            mkdirs(path[:k])
            with open(path, "ab" if offset else "wb") as f:
                f.write(data)
        except OSError as e:
            self.abort()
            raise Rejected("no space: writing %s failed (%s); the partial build was removed" % (name, e))
        return isinstance(man, int) and offset + len(data) == size

    def finish(self, mtext):
        # Checks every file on disk against the manifest, then points the next boot at the slot.
        if self._staging is None:
            raise Rejected("malformed: no firmware staging in progress")
        slot, man = self._staging
        d = self.slot_dir(slot)
        import hashlib
        from binascii import hexlify

        buf = bytearray(512)
        mv = memoryview(buf)
        for name, fi in man["files"].items():
            h = hashlib.sha256()
            n = 0
            try:
                with open(d + "/" + name, "rb") as f:  # read in 512-byte pieces
                    k = f.readinto(buf)
                    while k:
                        h.update(mv[:k])
                        n += k
                        k = f.readinto(buf)
            except OSError:
                self.abort()
                raise Rejected("bad file: %s was not received" % name)
            if n != fi["size"] or hexlify(h.digest()).decode() != fi["sha256"]:
                self.abort()
                raise Rejected("bad file: %s does not match its hash" % name)
        try:
            if mtext is None:  # streamed: on flash already
                os.rename(d + "/manifest~", d + "/manifest.json")
            else:
                with open(d + "/manifest.json", "w") as f:
                    f.write(mtext)
        except OSError as e:
            self.abort()
            raise Rejected("no space: the manifest could not be written (%s)" % e)
        self._staging = None
        st = self.state()
        st["pending"] = slot
        st["tries"] = 0
        st["versions"][slot] = man["version"]
        st["seen"] = max(st.get("seen", 0), man["version"])
        st["campaign"] = man.get("campaign")
        st["last"] = "version %d staged in slot %s" % (man["version"], slot)
        self._save(st)
        return slot


def boot_path(root="."):
    # For main.py: select the slot, put it first on sys.path and drop the factory copy of
    # the firmware package from sys.modules, so `from meternode import node` loads the slot.
    import sys

    slots = Slots(root)
    d = slots.select()
    if d:
        # a slot holds files by their build names: `umeter build` puts the package under lib/
        sys.path.insert(0, d + "/lib")
        sys.path.insert(0, d)
        for name in list(sys.modules):
            if name == "meternode" or name.startswith("meternode."):
                del sys.modules[name]
    return slots
