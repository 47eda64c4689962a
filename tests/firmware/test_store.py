# Record log and upload cursor, on the MicroPython unix port.
import os

from meternode.store import records
from meternode.store.log import HEADER, Cursor, LogError, RecordLog
from mptest import eq, heap, raises, scratch_dir


def _ev(i):
    return records.event(records.EV_RELAY, i, "relay %d" % i)


def _fill(log, n, t0=1000):
    for i in range(n):
        log.append(records.EVENT, t0 + i, _ev(i))


def _seqs(log, start=1):
    r = log.reader()
    r.seek(start)
    out = []
    while r.next():
        out.append(r.seq)
    return out


def test_records_survive_reopen_in_order_with_fields():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 1024, 8192)
    _fill(log, 60)
    log.append(
        records.PROFILE,
        5000,
        records.profile(900, 123456789012, 42, (2300, 2290, 2310), (1500, 10, 3000), (3450, -20, 6900)),
    )
    log.close()
    log = RecordLog(p, 1024, 8192)
    eq(log.last_seq, 61, "last seq after reopen")
    eq(_seqs(log), list(range(1, 62)), "sequence numbers")
    r = log.reader()
    r.seek(61)
    eq(r.next(), records.PROFILE, "kind")
    d = r.record()
    eq(d["e_imp_mwh"], 123456789012, "exact energy register")
    eq(d["p_min_dw"], -20, "signed power")
    eq(r.ts, 5000, "timestamp")
    eq(log.stats()["segments"] > 1, True, "log rotated into several segments")


def test_oldest_segment_dropped_and_counted_when_full():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 1024, 2048)
    drops = []
    log.on_drop = lambda n, a, b: drops.append((n, a, b))
    _fill(log, 400)
    st = log.stats()
    eq(st["bytes"] <= 2048, True, "log stays within max_bytes (%d)" % st["bytes"])
    eq(st["dropped"] > 0, True, "drops counted")
    eq(sum(d[0] for d in drops), st["dropped"], "every dropped record reported")
    eq(st["dropped"] + st["records"], 400, "dropped + held = appended")
    eq(_seqs(log), list(range(st["first_seq"], 401)), "what is held is contiguous to the end")
    log.close()
    eq(RecordLog(p, 1024, 2048).dropped, st["dropped"], "drop count persisted")


def test_torn_tail_is_skipped_and_appends_continue():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 4096, 16384)
    _fill(log, 10)
    log.close()
    seg = p + "/" + sorted(n for n in os.listdir(p) if n.endswith(".seg"))[-1]
    with open(seg, "ab") as f:  # a record cut off mid-write: header and part of the payload
        f.write(b"\xa5\x04\x20\x00\x0b\x00\x00\x00\x00\x00\x00\x00abc")
    log = RecordLog(p, 4096, 16384)
    eq(log.torn, 1, "torn tail detected")
    eq(log.corrupt, 0, "no corrupt record")
    eq(log.last_seq, 10, "last good record")
    eq(log.append(records.EVENT, 2000, _ev(99)), 11, "next seq")
    log.close()
    log = RecordLog(p, 4096, 16384)
    eq(_seqs(log), list(range(1, 12)), "nothing lost, torn bytes skipped")


def test_corrupt_record_skipped_counted_and_nothing_after_lost():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 4096, 16384)
    _fill(log, 20)
    log.close()
    seg = p + "/00000001.seg"
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    size = len(data) // 20  # records are the same size here
    data[5 * size + HEADER + 2] ^= 0xFF  # flip a payload byte of record 6
    with open(seg, "wb") as f:
        f.write(data)
    log = RecordLog(p, 4096, 16384)
    eq(log.corrupt, 1, "one corrupt record")
    eq(_seqs(log), [s for s in range(1, 21) if s != 6], "every other record still read")
    eq(log.append(records.EVENT, 3000, _ev(0)), 21, "appends continue after the last seq")


def test_reader_follows_appends_and_seeks_by_seq():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 1024, 8192)
    r = log.reader()
    r.seek(1)
    eq(r.next(), 0, "empty log")
    _fill(log, 3)
    eq([r.next(), r.seq], [records.EVENT, 1], "first append seen")
    eq(r.next() and r.next() and r.seq, 3, "then the others")
    eq(r.next(), 0, "caught up")
    _fill(log, 50)
    eq(r.next() and r.seq, 4, "later appends seen")
    r.seek(40)
    eq(r.next() and r.seq, 40, "seek into a later segment")


