"""What the node's outbox sends for a record it cannot decode, and for a seq its log lost,
is a record the host consumer stores (umeter.validate), not a reject: the seq reaches the
consumer and no hole stays open (issue 10, rows 1 and 10)."""

from __future__ import annotations

import json

from meternode.link.outbox import Outbox
from meternode.store import records
from meternode.store.log import Cursor, RecordLog
from umeter import validate


def test_unreadable_and_missing_documents_are_records_for_the_consumer(tmp_path):
    log = RecordLog(str(tmp_path / "log"), 4096, 16384)
    log.append(records.EVENT, 1800000000, b"\x0b\x00\x00\x00\x00ab\xff\xfecd")  # checks, does not decode
    log.append(records.EVENT, 1800000000, records.event(records.EV_TAMPER, 1, "x"))
    log.last_seq += 2  # seqs 3 and 4 issued and lost (what the high-water mark leaves)
    log.append(records.EVENT, 1800000001, records.event(records.EV_TAMPER, 2, "y"))
    ob = Outbox(log, Cursor(str(tmp_path / "cursor")), "n7")
    events = []
    ob.on_unreadable = lambda seq, why: events.append(seq)
    ob._seek(1)
    docs = []
    while True:
        kind = ob._next()
        if not kind:
            break
        docs.append(ob._missing()[1] if kind < 0 else ob._payload())
    seqs = [json.loads(d)["seq"] for d in docs]
    assert seqs == [1, 2, 3, 4, 5]
    assert events == [1]
    for d in docs:
        m = validate.classify("umeter", "umeter/n7/event", d.encode())
        assert isinstance(m, validate.Record), (d, m)
    assert json.loads(docs[0])["hex"] == "0b000000006162fffe6364"
    assert json.loads(docs[2])["error"].startswith("missing:")
