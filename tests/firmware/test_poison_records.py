# Text fields are cut at UTF-8 boundaries, and a record that cannot be decoded never stops a
# publisher (issue 10, row 1), on the MicroPython unix port.
import asyncio

from meternode.link import loracodec, loradecode
from meternode.link.commands import Commands
from meternode.link.loralink import LoRaLink
from meternode.store import records
from meternode.store.log import Cursor, RecordLog
from mptest import eq, heap, raises, scratch_dir

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1800000000


class Clock:
    def time(self):
        return NOW


def test_cut_never_splits_a_character():
    s = "a" + "é" * 31 + "€𝄞"
    for n in range(0, 80):
        b = records.cut(s, n)
        eq(len(b) <= n, True, "at most %d bytes" % n)
        eq(s.startswith(b.decode()), True, "a prefix that decodes (n=%d)" % n)
        eq(min(n, len(s.encode())) - len(b) < 4, True, "at most one character's bytes dropped")
    eq(records.cut(b"abc", 2), b"ab", "bytes in, bytes out")


@heap("192k")  # compiled from source: storeinit's parse tree (RecordLog()) needs ~125k in all here
def test_forged_command_with_an_accented_id_leaves_a_decodable_event():
    from meternode import run

    mid = "a" + "é" * 31  # 32 characters, 63 bytes: the rejection text is cut inside it
    # link/actions.py loaded for the call and forgotten, as a node loads it (per command)
    cmd = run("meternode.link.actions", "make_command", b"x" * 32, "n1", "read_now", None, 1, NOW + 60, mid)
    log = RecordLog(scratch_dir() + "/log")

    def event(code, arg, text):
        log.append(records.EVENT, NOW, records.event(code, arg, text))

    c = Commands("n1", KEY, scratch_dir() + "/ctr", Clock(), None, event)
    r = c.handle(cmd)
    eq((r["ok"], r["id"]), (False, mid), "refused, id echoed whole in the result")
    rd = log.reader()
    rd.seek(1)
    eq(rd.next(), records.EVENT, "event written")
    d = rd.record()
    eq(d["event"], "cmd_rejected", "the rejection event")
    eq(len(d["text"].encode()) <= records.EVENT_TEXT, True, "within the event text size")
    eq(d["text"].startswith("aé"), True, d["text"])
    f = loradecode.decode(loracodec.encode_record(records.EVENT, rd.seq, rd.ts, rd.payload[: rd.n]))
    eq(d["text"].startswith(f["text"]) and len(f["text"]) > 10, True, "and its LoRa frame decodes: %r" % f["text"])


def test_policy_event_with_an_accented_name_is_cut_at_a_character():
    name = "Tarif réglementé d'été"
    p = records.event(records.EV_POLICY, 0, "policy applied v7 %s" % name)
    eq(records.fields(records.EVENT, p)["text"], "policy applied v7 Tarif réglementé d'", "cut before é")


@heap("256k")  # a READING is read by the gateway's reading module
def test_an_event_cut_mid_character_by_older_firmware_still_decodes():
    # What the old records.event() wrote: 40 bytes cut inside a 2-byte character.
    old = b"\x0b\x00\x00\x00\x00" + ("- a" + "é" * 20).encode()[:40]
    eq(records.fields(records.EVENT, old)["text"], "- a" + "é" * 18, "the partial character is dropped")
    raises(ValueError, records.fields, records.EVENT, b"\x0b\x00\x00\x00\x00ab\xffcd")
    raises(ValueError, records.fields, records.READING, b'{"a": "\xff"}')
    raises(loracodec.CodecError, loradecode.decode, loracodec.encode_record(records.EVENT, 1, 1, old)[:-1] + b"\xff")


class Gov:  # no airtime limit: this test is about the records
    def wait_ms(self, n, ticks, now):
        return 0

    def sent_now(self, n, ticks):
        return 0


class Modem:
    def __init__(self):
        self.joined = True
        self.frames = []

    async def join(self):
        pass

    async def send(self, port, frame, confirmed):
        self.frames.append(frame)
        return True


@heap("192k")  # compiled from source: storeinit (RecordLog()) after the LoRa modules
def test_lora_link_skips_a_record_that_does_not_decode_with_an_event_and_goes_on():
    d = scratch_dir()
    log = RecordLog(d + "/log")
    log.append(records.EVENT, NOW, records.event(records.EV_TAMPER, 1, "before"))
    log.append(records.EVENT, NOW, b"\x0b\x00\x00\x00\x00ab\xff\xfecd")  # checks (CRC), does not decode
    log.append(records.EVENT, NOW, records.event(records.EV_TAMPER, 2, "after"))
    events = []

    def event(code, arg, text):
        events.append((code, arg, text))
        return log.append(records.EVENT, NOW, records.event(code, arg, text))

    m = Modem()
    ll = LoRaLink(m, log, Cursor(d + "/lora"), Gov(), Clock(), retry_ms=10)
    ll.event = event

    async def main():
        t = asyncio.create_task(ll.run())
        for _ in range(200):
            await asyncio.sleep_ms(5)
            if len(m.frames) >= 3 or t.done():
                break
        done = t.done()
        t.cancel()
        return done

    eq(asyncio.run(main()), False, "the LoRa task is still running")
    got = [loradecode.decode(f) for f in m.frames]
    eq([(x["seq"], x["text"]) for x in got[:2]], [(1, "before"), (3, "after")], "the bad record is skipped")
    eq((ll.unreadable, ll.cursor.acked >= 3), (1, True), "counted, cursor past it")
    eq((events[0][0], events[0][1]), (records.EV_LOG_CORRUPT, 2), "an event names the seq")
    eq(got[2]["event"], "log_corrupt", "and the event itself goes out")
