# Power-fail-safe register checkpoints: alternating slots, CRC, torn writes, power cuts.
import os
import sys

import powercut
from metrology_rig import board, rig, settle

from meternode.store.checkpoint import Checkpointer, CheckpointError, CheckpointStore
from mptest import eq, heap, raises, scratch_dir, timeout


def _state(n):
    return {"registers": {"imp": n}, "pad": "x" * 100}


def test_slots_alternate_and_the_newest_good_one_is_restored():
    d = scratch_dir() + "/ck"
    st = CheckpointStore(d)
    eq(st.restore(), None, "empty store")
    for n in range(1, 6):
        eq(st.write(_state(n)), n, "sequence")
    eq(st.restore()["registers"]["imp"], 5, "newest")
    eq(CheckpointStore(d).seq, 5, "sequence survives a restart")
    eq(sorted(os.listdir(d)), ["ckpt0", "ckpt1"], "two slot files")


def test_a_torn_or_corrupt_newest_slot_falls_back_to_the_older_one():
    d = scratch_dir() + "/ck"
    st = CheckpointStore(d)
    st.write(_state(1))
    st.write(_state(2))  # newest is in slot 0 (slot 1 took seq 1)
    newest = d + "/ckpt0"
    with open(newest, "rb") as f:
        good = f.read()
    for cut in range(0, len(good), 7):  # every torn length
        with open(newest, "wb") as f:
            f.write(good[:cut])
        eq(CheckpointStore(d).restore()["registers"]["imp"], 1, "torn at %d bytes" % cut)
    bad = bytearray(good)
    bad[30] ^= 0x01
    with open(newest, "wb") as f:
        f.write(bad)
    eq(CheckpointStore(d).restore()["registers"]["imp"], 1, "one flipped bit")
    # the next write goes to the spoilt slot, never over the good one
    st = CheckpointStore(d)
    st.write(_state(3))
    eq(CheckpointStore(d).restore()["registers"]["imp"], 3, "after rewriting")


@heap("160k")  # meter + sim HAL compiled from source
def test_checkpointer_writes_on_energy_delta_and_period_never_faster_than_the_floor():
    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0}]})
    ck = Checkpointer(CheckpointStore(scratch_dir() + "/ck"), m, delta_mwh=500, period_s=10, min_interval_s=1)
    eq(ck.save(0), False, "first call only starts the clock")
    settle(s, m, 0.5)  # 2.3 kW for 0.5 s = 319 mWh
    eq(ck.save(1500), False, "below the delta, before the period")
    settle(s, m, 0.5)  # 639 mWh in all
    eq(ck.save(1800), True, "energy delta reached")
    settle(s, m, 1.0)
    eq(ck.save(2000), False, "within the 1 s floor")
    eq(ck.save(2900), True, "delta again after the floor")
    s.set_current(1, 0.001)
    settle(s, m, 1.0)
    eq(ck.save(14000), True, "period passed with a change")
    eq(ck.save(30000), False, "nothing moved")
    raises(CheckpointError, Checkpointer, ck.store, m, 0)


@heap("160k")  # meter + sim HAL compiled from source
def test_restart_restores_registers_exactly():
    d = scratch_dir() + "/ck"
    s, m = rig(board(), {"seed": 1, "voltage": {"rms": 230.0}, "currents": [{"rms": 10.0, "angle": 200.0}]})
    ck = Checkpointer(CheckpointStore(d), m)
    settle(s, m, 2.0)
    ck.save(0, force=True)
    before = m.registers.state()
    s = m = ck = None  # free the first rig before the others are made
    m2 = rig(board(), {"seed": 1})[1]
    eq(Checkpointer(CheckpointStore(d), m2).restore() is not None, True, "restored")
    eq(m2.registers.state(), before, "register state")
    m2 = None
    # a board with another element count cannot take it: set aside with the reason
    b3 = board()
    b3["channels"] = b3["channels"][:2]
    s3, m3 = rig(b3, {"seed": 1})
    ck3 = Checkpointer(CheckpointStore(d), m3)
    eq(ck3.restore(), None, "not restored")
    eq("2 elements" in ck3.rejected, True, ck3.rejected)


_CHILD = """
import sys
sys.path.insert(0, %r)
from meternode.store.checkpoint import CheckpointStore
st = CheckpointStore(%r)
n = st.seq
while True:
    n += 1
    st.write({"registers": {"imp": n * 1000}, "pad": "p" * 2000})
    print("acked", n)
"""


@timeout(120)
def test_power_cut_during_checkpoint_writes_loses_nothing_acknowledged():
    # A child unix port writes checkpoints as fast as it can; SIGKILL hits it at several
    # moments (most of its time is inside write).  Every restart must find a good
    # checkpoint holding at least the last acknowledged value, and writing goes on.
    d = scratch_dir() + "/ck"
    script = scratch_dir() + "/child.py"
    fw = [p for p in sys.path if p.endswith("firmware")]
    with open(script, "w") as f:
        f.write(_CHILD % (fw[0] if fw else ".", d))
    out = scratch_dir() + "/child.out"
    last = 0
    for k, delay in enumerate(("0.05", "0.11", "0.17", "0.23", "0.29", "0.31")):
        # start the child, wait for its first acknowledged write, then cut after `delay`
        acked = powercut.cut(script, out, delay)
        got = CheckpointStore(d).restore()
        eq(got is not None, True, "cut %d: a good checkpoint" % k)
        imp = got["registers"]["imp"]
        eq(imp >= acked * 1000, True, "cut %d: restored %d >= acknowledged %d" % (k, imp, acked * 1000))
        eq(imp <= (acked + 1) * 1000, True, "cut %d: at most the write in flight" % k)
        eq(imp > last, True, "cut %d: progress across restarts" % k)
        last = imp
