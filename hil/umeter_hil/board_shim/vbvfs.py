# `vfs` stand-in for a virtual board with a ROMFS partition: the unix port's vfs plus the
# rom_ioctl() a board's firmware has (MicroPython docs: library/vfs.rst, reference/romfs.rst),
# over one partition whose bytes live in the board's state directory (romfs.bin), so they
# survive resets like flash.  The relay gives the interpreter the partition's size on top of
# the board's heap: a board maps the partition from flash, here it is one bytearray, read at
# boot, that the heap figures leave out.
#
#   rom_ioctl(1)                   number of partitions: 1
#   rom_ioctl(2, 0)                the partition: a memoryview ("memory" style, as the unix and
#                                  qemu ports give), or a block device with the buffer protocol,
#                                  ioctl(4/5/6) and writeblocks(block, buf, offset) ("block"
#                                  style, as esp32.Partition and rp2.Flash are)
#   rom_ioctl(3, 0, n)             prepare (erase) the first n bytes; -> the write granularity
#   rom_ioctl(3, 0, offset, n)     prepare n bytes at offset (block-aligned)
#   rom_ioctl(4, 0, offset, buf)   write
#   rom_ioctl(5, 0)                end of a write sequence
#   rom_ioctl(6, 0)                the block size that the 4-argument prepare takes
#   anything else                  -EINVAL
import vbstate
import vfs as _vfs

for _n in dir(_vfs):
    if not _n.startswith("__"):
        globals()[_n] = getattr(_vfs, _n)

_BLOCK = 4096
_WRITE = 4  # bytes: smallest write (a flash word)
_EINVAL = -22
_part = None  # the partition's bytes
_file = None
_style = "memory"


class _Partition(bytearray):
    # The block-device view of the partition ("block" style); its buffer is the partition.
    def ioctl(self, op, arg):
        if op == 4:
            return len(self) // _BLOCK
        if op == 5:
            return _BLOCK
        if op == 6:
            _erase(arg * _BLOCK, _BLOCK)
            return 0
        return None

    def readblocks(self, block, buf, offset=0):
        a = block * _BLOCK + offset
        buf[:] = memoryview(self)[a : a + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            _erase(block * _BLOCK, _BLOCK)
            offset = 0
        _write(block * _BLOCK + offset, buf)


def init(size, style):
    # Called by vboot.py at every boot, before anything else takes heap: reads the partition
    # from the state directory into one allocation.
    global _part, _file, _style
    _style = style
    _file = vbstate.open_state("romfs.bin", "r+b", size)
    _part = _Partition(size)
    _file.seek(0)
    _file.readinto(_part)


def mount():
    # What a board's firmware does at boot: mount a valid image at /rom, /rom and /rom/lib on
    # sys.path.  Nothing happens for an erased or foreign partition.
    import sys

    try:
        _vfs.mount(_vfs.VfsRom(_part), "/rom")
    except OSError:
        return False
    sys.path.append("/rom")
    sys.path.append("/rom/lib")
    return True


def _erase(a, n):
    if a < 0 or a + n > len(_part) or a % _BLOCK:
        raise ValueError("ROMFS erase outside the partition or not block-aligned")
    ff = b"\xff" * _BLOCK
    for b in range(a, a + n, _BLOCK):
        _part[b : b + _BLOCK] = ff
    _file.seek(a)
    _file.write(memoryview(_part)[a : a + n])
    _file.flush()


def _write(a, buf):
    n = len(buf)
    if a < 0 or a + n > len(_part):
        raise ValueError("ROMFS write outside the partition")
    _part[a : a + n] = buf
    _file.seek(a)
    _file.write(buf)
    _file.flush()


def rom_ioctl(op, *args):
    if _part is None:
        return _EINVAL
    if op == 1:
        return 1
    if not args or args[0] != 0:
        return _EINVAL
    if op == 2:
        return _part if _style == "block" else memoryview(_part)
    if op == 3:
        if len(args) == 2:
            n = (args[1] + _BLOCK - 1) // _BLOCK * _BLOCK
            _erase(0, min(n, len(_part)))
        else:
            _erase(args[1], args[2])
        return _WRITE
    if op == 4:
        _write(args[1], args[2])
        return 0
    if op == 5:
        _file.flush()
        return 0
    if op == 6:
        return _BLOCK
    return _EINVAL