def test_seq_continues_from_cursor_floor_when_log_is_empty():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 1024, 8192, floor=500)
    eq(log.append(records.EVENT, 1, _ev(1)), 501, "first seq above the acknowledged cursor")


def test_bad_sizes_and_payloads_are_refused_with_the_reason():
    p = scratch_dir() + "/log"
    e = raises(LogError, RecordLog, p, 100, 8192)
    eq("segment_bytes" in str(e), True, str(e))
    e = raises(LogError, RecordLog, p, 4096, 4096)
    eq("max_bytes" in str(e), True, str(e))
    log = RecordLog(p, 1024, 8192)
    e = raises(LogError, log.append, records.EVENT, 0, bytes(600))
    eq("600" in str(e), True, str(e))
    e = raises(ValueError, records.fields, records.PROFILE, b"abc")
    eq("profile payload is 3 bytes" in str(e), True, str(e))


def test_cursor_persists_only_forward_and_survives_a_corrupt_file():
    p = scratch_dir() + "/cursor"
    c = Cursor(p, every=4)
    for s in range(1, 10):
        c.advance(s)
    c.advance(3)
    eq(c.acked, 9, "never moves back")
    eq(Cursor(p).acked, 8, "persisted every 4 advances")
    c.flush()
    eq(Cursor(p).acked, 9, "flush persists the rest")
    with open(p, "wb") as f:
        f.write(b"\x01\x02\x03\x04\x05\x06\x07\x08")
    eq(Cursor(p).acked, 0, "corrupt cursor restarts at 0 (resend, never lose)")


def test_cursor_keeps_values_above_2_32_and_reads_the_older_8_byte_file():
    import binascii
    import struct

    p = scratch_dir() + "/cursor64"
    old = struct.pack("<I", 4000000000)
    with open(p, "wb") as f:
        f.write(old + struct.pack("<I", binascii.crc32(old)))
    c = Cursor(p, every=1)
    eq(c.acked, 4000000000, "an older u32 cursor file")
    c.advance((1 << 40) + 7)
    eq(Cursor(p).acked, (1 << 40) + 7, "stored in full width")
    raises(ValueError, c.advance, 1 << 64)
    raises(ValueError, c.advance, -1)
    c.advance((1 << 64) - 1)
    eq(Cursor(p).acked, (1 << 64) - 1, "the largest u64")


def _snap(v, i, p, imp_wh):
    return {"v": v, "elements": [{"name": "I1", "i": i, "p": p, "e_imp_wh": imp_wh, "e_exp_wh": 0.0}]}


def test_profile_recorder_closes_intervals_on_the_clock_and_freezes_days_and_months():
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    t0 = 1706745600 - 1800  # 2024-01-31 23:30 UTC
    for k in range(13):  # every 5 min, 23:30 .. 00:30
        rec.add(t0 + 300 * k, _snap(230.0 + k, 5.0, 1150.0 + k, 100.0 + k))
    r = log.reader()
    r.seek(1)
    got = []
    while r.next():
        got.append((r.kind, r.ts, r.record()))
    eq(
        [(k, ts) for k, ts, d in got][:4],
        [
            (records.PROFILE, t0 + 900),
            (records.PROFILE, t0 + 1800),
            (records.DAILY, t0 + 1800),
            (records.MONTHLY, t0 + 1800),
        ],
        "two intervals, then the day and month freezes",
    )
    first = got[0][2]
    eq((first["v_avg_dv"], first["v_min_dv"], first["v_max_dv"]), (2310, 2300, 2320), "V avg/min/max over 3 snaps")
    eq(first["e_imp_mwh"], 103000, "register at the end of the interval: the snapshot taken on it")
    eq(first["period_s"], 900, "period")
    eq(got[2][2]["e_imp_mwh"], 106000, "daily freeze holds the register")
    raises(ValueError, ProfileRecorder, log, 7)


def _esnap(imp_mwh, exp_mwh=0, i=5.0):
    e = {"name": "I1", "i": i, "p": 230.0 * i, "e_imp_mwh": imp_mwh, "e_exp_mwh": exp_mwh}
    return {"v": 230.0, "elements": [e]}


def _profile_records(log):
    r = log.reader()
    r.seek(1)
    out = []
    while r.next():
        d = r.record()
        out.append((records.kind_name(r.kind), r.ts, d.get("e_imp_mwh"), d.get("e_exp_mwh"), d.get("period_s")))
    return out


