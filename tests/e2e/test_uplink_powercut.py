"""Power cuts mid-append: the record log on the unix port is SIGKILLed while it writes, then
reopened; and every possible torn tail (the last record cut at each byte) is recovered."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from meternode.store import records
from meternode.store.log import RecordLog
from umeter import unixport

WRITER = r"""
import sys
from meternode.store import records
from meternode.store.log import RecordLog

log = RecordLog(sys.argv[1], 4096, 1 << 20)
st = log.stats()
print("OPEN %d %d %d" % (st["last_seq"], st["torn"], st["corrupt"]))
while True:
    s = log.last_seq + 1
    # payload derived from seq, so the reader can check every byte
    log.append(records.READING, s, (b"%08d" % s) * (1 + s % 40))
    print("OK %d" % s)
"""


def _payload(s: int) -> bytes:
    return (b"%08d" % s) * (1 + s % 40)


def _check(path: Path) -> tuple[list[int], dict]:
    log = RecordLog(str(path), 4096, 1 << 20)
    r = log.reader()
    r.seek(1)
    seqs = []
    while r.next():
        assert bytes(r.payload[: r.n]) == _payload(r.seq), f"record {r.seq} payload intact"
        assert r.ts == r.seq
        seqs.append(r.seq)
    st = log.stats()
    log.close()
    return seqs, st


def test_sigkill_mid_append_loses_nothing_that_was_acknowledged(tmp_path):
    # Two properties, each checked for what it is, whatever the machine's write speed:
    # a power cut loses nothing that append() acknowledged, and retention drops records only
    # from the oldest end, each one counted.
    path = tmp_path / "log"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    rnd = random.Random(4)
    acknowledged = 0
    for _ in range(6):
        p = subprocess.Popen(
            unixport.command(script, str(path), heap="128k"), stdout=subprocess.PIPE, text=True, env=env
        )
        first = p.stdout.readline()
        assert first.startswith("OPEN "), first
        assert int(first.split()[1]) >= acknowledged, "reopen sees every acknowledged record"
        time.sleep(rnd.uniform(0.05, 0.3))
        p.kill()  # SIGKILL: no cleanup, no flush beyond what append() already did
        out, _ = p.communicate()
        oks = [int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("OK ")]
        if oks:
            acknowledged = max(acknowledged, oks[-1])
    seqs, st = _check(path)
    assert acknowledged > 100, "the writer ran"
    assert seqs, "records retained"
    # contiguous from the oldest retained record to the newest: nothing missing in between
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no hole in the retained records"
    # every acknowledged record is either present or older than the retention boundary
    assert seqs[-1] >= acknowledged, f"newest {seqs[-1]} < acknowledged {acknowledged}"
    # retention dropped exactly the records before the oldest one held, and counted them
    assert st["first_seq"] == seqs[0]
    assert st["dropped"] == seqs[0] - 1, (st, seqs[0])
    assert st["bytes"] <= 1 << 20, "retention kept the log within max_bytes"


def test_a_log_of_hundreds_of_segments_opens_in_a_small_heap(tmp_path):
    # A full 1-MB log of 4-KB segments (~260 files), opened by MicroPython in 128 KB with the
    # modules compiled from source, as the writer above: the segment table is made in one
    # piece before its entries (grown an append at a time it needed 4 KB in one piece of a
    # heap its entries had cut up, and the open failed with MemoryError).
    path = tmp_path / "log"
    log = RecordLog(str(path), 4096, 1 << 20)
    s = 0
    while log.dropped == 0:
        s += 1
        log.append(records.READING, s, _payload(s))
    log.close()
    nseg = len(list(path.glob("*.seg")))
    assert nseg > 200
    script = tmp_path / "open.py"
    script.write_text(WRITER.split("while True")[0])
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    r = subprocess.run(unixport.command(script, str(path), heap="128k"), capture_output=True, text=True, env=env,
                       timeout=60)  # fmt: skip
    assert r.stdout.startswith("OPEN "), r.stdout + r.stderr
    assert int(r.stdout.split()[1]) == s, "every record found"


def test_a_retention_drop_cut_by_a_power_failure_completes_on_open_and_counts_once(tmp_path):
    # The meta (dropped count, newest dropped seq) is saved before the segment is removed;
    # a cut between the two leaves the segment, which the next open removes.
    log = RecordLog(str(tmp_path), 1024, 2048)
    for s in range(1, 40):
        log.append(records.READING, s, _payload(s % 8))
    dropped, first = log.dropped, log.first_seq()
    assert dropped > 0
    log.close()
    # put back a segment as if the cut came after the meta was saved, before the remove
    kept = sorted(tmp_path.glob("*.seg"))
    ghost = tmp_path / f"{int(kept[0].stem) - 1:08d}.seg"
    one = RecordLog(str(tmp_path / "other"), 1024, 1 << 20)
    for s in range(first - 3, first):
        one.append(records.READING, s, _payload(s % 8))
    one.close()
    (tmp_path / "other").rename(tmp_path / "other.d")
    # a segment holding seqs first-3 .. first-1 (already counted as dropped)
    other_seg = sorted((tmp_path / "other.d").glob("*.seg"))[0]
    ghost.write_bytes(other_seg.read_bytes())
    log = RecordLog(str(tmp_path), 1024, 2048)
    assert not ghost.exists(), "the interrupted drop was completed"
    assert (log.dropped, log.first_seq()) == (dropped, first), "counted once, nothing resurrected"
    log.close()


def test_every_torn_tail_is_skipped_and_appends_continue(tmp_path):
    src = tmp_path / "src"
    log = RecordLog(str(src), 4096, 1 << 20)
    for s in range(1, 6):
        log.append(records.READING, s, _payload(s))
    log.close()
    seg = sorted(src.glob("*.seg"))[-1]
    data = seg.read_bytes()
    last_len = 12 + len(_payload(5)) + 4
    for cut in range(1, last_len):
        d = tmp_path / f"cut{cut}"
        shutil.copytree(src, d)
        (d / seg.name).write_bytes(data[: len(data) - cut])
        log = RecordLog(str(d), 4096, 1 << 20)
        assert log.torn == 1 and log.corrupt == 0, f"cut {cut} bytes off the last record"
        assert log.last_seq == 4
        assert log.append(records.READING, 5, _payload(5)) == 5
        log.close()
        assert _check(d)[0] == [1, 2, 3, 4, 5]
        shutil.rmtree(d)
