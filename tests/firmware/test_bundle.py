# Signed bundles checked on the MicroPython unix port with the firmware's own Ed25519:
# every kind of bad bundle is refused with its reason and changes nothing.
import json
import os

import bundle_fixture as F

from meternode.policy.agent import Agent, check_identity
from meternode.policy.bundle import Rejected, Verifier
from mptest import eq, heap, raises, scratch_dir


class Clock:
    def __init__(self, t):
        self.t = t

    def time(self):
        return self.t


def _agent(root=None, events=None):
    root = root or scratch_dir()
    ev = events if events is not None else []
    return Agent("n1", F.FLEET, root, Clock(F.NOW), event=lambda k, t: ev.append((k, t)))


def _why(res):
    return res.get("why", "").split(":")[0]


@heap("192k")
def test_good_policy_bundle_applies_and_reports():
    applied = []
    a = _agent()
    a.on_policy = applied.append
    r = a.handle_policy(F.POLICY_V2)
    eq((r["ok"], r["status"], r["version"], r["campaign"]), (True, "applied", 2, "c1"), "result")
    eq(a.policy()["n"], "v2", "policy in force")
    eq(len(applied), 1, "engine told once")
    # survives a restart: a new agent on the same directory loads it
    b = _agent(a.store.dir[: -len("/policy")])
    eq((b.policy_version(), b.policy()["n"]), (2, "v2"), "after restart")


@heap("192k")
def test_every_bad_bundle_is_rejected_with_its_reason_and_no_effect():
    events = []
    a = _agent(events=events)
    eq(a.handle_policy(F.POLICY_V2)["ok"], True, "baseline v2")
    before = open(a.store.dir + "/active.json").read()
    cases = (
        ("POLICY_V1_OLD", "not newer"),
        ("POLICY_OTHER_NODE", "not targeted"),
        ("POLICY_EXPIRED", "expired"),
        ("POLICY_OTHER_FLEET", "wrong fleet"),
        ("POLICY_OTHER_KEY", "unknown key"),
        ("POLICY_UNSIGNED", "unsigned"),
        ("POLICY_MANIFEST_EDITED", "bad signature"),
        ("POLICY_FILE_EDITED", "bad file"),
        ("POLICY_BAD_SCHEMA", "bad policy"),
        ("FIRMWARE_V5", "wrong kind"),
    )
    for name, why in cases:
        r = a.handle_policy(getattr(F, name))
        eq((r["ok"], r["status"], _why(r)), (False, "rejected", why), name)
        eq(r["version"], 2, name + " reports the version still in force")
    eq(open(a.store.dir + "/active.json").read(), before, "active policy untouched")
    eq(a.policy_version(), 2, "version")
    rej = [t for k, t in events if t.startswith("rejected")]
    eq(len(rej), len(cases), "one event per rejection")
    r = a.handle_policy(b"{not json")
    eq((r["ok"], _why(r)), (False, "malformed"), "garbage")


@heap("192k")
def test_a_policy_in_another_time_than_the_nodes_billing_time_is_rejected_unless_it_moves_it():
    # The fixtures' policies have their tariff hours in UTC (utc_offset_min 0); a node billing
    # in Central European time (config utc_offset_min 60) would switch tariffs an hour off its
    # own midnight and freezes: refused, naming both and how to move it, nothing applied. The
    # same policy signed to move the billing time (manifest billing_tz 0) is applied, and the
    # move is an event (the service then bills in it: test_policy_service.py).
    from meternode import ticks

    ev = []
    applied = []
    a = _agent(events=ev)
    a.on_policy = applied.append
    ticks.LOCAL_S = 3600
    try:
        r = a.handle_policy(F.POLICY_V2)
        why = "bad policy: utc_offset_min 0, the node bills in 60 (to move it there: sign with --move-billing-time)"
        eq((r["ok"], r["status"], r["why"]), (False, "rejected", why), "")
        eq((a.policy_version(), applied), (0, []), "nothing applied")
        r = a.handle_policy(F.POLICY_V2_MOVES_BILLING)
        eq((r["ok"], r["status"], a.policy_version()), (True, "applied", 2), "signed to move it: applied")
        eq(ev[-2:], [("policy", "billing time 0 min, was 60"), ("policy", "applied v2 v2")], "")
        eq([p["tz"] for p in applied], [0], "handed to the service with its time")
    finally:
        ticks.LOCAL_S = 0
    b = _agent(scratch_dir() + "/b")
    eq(b.handle_policy(F.POLICY_V2)["status"], "applied", "the unmoving bundle on a node billing in UTC")
    eq(b.handle_policy(F.POLICY_V2_MOVES_BILLING)["why"][:11], "not newer: ", "(the same version)")