def test_profile_and_freezes_hold_the_registers_at_their_boundary_not_at_the_nearest_snapshot():
    # Snapshots every 300 s, 100 s off the quarter hours (the reporting task keeps its own
    # pace), a steady 3.6 kW: the import register grows 1000 mWh a second, so its value at any
    # boundary is known exactly. The record ending at midnight and that midnight's daily and
    # monthly freezes are one reading of the registers: the same values.
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    mid = 1706745600  # 2024-02-01 00:00 UTC: a day and a month end
    t0 = mid - 1800 + 100
    e0 = (1 << 40) + 12345  # mWh, a register far above 2**30 (a board's small-int range)
    for k in range(13):
        t = t0 + 300 * k
        rec.add(t, _esnap(e0 + 1000 * (t - t0), 7 + k))
    got = _profile_records(log)

    def at(b):
        return e0 + 1000 * (b - t0)

    want = [
        ("profile", mid - 900, at(mid - 900), None, 900),
        ("profile", mid, at(mid), None, 900),
        ("daily", mid, at(mid), None, None),
        ("monthly", mid, at(mid), None, None),
        ("profile", mid + 900, at(mid + 900), None, 900),
        ("profile", mid + 1800, at(mid + 1800), None, 900),
    ]
    eq([g[:3] + (None,) + g[4:] for g in got], want, "each record holds the register at its own boundary")
    # export moved by 1 mWh a snapshot: at midnight it is between the two snapshots around it
    exp = [g[3] for g in got if g[1] == mid]
    eq(len(set(exp)), 1, "one export value at midnight in all three records: %r" % (exp,))
    eq(exp[0] in (7 + 5, 7 + 6), True, "export at midnight between its neighbours: %r" % (exp,))


def test_a_snapshot_on_the_boundary_is_the_boundarys_reading():
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    mid = 1706745600
    rec.add(mid - 450, _esnap(100))
    rec.add(mid, _esnap(5000))  # on the boundary itself
    rec.add(mid + 450, _esnap(9000))
    eq(_profile_records(log), [("profile", mid, 5000, 0, 900), ("daily", mid, 5000, 0, None),
                               ("monthly", mid, 5000, 0, None)], "the reading at 00:00:00 itself")  # fmt: skip


@heap("192k")  # the registers module compiled from source, beside the store's
def test_the_monthly_freeze_holds_the_months_maximum_demand_and_the_daily_none():
    # The meter's registers (Registers.demand, as its Energy calls it per demand period): the
    # MONTHLY freeze at Feb 1 holds January's maximum and its period's end, although a
    # February period ended before the first snapshot after midnight; the next month's
    # freeze holds February's alone.
    from meternode.metrology.registers import Registers
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    regs = Registers(1)
    rec = ProfileRecorder(log, 900, None, None, regs)
    feb = 1706745600
    mar = feb + 29 * 86400  # 2024 is a leap year
    regs.demand(2500.0, feb - 86400, True)
    rec.add(feb - 450, _esnap(100))
    regs.demand(4100.5, feb, True)
    regs.demand(5000.0, feb + 300, True)  # February's (a 5-min demand period)
    rec.add(feb + 450, _esnap(200))
    rec.add(mar - 450, _esnap(300))
    rec.add(mar + 10, _esnap(400))
    r = log.reader()
    r.seek(1)
    got = {}
    while r.next():
        got.setdefault(records.kind_name(r.kind), []).append((r.ts, r.record()))
    eq([(ts, d["md_mw"], d["md_at"]) for ts, d in got["monthly"]], [(feb, 4100500, feb), (mar, 5000000, feb + 300)],
       "each month's maximum demand and when it ended")  # fmt: skip
    eq(["md_mw" in d for _, d in got["daily"]], [False] * 3, "a daily freeze has none (Feb 1, 29, Mar 1)")
    # a MONTHLY of a firmware before billing months (24 bytes) still reads, without it
    old = records.freeze(1, 2, 3, 4)
    want = {"e_imp_mwh": 1, "e_exp_mwh": 2, "water_l": 3, "gas_l": 4}
    eq(records.fields(records.MONTHLY, old), want, "24-byte monthly")
    e = raises(ValueError, records.fields, records.DAILY, old + bytes(8))
    eq("daily payload is 32 bytes, expected 24" in str(e), True, str(e))
    e = raises(ValueError, records.fields, records.MONTHLY, old + bytes(4))
    eq("monthly payload is 28 bytes, expected 32" in str(e), True, str(e))


