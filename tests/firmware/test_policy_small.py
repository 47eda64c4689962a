# LoRa-sized policy changes (price, DR event) authenticated with the node's HMAC key and a
# counter, on the MicroPython unix port.
from policy_fixture import MON_2026_11_23, Relay, compact

from meternode.policy import small, smallenc
from meternode.policy.engine import Engine, seconds
from mptest import eq, heap, scratch_dir

KEY = b"0123456789abcdef0123456789abcdef"


def _node():
    relay = Relay()
    eng = Engine(compact(), relay=relay)
    sc = small.SmallCommands("n1", KEY, scratch_dir() + "/lora.ctr")
    return eng, relay, sc


# The policy compiler, schema and engine and link/commands.py compiled from source: at the
# default 128k their imports leave the heap in pieces (main: 73 KB free, none over 3.3 KB,
# a 640-byte block refused at 124k and 128k, fine at 104-120k and 132k+), so whether this
# module imports at all was down to the heap's layout.  192k, as test_engine and test_bundle.
@heap("192k")
def test_frames_fit_a_dr0_downlink():
    eq(len(smallenc.encode_price(KEY, "n1", 1, 0.31, 30)), 19, "price frame bytes")
    eq(len(smallenc.encode_event(KEY, "n1", 2, MON_2026_11_23, 600)), 20, "event frame bytes")


@heap("192k")
def test_price_and_event_frames_act_on_the_engine():
    eng, relay, sc = _node()
    t = MON_2026_11_23 + 3600
    r = sc.apply(smallenc.encode_price(KEY, "n1", 1, 0.31, 5), eng, t)
    eq((r["ok"], r["price"], r["valid_s"]), (True, 0.31, 300), "price accepted")
    eng.tick(seconds(t), 230.0, 1.0, 50.0, 10.0, 0)
    eq(eng.price, 0.31, "engine uses the pushed price")
    r = sc.apply(smallenc.encode_price(KEY, "n1", 3, 0.32, 120), eng, t)
    eq(r["valid_s"], 600, "the answer says what is in force: 2 h asked, the policy's realtime_max_s 600")
    r = sc.apply(smallenc.encode_event(KEY, "n1", 4, t + 10, 60), eng, t)
    eq(
        (r["ok"], r["rules"]),
        (
            True,
            1,
        ),
        "event accepted by one rule",
    )
    eng.tick(seconds(t + 10), 230.0, 1.0, 50.0, 10.0, 0)
    eq(relay.on, False, "shed at the event start")


@heap("192k")
def test_forged_replayed_and_foreign_frames_have_no_effect():
    eng, relay, sc = _node()
    t = MON_2026_11_23 + 3600
    good = smallenc.encode_event(KEY, "n1", 5, t, 60)
    bad = bytearray(good)
    bad[7] ^= 1  # start time changed, tag kept
    cases = (
        (bytes(bad), "unauthenticated"),
        (smallenc.encode_event(b"x" * 32, "n1", 6, t, 60), "unauthenticated"),
        (smallenc.encode_event(KEY, "n2", 7, t, 60), "unauthenticated"),  # another node's frame
        (good[:-1], "malformed"),
        (smallenc.encode_event(KEY, "n1", 8, t + 2 * 86400, 60), "expired"),
    )
    for frame, why in cases:
        r = sc.apply(frame, eng, t)
        eq((r["ok"], r["why"].split(":")[0]), (False, why), why)
    eq(sc.apply(good, eng, t)["ok"], True, "the genuine frame")
    r = sc.apply(good, eng, t)
    eq((r["ok"], r["why"].split(":")[0]), (False, "replayed"), "the same frame again")
    # the counter survives a restart
    sc2 = small.SmallCommands("n1", KEY, sc._ctr.path)
    eq(sc2.apply(good, eng, t)["why"].split(":")[0], "replayed", "replay after a reboot")
    eng.tick(seconds(t), 230.0, 1.0, 50.0, 10.0, 0)
    eq(relay.on, False, "only the genuine event acted")


@heap("192k")
def test_one_frame_cannot_use_up_the_counter_space():
    # Issue 10 row 13: after a frame with counter 0xFFFFFFFF no frame was ever accepted again.
    eng, relay, sc = _node()
    t = MON_2026_11_23 + 3600
    r = sc.apply(smallenc.encode_price(KEY, "n1", 0xFFFFFFFF, 0.3, 5), eng, t)
    eq((r["ok"], r["why"]), (False, "invalid: counter 4294967295 is more than 65536 above 0"), "refused")
    eq(sc.apply(smallenc.encode_price(KEY, "n1", 65536, 0.3, 5), eng, t)["ok"], True, "a step of 65536 is allowed")
    eq(sc.apply(smallenc.encode_price(KEY, "n1", 65537, 0.3, 5), eng, t)["ok"], True, "and frames go on")
    eq(small.SmallCommands("n1", KEY, sc._ctr.path)._ctr.acked, 65537, "persisted")
