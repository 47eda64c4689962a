# The board's NOR flash on the unix port (hil/umeter_hil/board_shim/norflash.py): its rules,
# its wear counts, a real LittleFS on it, and what a power cut leaves.  benchmarks/endurance.py
# runs the soaked node on it and reports the wear (docs/metrology.md, "Wear budget").
import os
import sys

import vfs

from meternode.store.checkpoint import CheckpointStore
from mptest import eq, heap, raises, scratch_dir, timeout

_SHIM = __file__.rsplit("/", 3)[0] + "/hil/umeter_hil/board_shim"
if _SHIM not in sys.path:
    sys.path.append(_SHIM)
import norflash  # noqa: E402


def _erases(dev):
    return norflash.wear(dev.wear)[0]


def _programmed(dev):
    return sum(norflash.wear(dev.wear)[1])


def test_erase_program_and_the_nor_rule():
    img = scratch_dir() + "/f.img"
    dev = norflash.NorFlash(img, 4 * 4096)
    buf = bytearray(16)
    dev.readblocks(2, buf, 100)
    eq(bytes(buf), b"\xff" * 16, "a new flash reads erased")
    dev.writeblocks(2, b"abcd", 100)
    dev.readblocks(2, buf, 98)
    eq(bytes(buf[:8]), b"\xff\xffabcd\xff\xff", "a program lands where it was put, nowhere else")
    # a second program over programmed bytes is what NOR flash cannot do
    raises(OSError, dev.writeblocks, 2, b"x", 101)
    dev.writeblocks(2, b"e", 104)  # the erased byte after them still takes one
    eq(dev.ioctl(6, 2), 0, "erase")
    dev.readblocks(2, buf, 100)
    eq(bytes(buf), b"\xff" * 16, "an erase sets the block to 0xFF")
    dev.writeblocks(2, b"x", 101)  # and it takes a program again
    eq(dev.ioctl(6, 4), -22, "an erase past the end is refused")
    raises(OSError, dev.writeblocks, 3, b"12345678", 4092)  # across a block's end
    dev.writeblocks(1, b"z" * 4096)  # the simple interface: erase, then the whole block
    eq(_erases(dev), [0, 1, 1, 0], "erases, per block")
    eq(_programmed(dev), 4 + 1 + 1 + 4096, "bytes programmed")
    # everything is written through: a second device on the image (a reboot) sees it all
    dev2 = norflash.NorFlash(img, 4 * 4096)
    dev2.readblocks(2, buf, 100)
    eq(bytes(buf[:2]), b"\xffx", "the flash after a reboot")
    eq(_erases(dev2), [0, 1, 1, 0], "the wear after a reboot")
    dev2.reset_wear()
    eq(_erases(norflash.NorFlash(img, 4 * 4096)), [0, 0, 0, 0], "wear reset, and that written through")
    raises(ValueError, norflash.NorFlash, scratch_dir() + "/g.img", 5000)


@heap("256k")
def test_littlefs_on_it_survives_a_power_cut():
    img = scratch_dir() + "/pico_w.img"
    dev, made = norflash.mount(img, "pico_w", "/nf1")
    eq((made, dev.n), (True, 212), "a Pico W's 848 KiB, formatted at first")
    with open("/nf1/kept", "wb") as f:
        f.write(b"k" * 3000)
    f = open("/nf1/torn", "wb")
    f.write(b"t" * 6000)  # not closed: the power goes before LittleFS commits it
    # the power cut: nothing of the process survives but what reached the flash
    dev2, made = norflash.mount(img, "pico_w", "/nf2")
    eq(made, False, "the file system is there after the cut")
    with open("/nf2/kept", "rb") as g:
        eq(g.read(), b"k" * 3000, "a closed file survives")
    eq("torn" in os.listdir("/nf2"), True, "the file opened before the cut is there")
    eq(os.stat("/nf2/torn")[6], 0, "with none of what was never committed")
    vfs.umount("/nf1")
    vfs.umount("/nf2")