def test_a_clock_stepped_back_across_midnight_freezes_nothing_twice():
    # An NTP correction of a few seconds, just after midnight: the node's clock was fast,
    # passed midnight, froze the day, and is set back to 23:59:57. Nothing is frozen or
    # closed again when midnight comes round a second time, and no record is dated in the
    # future of the clock that made it.
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    mid = 1706745600
    for t, e in ((mid - 20, 100), (mid + 2, 200), (mid - 3, 300), (mid + 7, 400), (mid + 300, 500),
                 (mid + 600, 600), (mid + 901, 700)):  # fmt: skip
        rec.add(t, _esnap(e))
        for kind, ts, *_ in _profile_records(log):
            eq(ts <= max(t, mid + 2), True, "%s record at %d made at %d" % (kind, ts, t))
    got = [(k, ts) for k, ts, *_ in _profile_records(log)]
    eq(got, [("profile", mid), ("daily", mid), ("monthly", mid), ("profile", mid + 900)], "each boundary once")


def test_a_clock_set_back_by_more_than_a_period_starts_afresh():
    # The clock was a year ahead and is corrected: the interval in progress cannot end, so
    # it is dropped (the registers carry its energy on) and the recorder starts again, as
    # after a boot; the days under the right clock are frozen as they come.
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    mid = 1706745600
    year = 366 * 86400
    rec.add(mid + year - 100, _esnap(100))
    rec.add(mid + year + 100, _esnap(200))  # a profile, a daily (2025-02-01: a month end too)
    rec.add(mid + year + 400, _esnap(300))
    rec.add(mid - 200, _esnap(400))  # corrected: 2024-01-31 23:56:40
    rec.add(mid + 100, _esnap(500))
    got = [(k, ts) for k, ts, *_ in _profile_records(log)]
    eq(got[:3], [("profile", mid + year), ("daily", mid + year), ("monthly", mid + year)], "under the wrong clock")
    eq(got[3:], [("profile", mid), ("daily", mid), ("monthly", mid)], "under the right one")


def test_a_new_profile_period_applies_from_the_end_of_the_interval_in_progress():
    # `set profile_s 300` (link/actions.py sets period_s) in the middle of a quarter hour:
    # that interval keeps its length and end, the next ones are 5 minutes long.
    from meternode.store.profile import ProfileRecorder

    log = RecordLog(scratch_dir() + "/log", 4096, 65536)
    rec = ProfileRecorder(log, 900)
    q = 1706745600 + 3600
    for k in range(5):  # q-600 .. q+600 every 300 s, a steady 1000 mWh a second
        if k == 1:
            rec.period_s = 300
        t = q - 600 + 300 * k
        rec.add(t, _esnap(1000 * t))
    got = [(k, ts, e, per) for k, ts, e, _, per in _profile_records(log)]
    want = [("profile", q, 1000 * q, 900)] + [("profile", q + x, 1000 * (q + x), 300) for x in (300, 600)]
    eq(got, want, "900 s, then 300 s")


@heap("256k")
def test_a_local_log_with_no_publisher_makes_room_from_its_oldest_segment_when_flash_is_full():
    import ramflash

    ramflash.mount("/flash", 48)
    log = RecordLog("/flash/log", 1024, 65536)  # max_bytes beyond what fits: the flash fills first
    _fill(log, 60)
    first = log.first_seq()
    ramflash.fill("/flash/filler")
    for k in range(60):
        log.append(records.EVENT, 5000 + k, _ev(k))
    st = log.stats()
    eq((st["dropped"] > 0, st["first_seq"] > first, st["unwritten"]), (True, True, 0), "room from the oldest")
    eq(_seqs(log, st["first_seq"])[-1], 120, "every new record written")
    log.close()


@heap("256k")
def test_flash_full_never_drops_unsent_records_and_the_log_goes_on_when_there_is_room():
    # Issue 10 row 5: a full flash (an OTA slot left behind) made the log drop its oldest
    # segment: 64 of 100 unsent readings lost, and later appends still failed.
    import ramflash

    ramflash.mount("/flash", 48)
    sent = [20]
    log = RecordLog("/flash/log", 1024, 16384)
    log.delivered = lambda: sent[0]
    _fill(log, 100)
    ramflash.fill("/flash/slot")  # what an OTA staging left
    refused = 0
    for k in range(40):
        try:
            log.append(records.EVENT, 5000 + k, _ev(k))
        except LogError as e:
            refused += 1
            eq("flash full" in str(e), True, str(e))
    st = log.stats()
    eq(refused > 0 and st["unwritten"] == refused, True, "refused appends counted (%d)" % refused)
    eq(st["first_seq"] <= 21, True, "no unsent record was deleted: first seq %d" % st["first_seq"])
    eq(_seqs(log, 21)[:80], list(range(21, 101)), "the 80 unsent readings are all there")
    os.remove("/flash/slot")
    s = log.append(records.EVENT, 9000, _ev(1))
    eq(s, 101 + 40 - refused, "appends go on once there is room")
    log.close()
    log = RecordLog("/flash/log", 1024, 16384)
    eq(_seqs(log, 21)[-1], s, "and survive a restart")
    log.close()


