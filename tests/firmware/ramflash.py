# A real LittleFS (MicroPython's VfsLfs2) on a block device in RAM, mounted on the unix port:
# a board's flash, small enough to fill.  Writes past its capacity fail with OSError 28
# (ENOSPC) exactly as on a board.
import os

import vfs


class RAMBlockDev:
    def __init__(self, blocks, block_size=512):
        self.block_size = block_size
        self.data = bytearray(block_size * blocks)

    def readblocks(self, n, buf, off=0):
        a = n * self.block_size + off
        buf[:] = self.data[a : a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        a = n * self.block_size + (off or 0)
        self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return len(self.data) // self.block_size
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase
            return 0
        return None


def mount(path, kib=64, block_size=512):
    # Formats and mounts a fresh LittleFS of `kib` KiB at `path`; returns the block device.
    bd = RAMBlockDev(kib * 1024 // block_size, block_size)
    vfs.VfsLfs2.mkfs(bd)
    try:
        vfs.umount(path)
    except OSError:
        pass
    vfs.mount(vfs.VfsLfs2(bd), path)
    return bd


def fill(path, leave=0):
    # Writes a file at `path` until fewer than `leave` bytes remain free; -> bytes written.
    n = 0
    chunk = bytes(512)
    with open(path, "wb") as f:
        while free(path[: path.rfind("/")] or "/") - len(chunk) >= leave:
            try:
                f.write(chunk)
                f.flush()
            except OSError:
                break
            n += len(chunk)
    return n


def free(path):
    s = os.statvfs(path)
    return s[0] * s[4]