@heap("256k")
def test_checkpoints_wear_the_flash_levelled():
    # The node's most frequent rewrite: its two checkpoint slots, on both boards' settings.
    # On an ESP32 (progsize 32: files above 128 bytes get blocks of their own) each write takes
    # a new block from LittleFS's allocator, which goes round the free blocks; on an RP2040
    # (progsize 256: files up to 512 bytes live inside the directory's metadata) each is a
    # commit to the directory's metadata pair, erased when it compacts, and moved on after 100
    # erases (block_cycles).  Either way no block keeps the wear.
    state = {"registers": list(range(60)), "tariff": "peak"}
    for board, at in (("esp32", "/nf3"), ("pico_w", "/nf4")):
        dev, _ = norflash.mount(scratch_dir() + "/" + board + ".img", board, at)
        dev.reset_wear()
        st = CheckpointStore(at + "/ckpt")
        for _ in range(2000):
            st.write(state)
        eq(CheckpointStore(at + "/ckpt").seq, 2000, "every checkpoint readable after")
        e = _erases(dev)
        worn = sum(1 for x in e if x)
        print("%s, 2000 checkpoints: %d erases over %d blocks, hottest %d" % (board, sum(e), worn, max(e)))
        eq(sum(e) > 200, True, "the rewrites erase blocks")
        eq(max(e) <= 100, True, "no block erased more than LittleFS's 100 cycles before it moves on")
        eq(worn > 2, True, "the wear moved on from the blocks it began on")
        vfs.umount(at)


@heap("256k")
def test_each_flushed_append_costs_an_erase():
    # Why the record log wears the flash more than its bytes say: LittleFS writes a file's
    # last block anew (a fresh erased block, the data before copied) at every sync, so each
    # record appended with its flush costs about one erase and a block's worth of programming.
    for board, at in (("esp32", "/nf5"), ("pico_w", "/nf6")):
        dev, _ = norflash.mount(scratch_dir() + "/" + board + ".img", board, at)
        f = open(at + "/seg", "ab")
        f.write(b"x" * 5000)
        f.flush()
        dev.reset_wear()
        for _ in range(200):
            f.write(b"r" * 80)
            f.flush()
        f.close()
        e = sum(_erases(dev))
        kib = _programmed(dev) // 1024
        print("%s, 200 flushed appends of 80 bytes: %d erases, %d KiB programmed" % (board, e, kib))
        eq(190 <= e <= 230, True, "an erase an append")
        eq(_programmed(dev) > 200 * 1024, True, "each a block's worth programmed, not 80 bytes")
        vfs.umount(at)


_CHILD = """
import sys
sys.path[:0] = [%r, %r]
import norflash
from meternode.store import records
from meternode.store.checkpoint import CheckpointStore
from meternode.store.log import RecordLog
norflash.mount(%r, "pico_w", "/f")
st = CheckpointStore("/f/ck")
log = RecordLog("/f/log", 4096, 16384)
n = st.seq
while True:
    n += 1
    log.append(records.EVENT, 1000 + n, records.event(records.EV_RELAY, n, "r%%d" %% n))
    st.write({"registers": {"imp": n * 1000}, "pad": "p" * 300})
    print("acked", n)
"""


@timeout(180)
@heap("256k")
def test_power_cuts_inside_littlefs_lose_nothing_acknowledged():
    # A child unix port appends records and writes checkpoints on a Pico W's LittleFS as fast
    # as it can; SIGKILL hits it at random moments, between any two of LittleFS's programs and
    # erases (each is written through to the image). After each cut the file system mounts,
    # the checkpoint holds at least the last acknowledged value, the log every acknowledged
    # record in order, and the child carries on from there.
    import random

    import powercut

    from meternode.store.checkpoint import CheckpointStore
    from meternode.store.log import RecordLog

    img = scratch_dir() + "/cut.img"
    script = scratch_dir() + "/child.py"
    fw = [p for p in sys.path if p.endswith("firmware")]
    with open(script, "w") as f:
        f.write(_CHILD % (fw[0] if fw else ".", _SHIM, img))
    out = scratch_dir() + "/child.out"
    random.seed(7)
    last = 0
    for k in range(8):
        delay = "%.3f" % (0.05 + random.random() * 0.4)
        acked = powercut.cut(script, out, delay)
        eq(acked > last // 1000, True, "cut %d: the child made progress (%d)" % (k, acked))
        at = "/cut%d" % k
        norflash.mount(img, "pico_w", at)  # raises if LittleFS found no file system
        imp = CheckpointStore(at + "/ck").restore()["registers"]["imp"]
        eq(acked * 1000 <= imp <= (acked + 1) * 1000, True, "cut %d: checkpoint %d, acknowledged %d" % (k, imp, acked))
        log = RecordLog(at + "/log", 4096, 16384)
        r = log.reader()
        r.seek(log.first_seq())
        seqs = []
        while r.next():
            seqs.append(r.seq)
        eq(seqs[-1] >= acked, True, "cut %d: every acknowledged record (last %d of %d)" % (k, seqs[-1], acked))
        eq(seqs, list(range(seqs[0], seqs[-1] + 1)), "cut %d: the records in order, none missing" % k)
        log.close()
        vfs.umount(at)
        last = imp
    print("8 cuts, %d records and checkpoints acknowledged" % (last // 1000))