def test_seq_is_never_issued_again_when_the_newest_records_are_lost_after_upload():
    # Issue 10 row 10: the newest record corrupted after upload and the cursor saved lower
    # (every 16 acks): the next record reused seq 20 and the consumer dropped it as a duplicate.
    p = scratch_dir() + "/log"
    log = RecordLog(p, 4096, 16384, floor=0)
    _fill(log, 20)
    for s in range(1, 21):
        log.mark_sent(s)  # the publisher sent them all
    log.close()
    seg = p + "/00000001.seg"
    with open(seg, "rb") as f:
        data = bytearray(f.read())
    data[-3] ^= 0xFF  # the newest record's CRC no longer checks
    with open(seg, "wb") as f:
        f.write(data)
    log = RecordLog(p, 4096, 16384, floor=16)  # the cursor as saved
    eq(_seqs(log)[-1], 19, "record 20 is gone")
    eq(log.append(records.EVENT, 3000, _ev(0)), 21, "seq 20 is not issued again")
    log.close()


def test_an_unreadable_meta_moves_the_next_seq_on_by_a_margin():
    from meternode.store.log import HW_MARGIN

    p = scratch_dir() + "/log"
    log = RecordLog(p, 4096, 16384)
    _fill(log, 5)
    log.mark_sent(5)
    log.close()
    with open(p + "/meta", "r+b") as f:
        f.write(b"\xff")
    log = RecordLog(p, 4096, 16384)
    eq((log.meta_bad, log.append(records.EVENT, 1, _ev(0))), (True, 6 + HW_MARGIN), "margin")
    log.close()
    eq(RecordLog(p, 4096, 16384).last_seq, 6 + HW_MARGIN, "and the meta is good again")


def test_mark_sent_persists_a_few_records_ahead_but_never_past_the_newest():
    p = scratch_dir() + "/log"
    log = RecordLog(p, 4096, 16384)
    _fill(log, 30)
    log.mark_sent(1)
    eq(log.stats()["hw"], 8, "one meta write covers a window")
    w = [0]
    save = log._save_meta

    def counted():
        w[0] += 1
        save()

    log._save_meta = counted
    for s in range(2, 31):
        log.mark_sent(s)
    eq((log.stats()["hw"], w[0]), (30, 3), "hw at the newest record, one write per 8")
    log.close()
    eq(RecordLog(p, 4096, 16384).last_seq, 30, "no gap after a clean restart")


def test_every_event_code_has_its_name_and_any_other_code_reads_unknown():
    # The names live in one string (records.event_name): each code its own word, in order,
    # and a code from a newer firmware or a corrupt byte is "unknown", never another's name.
    names = {}
    c = 1
    while records.event_name(c) != "unknown":
        names[c] = records.event_name(c)
        c += 1
    codes = [getattr(records, k) for k in dir(records) if k.startswith("EV_")]
    eq(sorted(names), sorted(codes), "every EV_ code named, and nothing else")
    eq(len(set(names.values())), len(names), "no two codes share a name")
    eq((names[records.EV_POWER_DOWN], names[records.EV_SAMPLING_GAP], names[records.EV_SAFE_MODE]),
       ("power_down", "sampling_gap", "safe_mode"), "first, middle and last")  # fmt: skip
    for c in (0, -1, max(codes) + 1, 200, 255):
        eq(records.event_name(c), "unknown", "code %d" % c)
    f = records.fields(records.EVENT, records.event(255, 7, "from a newer firmware"))
    eq((f["code"], f["event"], f["arg"], f["text"]), (255, "unknown", 7, "from a newer firmware"), "decoded")
    kinds = [records.kind_name(k) for k in (1, 2, 3, 4, 5, 9)]
    eq(kinds, ["profile", "daily", "monthly", "event", "reading", "unknown"], "kind names")
