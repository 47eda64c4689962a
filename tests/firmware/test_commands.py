# Authenticated commands, on the MicroPython unix port.
import hashlib

from meternode.link import commands
from meternode.link.commands import Commands, hmac_sha256, make_command
from meternode.store import records
from mptest import eq, raises, scratch_dir

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1800000000


class Clock:
    def __init__(self):
        self.t = NOW

    def time(self):
        return self.t


class Actions:
    def __init__(self):
        self.cfg = {"telemetry_s": 10.0, "profile_s": 900, "mqtt.backlog_rate": 20.0, "mqtt.keepalive": 30}
        self.relay_on = None
        self.time_set = None

    def read_now(self):
        return {"v": 230.0}

    def get_config(self, k):
        return self.cfg[k]

    def set_config(self, k, v):
        self.cfg[k] = v

    def relay(self, on):
        self.relay_on = on
        return True

    def set_time(self, e):
        self.time_set = e

    def reboot(self):
        pass


def _rig():
    ev = []
    act = Actions()
    c = Commands("n1", KEY, scratch_dir() + "/cmd.ctr", Clock(), act, lambda code, arg, text: ev.append((code, text)))
    return c, act, ev


def _cmd(op, args=None, ctr=1, exp=NOW + 60, node="n1", key=KEY, mid="m1"):
    return make_command(key, node, op, args, ctr, exp, mid)


def test_hmac_sha256_matches_rfc4231_case_2():
    mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    eq(commands._hex(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 #2")
    long_key = bytes([0xAA] * 131)
    mac = hmac_sha256(long_key, b"Test Using Larger Than Block-Size Key - Hash Key First")
    eq(commands._hex(mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", "RFC 4231 #6")
    eq(len(hashlib.sha256(b"").digest()), 32, "sha256 available")


def test_valid_commands_act_and_say_so():
    c, act, ev = _rig()
    r = c.handle(_cmd("read_now", ctr=1))
    eq((r["ok"], r["id"], r["result"]), (True, "m1", {"v": 230.0}), "read_now")
    r = c.handle(_cmd("set", {"key": "telemetry_s", "value": 5}, ctr=2))
    eq(r["result"], {"key": "telemetry_s", "old": 10.0, "new": 5.0}, "set keeps the old value")
    eq(act.cfg["telemetry_s"], 5.0, "applied")
    r = c.handle(_cmd("rollback", {"key": "telemetry_s"}, ctr=3))
    eq((r["ok"], act.cfg["telemetry_s"]), (True, 10.0), "rolled back")
    r = c.handle(_cmd("relay", {"on": True}, ctr=4))
    eq((r["ok"], act.relay_on), (True, True), "relay on")
    r = c.handle(_cmd("time", {"epoch": NOW + 100}, ctr=5))
    eq((r["result"]["delta_s"], act.time_set), (100, NOW + 100), "time sync")
    r = c.handle(_cmd("reboot", ctr=6))
    eq((r["ok"], c.reboot_pending), (True, True), "reboot requested")
    eq(
        [e[0] for e in ev],
        [records.EV_CONFIG, records.EV_CONFIG, records.EV_RELAY, records.EV_TIME_SET, records.EV_REBOOT],
        "events",
    )


def test_bad_commands_have_no_effect_and_say_why():
    c, act, ev = _rig()
    cases = [
        (b"not json", "malformed"),
        (_cmd("relay", {"on": True}, key=b"x" * 32), "unauthenticated"),
        (_cmd("relay", {"on": True}, node="other"), "wrong node"),
        (_cmd("relay", {"on": True}, exp=NOW - 5), "expired"),
        (_cmd("relay", {"on": True}, exp=NOW + 3 * 86400), "invalid: expiry"),
        (_cmd("explode"), "invalid: unknown op"),
        (_cmd("set", {"key": "node_id", "value": "x"}), "invalid: key"),
        (_cmd("set", {"key": "telemetry_s", "value": 0}), "invalid: telemetry_s = 0.0 is outside"),
        (_cmd("set", {"key": "profile_s", "value": "fast"}), "invalid: profile_s must be int"),
        (_cmd("relay", {"on": "yes"}), "invalid: relay needs"),
        (_cmd("time", {"epoch": 5}), "invalid: time needs"),
    ]
    for payload, why in cases:
        r = c.handle(payload)
        eq(r["ok"], False, "refused: %s" % why)
        eq(r["why"].startswith(why), True, "reason %r starts with %r" % (r["why"], why))
    eq(act.relay_on, None, "relay untouched")
    eq(act.cfg["telemetry_s"], 10.0, "config untouched")
    eq(len(ev), len(cases), "one event per rejection")
    eq(ev[0][0], records.EV_CMD_REJECTED, "event code")


def test_tampered_body_is_refused():
    c, act, ev = _rig()
    good = _cmd("relay", {"on": False}, ctr=1)
    bad = good.replace(b'\\"on\\": false', b'\\"on\\": true')
    eq(bad != good, True, "tampered")
    r = c.handle(bad)
    eq((r["ok"], r["why"][:15], act.relay_on), (False, "unauthenticated", None), "tampered body refused")


def test_replayed_counter_refused_even_after_restart():
    c, act, ev = _rig()
    eq(c.handle(_cmd("read_now", ctr=7))["ok"], True, "first use")
    r = c.handle(_cmd("read_now", ctr=7))
    eq(r["why"], "replayed: counter 7 is not above 7", "replay")
    c2 = Commands("n1", KEY, scratch_dir() + "/cmd.ctr", Clock(), act, lambda *a: None)
    eq(c2.handle(_cmd("read_now", ctr=6))["why"][:8], "replayed", "counter persisted across restart")
    eq(c2.handle(_cmd("read_now", ctr=8))["ok"], True, "higher counter accepted")


def test_short_key_is_a_config_error():
    e = raises(ValueError, Commands, "n1", "abcd", scratch_dir() + "/c", Clock(), Actions(), None)
    eq("cmd_key" in str(e), True, str(e))
