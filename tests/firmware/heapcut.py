# A heap cut up as one that has run a while (firmware tests): much free, in short pieces.
import gc
import sys


def plug(count, size, plugs=None):
    # Fills free runs of `size` bytes until none is left, and fails if `count` of them fit: the
    # heap must be cut up finer than that. Returns the plugs (keep them for as long as it must be).
    # `plugs`: a list of `count` made before the heap was cut (64 entries are a 512-byte run of
    # their own on 64-bit words, which a heap cut into runs of 320-624 bytes may not have left)
    if plugs is None:
        plugs = [None] * count
    try:
        for i in range(count):
            plugs[i] = bytearray(size)
        raise AssertionError("%d free runs of %d bytes: the heap is not fragmented" % (count, size))
    except MemoryError:
        pass
    return plugs


def fragment(blocks):
    # Fills the heap with tuples of `blocks` GC blocks (16 bytes) each -- one allocation each --
    # and frees every other one: lots of free heap, in runs of at least `blocks` blocks and
    # fewer than 2 * `blocks` (a run left over before is shorter than a tuple, or holds one
    # more).  -> what is kept (hold it).
    word = 8 if sys.maxsize >> 32 else 4
    k = (blocks * 16 - 2 * word) // word  # a tuple: type, length, then its items
    gc.collect()
    hold = [None] * (gc.mem_free() // (blocks * 16))  # made first: a growing list leaves its old arrays free
    try:
        for i in range(len(hold)):
            hold[i] = (None,) * k
    except MemoryError:
        pass
    for i in range(0, len(hold), 2):
        hold[i] = None
    gc.collect()
    return hold
