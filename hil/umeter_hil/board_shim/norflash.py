# A board's NOR flash for the MicroPython unix port: a block device with the geometry of the
# file system a board's MicroPython mounts at boot, for a real LittleFS (vfs.VfsLfs2) to run
# on, and a count of what it wears.
#
#   esp32    the "vfs" partition of a 4-MiB board (ports/esp32/partitions-4MiBplus.csv:
#            the flash after the first 2 MiB), VfsLfs2(bdev) with its defaults (readsize,
#            progsize and lookahead 32: ports/esp32/modules/inisetup.py)
#   pico_w   rp2.Flash() of a Pico W (MICROPY_HW_FLASH_STORAGE_BYTES 848 KiB),
#            VfsLfs2(bdev, progsize=256) (ports/rp2/modules/_boot.py)
#   pico     the same on a Pico (1408 KiB)
#
# Both ports' block devices have 4096-byte blocks (the flash's erase sector) and the extended
# interface LittleFS uses: readblocks(block, buf, offset), writeblocks(block, buf, offset)
# (a program) and ioctl(6, block) (an erase).  This one keeps NOR flash's rules:
#   - an erase sets every byte of its block to 0xFF;
#   - a program may only go to erased bytes (LittleFS never programs a byte twice between
#     erases; a program over a programmed byte raises OSError(EIO) and prints a FLASH line
#     naming the block, so a soak fails by name rather than by a corrupt file later);
#   - every program and erase is written through to the image file (the board's state), so a
#     process killed at any instant leaves the flash as a power cut leaves it.
# Wear is kept beside the image (`<image>.wear`: per block, erases then programmed bytes, u32
# little-endian), also written through, so it counts across boots and power cuts.
import struct

BLOCK = 4096
GEOMETRY = {
    # name: (bytes, progsize)
    "esp32": (2 * 1024 * 1024, 32),
    "pico_w": (848 * 1024, 256),
    "pico": (1408 * 1024, 256),
}
_EIO = 5


def _open(path):
    # the file at `path` to read and write, made empty where it is not there
    try:
        return open(path, "r+b")
    except OSError:
        open(path, "wb").close()
        return open(path, "r+b")


def _end(f):
    f.seek(0, 2)
    return f.tell()


class NorFlash:
    def __init__(self, path, size, files=None):
        # The image at `path` and its wear beside it (`<path>.wear`), or the two `files`
        # already open to read and write (a virtual board opens them before its flash is
        # mounted at /, where host paths end).
        if size % BLOCK:
            raise ValueError("flash size %d is not a whole number of %d-byte blocks" % (size, BLOCK))
        self.n = size // BLOCK
        self.f, self.w = files or (_open(path), _open(path + ".wear"))
        have = _end(self.f)
        ff = b"\xff" * BLOCK
        while have < size:  # a new flash is erased
            self.f.write(ff)
            have += BLOCK
        have = _end(self.w)
        if have < 8 * self.n:
            self.w.write(bytes(8 * self.n - have))
        self.w.seek(0)
        self.wear = bytearray(8 * self.n)
        self.w.readinto(self.wear)
        self._ff = ff
        self._chk = bytearray(BLOCK)

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * BLOCK + offset)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # the simple interface: erase, then program the whole block
            self.ioctl(6, block)
            offset = 0
        n = len(buf)
        if block >= self.n or offset + n > BLOCK:
            raise OSError(_EIO)
        a = block * BLOCK + offset
        chk = memoryview(self._chk)[:n]
        self.f.seek(a)
        self.f.readinto(chk)
        if chk != self._ff[:n]:
            print("FLASH program over programmed bytes in block %d at %d (%d bytes)" % (block, offset, n))
            raise OSError(_EIO)
        self.f.seek(a)
        self.f.write(buf)
        self._count(block, 4, n)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.n
        if op == 5:  # block size
            return BLOCK
        if op == 6:  # erase
            if not 0 <= arg < self.n:
                return -22
            self.f.seek(arg * BLOCK)
            self.f.write(self._ff)
            self._count(arg, 0, 1)
            return 0
        return None

    def _count(self, block, field, k):
        i = 8 * block + field
        v = struct.unpack_from("<I", self.wear, i)[0] + k
        struct.pack_into("<I", self.wear, i, v & 0xFFFFFFFF)
        self.w.seek(i)
        self.w.write(memoryview(self.wear)[i : i + 4])

    def reset_wear(self):
        # what was worn so far (formatting, the files a provisioning writes) is not counted
        for i in range(len(self.wear)):
            self.wear[i] = 0
        self.w.seek(0)
        self.w.write(self.wear)


def wear(b):
    # The wear record (NorFlash.wear, or the bytes of `<image>.wear`; CPython too) ->
    # ([erases], [bytes programmed]), a number per block
    n = len(b) // 8
    return [struct.unpack_from("<I", b, 8 * k)[0] for k in range(n)], [
        struct.unpack_from("<I", b, 8 * k + 4)[0] for k in range(n)
    ]


def mount(image, board, at="/flash", files=None):
    # The board's file system on the flash image at `image` (or in the two open `files`, as
    # NorFlash takes them), formatted where it holds none, as the board's _boot.py does,
    # mounted at `at`; -> (the device, True when it was formatted now).
    import vfs  # (MicroPython's: the geometry above is read by the host too)

    size, prog = GEOMETRY[board]
    dev = NorFlash(image, size, files)
    made = False
    try:
        fs = vfs.VfsLfs2(dev, progsize=prog)
    except OSError:
        vfs.VfsLfs2.mkfs(dev, progsize=prog)
        fs = vfs.VfsLfs2(dev, progsize=prog)
        made = True
    vfs.mount(fs, at)
    return dev, made