@heap("192k")
def test_group_target_and_replay_of_the_same_bundle():
    a = _agent()
    eq(a.handle_policy(F.POLICY_V3_GROUP)["status"], "applied", "group north")
    r = a.handle_policy(F.POLICY_V3_GROUP)
    eq((r["ok"], _why(r)), (False, "not newer"), "the same bundle again is a replay")
    r = a.handle_policy(F.POLICY_V2)
    eq((r["ok"], _why(r)), (False, "not newer"), "downgrade")
    eq(a.store.previous(), None, "no previous before the second apply")


@heap("192k")
def test_previous_policy_is_kept():
    a = _agent()
    a.handle_policy(F.POLICY_V2)
    a.handle_policy(F.POLICY_V3_GROUP)
    eq(a.store.previous()["version"], 2, "previous.json holds v2")
    eq(sorted(os.listdir(a.store.dir)), ["active.json", "previous.json"], "no staged leftovers")


@heap("192k")
def test_identity_errors_name_the_key():
    e = raises(ValueError, check_identity, {"name": "x", "keys": {"abc": "00" * 32}})
    if "config.fleet.keys.abc" not in str(e):
        raise AssertionError(str(e))
    e = raises(ValueError, check_identity, {"name": "x", "keys": {"abc": "zz"}})
    if "64 hex" not in str(e):
        raise AssertionError(str(e))
    raises(ValueError, check_identity, {"keys": {}})


@heap("192k")
def test_verifier_refuses_an_unset_clock():
    _, _, keys = check_identity(F.FLEET)
    v = Verifier(keys, "n1", "test", ["north"])
    e = raises(Rejected, v.verify, F.POLICY_V2, "policy", 0, 1000)
    eq(str(e).split(":")[0], "clock not set", "1970 clock")
    man, mtext, files = v.verify(F.POLICY_V2, "policy", 0, F.NOW)
    eq(json.loads(files["policy.json"])["n"], "v2", "files come back verified")


@heap("192k")
def test_manifest_file_names_are_relative_ascii_paths_without_dot_parts():
    # bundle.check_manifest's file-name rule, checked byte by byte (a str iterated would
    # intern every character): letters, digits, '_', '-', '.', '/'; no leading '/', no empty,
    # '.' or '..' part; at most 96 bytes.
    from meternode.policy.bundle import check_manifest

    def man(name):
        fi = {"sha256": "0" * 64, "size": 1}
        return {"kind": "policy", "fleet": "f", "target": {}, "version": 1, "expires": 1, "files": {name: fi}}

    for ok in ("policy.json", "lib/meternode/a_b-c.1.mpy", "a/.../b", ".hidden", "x" * 96, "Z9/z0"):
        eq(check_manifest(man(ok)), None, ok)
    bad = ("", "/abs", "a//b", "a/", "./a", "a/./b", "../a", "a/../b", "a/..", "sp ace", "é.py", "a\\b", "x" * 97)
    for name in bad:
        e = raises(Rejected, check_manifest, man(name))
        eq(str(e).startswith("malformed: file name"), True, (name, str(e)))


@heap("288k")  # + the 48-KB flash in RAM
def test_a_bundle_that_meets_a_full_flash_fails_saying_so_and_the_next_one_applies():
    # A policy arriving while the flash is full (the record log at its bound, an OTA staged):
    # the agent cannot store it; it answers "failed" naming the full flash, keeps the policy in
    # force and records the same as an event. Sent again once there is room, it applies.
    import ramflash

    ramflash.mount("/full", 48)
    events = []
    a = Agent("n1", F.FLEET, "/full", Clock(F.NOW), event=lambda k, t: events.append((k, t)))
    ramflash.fill("/full/filler")
    small = 0  # and the room left in the directory's metadata, where small files live
    while True:
        try:
            with open("/full/f%d" % small, "wb") as f:
                f.write(b"x" * 64)
        except OSError:
            break
        small += 1
    r = a.handle("policy/bundle", F.POLICY_V2)
    eq(r[0], "policy/result", "answered on the policy result topic")
    eq((r[1]["ok"], r[1]["status"], r[1]["version"]), (False, "failed", 0), "failed, nothing in force")
    eq(r[1]["why"].startswith("flash full: the bundle could not be stored"), True, r[1]["why"])
    eq(events[-1][1].startswith("flash full"), True, "the event says so too")
    os.remove("/full/filler")
    for k in range(small + 1):
        try:
            os.remove("/full/f%d" % k)
        except OSError:
            pass
    r = a.handle("policy/bundle", F.POLICY_V2)
    eq((r[1]["ok"], r[1]["status"], a.policy_version()), (True, "applied", 2), "applied once there is room")
