# A seeded fuzzer for every firmware parser that takes bytes from outside (issue 10, item 4).
# Runs on the MicroPython unix port (tests/firmware/test_fuzz.py: a small budget in the
# normal suite) and on CPython (the host reuses the same parsers); benchmarks/fuzz.py runs a
# large budget per parser on the unix port at the sim board's heap.
#
#   r = await run("command_envelopes", 500, seed=1, scratch="/tmp/x")
#   -> {"parser", "cases", "uncaught", "examples", "heap_growth_bytes"}
#
# Each target makes its cases from valid seeds by random mutation (bit flips, bytes set,
# inserted, deleted, duplicated, truncated, spliced, JSON tokens and awkward numbers), and
# where the bytes are authenticated, also from structured generators that compute the MAC,
# so the code behind the authentication is reached too.  A target names the exceptions its
# parser documents (e.g. CodecError); anything else escaping it is `uncaught`.  The heap is
# measured after a warm-up (first use fills caches and bounded queues) and then every 250
# cases after a collection: `heap_growth_bytes` is the largest rise over that base.
import gc
import json
import os
import struct
from binascii import b2a_base64, hexlify

# -- a PRNG that gives the same cases on every port ----------------------------------------------


class Rng:
    def __init__(self, seed):
        self.s = ((seed * 2654435761) ^ 0x5BD1E995) & 0xFFFFFFFF or 1

    def u32(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.u32() % n if n > 0 else 0

    def chance(self, k):
        return self.below(k) == 0

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, n):
        return bytes(self.below(256) for _ in range(n))


_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0xC0, 0xC3, 0xE2, 0xF0, 0xF8, 0x22, 0x5C, 0x0A, 0x0D)
_TOKENS = (
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"false",
    b"-0",
    b"0",
    b"1e400",
    b"-1e400",
    b"NaN",
    b"Infinity",
    b"1.5",
    b"-1",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"1180591620717411303424",
    b"9007199254740993",
    b'"\\ud800"',
    b'"\\u0000"',
    b'"\xc3"',
    b'"\xff\xfe"',
    "é€𝄞".encode(),
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"[" * 40,
    b"[" * 1500,  # deeper than CPython's recursion limit
    b"{}",
    b"[]",
    b'""',
    b'"a"',
    b"=",
    b"/",
    b"..",
    b"%",
)
_NUMBERS = (
    b"0",
    b"-1",
    b"1",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9007199254740992",
    b"18446744073709551615",
    b"1180591620717411303424",
    b"-9223372036854775809",
    b"1e400",
    b"1.5",
    b"1e-400",
    b"-0",
    b"NaN",
    b"[1]",
    b"{}",
    b'"1"',
    b"true",
    b"null",
)


def _digits(b, i):
    # the run of digits (with sign, point, exponent) starting at or after i, or None
    n = len(b)
    while i < n and not (48 <= b[i] <= 57):
        i += 1
    if i >= n:
        return None
    j = i
    while j < n and (48 <= b[j] <= 57 or b[j] in (0x2E, 0x65, 0x45, 0x2B, 0x2D)):
        j += 1
    return i, j


def mutate(rng, data, seeds):
    # (bytes concatenation throughout: MicroPython's bytearray cannot delete or insert)
    b = bytes(data)
    for _ in range(1 + rng.below(4)):
        n = len(b)
        op = rng.below(11)
        i = rng.below(n + 1)
        if op == 0 and n:  # flip a bit
            i = rng.below(n)
            b = b[:i] + bytes((b[i] ^ (1 << rng.below(8)),)) + b[i + 1 :]
        elif op == 1 and n:  # set a byte
            i = rng.below(n)
            v = rng.pick(_BYTES) if rng.chance(2) else rng.below(256)
            b = b[:i] + bytes((v,)) + b[i + 1 :]
        elif op == 2:  # insert bytes
            b = b[:i] + rng.bytes(1 + rng.below(16)) + b[i:]
        elif op == 3 and n:  # delete a range
            b = b[:i] + b[i + 1 + rng.below(16) :]
        elif op == 4 and n:  # duplicate a range
            j = i + 1 + rng.below(32)
            b = b[:j] + b[i:j] + b[j:]
        elif op == 5 and n:  # truncate
            b = b[:i]
        elif op == 6 and seeds:  # splice with another seed
            o = rng.pick(seeds)
            b = b[:i] + o[rng.below(len(o) + 1) :]
        elif op == 7:  # a JSON token or awkward bytes
            b = b[:i] + rng.pick(_TOKENS) + b[i:]
        elif op in (8, 9) and n:  # an awkward number where a number was
            r = _digits(b, rng.below(n))
            if r:
                b = b[: r[0]] + rng.pick(_NUMBERS) + b[r[1] :]
        elif op == 10 and n > 2:  # swap two bytes
            i = rng.below(n)
            j = rng.below(n)
            if i > j:
                i, j = j, i
            if i < j:
                b = b[:i] + b[j : j + 1] + b[i + 1 : j] + b[i : i + 1] + b[j + 1 :]
    return b[:4096]


# -- the targets -----------------------------------------------------------------------------------

NOW = 1795388400  # the bundle fixture's clock
KEY = bytes(range(32))


class Clock:
    def __init__(self, t=NOW):
        self.t = t

    def time(self):
        return self.t

    def set_time(self, e):
        self.t = e


def _rmtree(p):
    from meternode.policy.ota import _rmtree as rm  # the firmware's own (slots are removed with it)

    rm(p)


class Target:
    is_async = False
    expected = ()
    structured = 0  # 1 in `structured` cases come from gen() instead of mutation (0: never)
    outcomes = None  # what the cases led to ({word: count}): shows what the run reached

    def saw(self, what):
        o = self.outcomes
        if o is None:
            o = self.outcomes = {}
        if what in o or len(o) < 24:
            o[what] = o.get(what, 0) + 1

    def case(self, rng):
        if self.structured and rng.chance(self.structured):
            return self.gen(rng)
        if rng.chance(16):
            return rng.pick(self.seeds)
        return mutate(rng, rng.pick(self.seeds), self.seeds)


class _Sock:
    # A non-blocking socket over fixed bytes: nothing there (None) before every other piece,
    # 0 at the end, like a closed socket; whatever is written is counted.
    def __init__(self, data):
        self.d = data
        self.i = 0
        self.n = 0
        self.looks = 0

    def readinto(self, mv):
        # whatever is there, up to len(mv) (here in pieces of 1..n, so that packets arrive
        # split at every possible place)
        self.looks += 1
        if self.looks % 3 == 0:
            return None
        n = len(mv)
        k = 1 + (self.i * 7 + 3) % n if n > 1 else 1
        b = self.d[self.i : self.i + k]
        self.i += len(b)
        mv[: len(b)] = b
        return len(b)

    def write(self, b):
        self.n += len(b)
        return len(b)

    def close(self):
        pass


def _pub(topic, payload, qos=0, pid=7, retain=False):
    from meternode.link.mqttconn import publish_packet

    return publish_packet(topic, payload, qos, retain, pid)


class MqttPackets(Target):
    # Bytes from a (malicious) broker: the client's packet reader and dispatch, then the
    # node's routing of each PUBLISH (commands, resend requests, the policy service's topics).
    is_async = True

    def __init__(self, scratch):
        from meternode import ticks
        from meternode.link.mqtt import MQTTClient, MQTTError
        from meternode.link.outbox import Outbox
        from meternode.link.uplink import MqttLink
        from meternode.store.log import Cursor, RecordLog

        self.expected = (MQTTError, EOFError)
        log = RecordLog(scratch + "/log")
        ob = Outbox(log, Cursor(scratch + "/cursor"), "fz")
        self.cmds = []
        self.link = MqttLink("fz", {"host": "x"}, ob, self.cmds.append, None, log=lambda m: None)
        self.link.extra_topics["policy/small"] = lambda p, r: None
        self.c = MQTTClient("fz", "x")
        self.c.on_message = self.link._on_message
        self.c.on_ack = ob.on_ack
        self.now = ticks.ms
        self.seeds = [
            b"\x20\x02\x00\x00",
            b"\x20\x02\x01\x05",
            _pub("umeter/fz/cmd", b'{"body": "{}", "hmac": "00"}', 1),
            _pub("umeter/fz/resend", b"12", 1),
            _pub("umeter/fz/policy/small", b"\x11" + bytes(18), 0),
            _pub("umeter/other/cmd", b"x" * 300, 1, 9, True),
            b"\x40\x02\x00\x01",
            b"\x90\x03\x80\x01\x80",
            b"\xd0\x00",
            b"\x30\x82\x01" + _pub("umeter/fz/cmd", b"y" * 120)[3:],
            _pub("umeter/fz/cmd", b"a") + b"\x40\x02\x00\x02" + _pub("umeter/fz/resend", b"99999999999999999999", 1),
            # longer than the 1-KB receive buffer, and one that straddles its end
            _pub("umeter/fz/policy/small", b"z" * 3000, 1, 11) + _pub("umeter/fz/cmd", b"b" * 900, 1, 12),
        ]

    async def run(self, data):
        c = self.c
        c._w = _Sock(data)
        c._lo = c._hi = 0
        c.connected = True
        c._last_rx = c._ping = self.now()  # as connect() leaves them: the keepalive counts from here
        del self.cmds[:]
        try:
            while True:
                head, body = await c._read_packet()
                self.saw("packet %02x" % (head & 0xF0))
                await c._dispatch(head, body)
        finally:
            if self.cmds:
                self.saw("commands")


class CommandEnvelopes(Target):
    # …/cmd payloads through the uplink service (Commands, its result queue and events into a
    # real record log).  Half the cases carry a correct HMAC over a random body.
    structured = 2

    def __init__(self, scratch):
        from meternode.link.actions import make_command
        from meternode.link.service import UplinkService

        self.make = make_command
        self.node = _Node(scratch, {"cmd_key": hexlify(KEY).decode(), "store": {"path": scratch + "/st"}})
        self.svc = UplinkService(self.node, reason="fuzz")
        self.node._uplink = self.svc
        self.ctr = 1
        self.seeds = [
            make_command(KEY, "fz", "read_now", None, 1, NOW + 60, "a"),
            make_command(KEY, "fz", "set", {"key": "telemetry_s", "value": 5}, 2, NOW + 60, "b"),
            make_command(KEY, "fz", "rollback", {"key": "telemetry_s"}, 3, NOW + 60, "c"),
            make_command(KEY, "fz", "relay", {"on": False}, 4, NOW + 60, "d"),
            make_command(KEY, "fz", "time", {"epoch": NOW + 5}, 5, NOW + 60, "e"),
            make_command(b"x" * 32, "fz", "reboot", None, 6, NOW + 60, "é" * 32),
        ]

    def gen(self, rng):
        ops = ("read_now", "set", "rollback", "relay", "time", "reboot", "x", 7, None)
        keys = ("telemetry_s", "profile_s", "mqtt.backlog_rate", "mqtt.keepalive", "node_id", "", [1], None, 3)
        vals = (0, 1, -1, 0.5, 86400, 86401, 1e300, 2**70, "5", None, True, [], {}, 900, 7 * 60 + 1, 60)
        op = rng.pick(ops)
        args = {}
        for _ in range(rng.below(4)):
            k = rng.pick(("key", "value", "on", "epoch", "x"))
            if k == "key":
                args[k] = rng.pick(keys)
            elif k == "epoch":
                args[k] = rng.pick((NOW, NOW + 86401, NOW * 1000, 0, -1, 2**40, "now", 1577836800, 4102444799))
            elif k == "on":
                args[k] = rng.pick((True, False, 1, "on", None))
            else:
                args[k] = rng.pick(vals)
        ctr = self.svc.commands._ctr.acked + rng.pick((1, 1, 2, 0, -5, 1 << 32, (1 << 32) + 1, 1 << 60))
        exp = int(self.svc.clock.time()) + rng.pick((60, 60, -1, 86401, 0))
        mid = rng.pick(("m", "é" * 16, "a" * 33, "", "x"))
        body = {"id": mid, "node": rng.pick(("fz", "fz", "other")), "ctr": ctr, "exp": exp, "op": op}
        if not rng.chance(8):
            body["args"] = args if not rng.chance(8) else rng.pick(([], "a", None, 5))
        text = json.dumps(body)
        from meternode.link.actions import _hex
        from meternode.link.commands import hmac_sha256

        return json.dumps({"body": text, "hmac": _hex(hmac_sha256(KEY, text.encode()))}).encode()

    def run(self, data):
        svc = self.svc
        svc._on_command(data)
        r = json.loads(svc._results[-1][1])
        if r.get("status") not in ("done", "rejected", "failed"):
            raise AssertionError("no status in %r" % (r,))
        self.saw(r["status"] + (":" + r["why"].split(":")[0] if "why" in r else ""))
        svc.commands.reboot_pending = False  # a fuzzed reboot must not end the run
        if len(svc._results) > 8:
            raise AssertionError("result queue over its bound")


class _Regs:
    def total_import(self):
        return 123456

    def tariff_registers(self, t):
        return 0, 0

    def set_tariff(self, i):
        pass


class _Meter:
    def __init__(self):
        from meternode.metrology.timebase import Seconds

        self.p = [1500.0]
        self.irms = [6.5]
        self.vrms = [231.0, 0.0, 0.0]
        self.v_channel = 0
        self.freq = 50.0
        self.cycles = 500
        self.registers = _Regs()
        self.seconds = Seconds(4000)

    def set_tariff(self, i):
        pass

    def snapshot(self):
        return None


class _Hal:
    def __init__(self):
        self.clock = Clock()


class _Node:
    def __init__(self, root, extra=None):
        self.id = "fz"
        self.config = {"node_id": "fz", "policy_dir": root, "mqtt": {"host": "x", "prefix": "umeter"}}
        self.config.update(extra or {})
        self.meter = _Meter()
        self.hal = _Hal()
        self.board = {"name": "sim"}
        self.mains = None
        self.last = '{"v": 230.0}'
        self.seq = 0
        self.link_up = True
        self._uplink = None

    @property
    def uplink_service(self):
        return self._uplink


def _trust(pub, msg, sig):
    return True


class PolicyBundles(Target):
    # …/policy/bundle payloads through the agent.  Most cases go to an agent whose signature
    # check says yes (what a holder of the fleet key could send, and where the parsing is);
    # 1 in 16 to one with the real Ed25519 check.
    def __init__(self, scratch):
        import bundle_fixture as F

        from meternode.policy.agent import Agent

        self.real = Agent("n1", F.FLEET, scratch + "/r", Clock())
        self.trusting = Agent("n1", F.FLEET, scratch + "/t", Clock(), sigcheck=_trust)
        self.seeds = [
            F.POLICY_V2,
            F.POLICY_V3_GROUP,
            F.POLICY_OTHER_NODE,
            F.POLICY_EXPIRED,
            F.POLICY_BAD_SCHEMA,
            F.POLICY_FILE_EDITED,
            F.POLICY_UNSIGNED,
        ]

    def run(self, data):
        a = self.real if data and data[-1] & 15 == 0 else self.trusting
        r = a.handle("policy/bundle", data)
        if not (isinstance(r, tuple) and isinstance(r[1], dict) and "status" in r[1]):
            raise AssertionError("bad result %r" % (r,))
        json.dumps(r[1])
        self.saw(("real " if a is self.real else "") + r[1]["status"] + ":" + r[1].get("why", "").split(":")[0])
        a.record = None  # let the next bundle be "newer" again: keep exploring


class OtaMessages(Target):
    # …/ota messages (begin with an envelope, file chunks, end) through a trusting agent.
    structured = 2

    def __init__(self, scratch):
        import bundle_fixture as F

        from meternode.policy.agent import Agent

        self.F = F
        self.root = scratch + "/ota"
        self.a = Agent("n1", F.FLEET, self.root, Clock(), sigcheck=_trust)
        self.begin = json.dumps({"op": "begin", "bundle": F.FIRMWARE_V5_STREAMED.decode()}).encode()
        chunk = b"def hello():\n    return 'new build'\n" * 4
        # a manifest that streams in (its size, then chunks without a name): 40 bytes, so that
        # random chunks complete it and the reader of a staged manifest gets random text
        sig = json.loads(F.FIRMWARE_V5_STREAMED)["s"]
        self.mbegin = json.dumps({"op": "begin", "bundle": {"m": 40, "s": sig}}).encode()
        self.seeds = [
            self.begin,
            self.mbegin,
            self._file(None, 0, b'{"files": {"a": {"size": 1}}, "x": [1, "'),
            json.dumps({"op": "begin", "bundle": F.FIRMWARE_V5.decode()}).encode(),
            self._file("meternode/extra/hello.py", 0, chunk),
            self._file("meternode/__init__.py", 0, b'VERSION = "9.0.0"\n'),
            b'{"op": "end"}',
            b'{"op": "file", "name": "../boot.py", "off": 0, "data": ""}',
        ]

    def _file(self, name, off, data):
        return json.dumps({"op": "file", "name": name, "off": off, "data": b2a_base64(data).decode()}).encode()

    def gen(self, rng):
        names = ("meternode/extra/hello.py", "meternode/__init__.py", "../x", "", None, 5, "a/" * 60)
        offs = (0, 0, 144, -1, 1 << 40, "0", 1.5, None)
        k = rng.below(4)
        if k == 0:
            return self.begin if rng.chance(2) else self.mbegin
        if k == 1:
            return b'{"op": "end"}'
        d = rng.bytes(rng.below(300))
        msg = {"op": "file", "name": rng.pick(names), "off": rng.pick(offs)}
        msg["data"] = b2a_base64(d).decode() if rng.chance(2) else rng.pick(("", "!!", "QQ", "QQ=", 5))
        return json.dumps(msg).encode()

    def run(self, data):
        r = self.a.handle("ota", data)
        if r is not None and not (isinstance(r, tuple) and (r[1] is None or isinstance(r[1], dict))):
            raise AssertionError("bad result %r" % (r,))
        self.saw("none" if r is None or r[1] is None else r[1]["status"] + ":" + r[1].get("why", "").split(":")[0])
        if r is not None and r[1] is not None:
            json.dumps(r[1])
            if r[1].get("status") == "staged":
                # a staged build: forget it so that staging goes on being exercised
                _rmtree(self.root + "/fw")
                os.mkdir(self.root + "/fw")
                self.a.slots._staging = None


class SmallFrames(Target):
    # LoRa-sized policy frames (policy/small, LoRa downlinks on the policy port) through
    # the policy service.  Half the cases carry a correct HMAC over random fields.
    structured = 2

    def __init__(self, scratch):
        from policy_fixture import compact

        from meternode.link import loraservice
        from meternode.policy import rare, smallenc
        from meternode.policy.service import PolicyService

        self.smallenc = smallenc
        self.loraservice = loraservice
        node = _Node(scratch, {"cmd_key": hexlify(KEY).decode(), "policy": compact()})
        self.node = node
        self.svc = PolicyService(node, log=lambda m: None)
        rare.smalls(self.svc)  # the small-frame handler, as the first frame makes it

        class _Up:
            link = None
            lora_ports = {}

        self.up = _Up()
        self.up.link = type("L", (), {"extra_topics": {}, "up": False, "client": None})()
        node._uplink = self.up
        self.svc._register()
        self.seeds = [
            smallenc.encode_price(KEY, "fz", 1, 0.25, 5),
            smallenc.encode_event(KEY, "fz", 2, NOW + 60, 600, 1),
            smallenc.encode_event(KEY, "fz", 3, NOW, 60),
            smallenc.encode_cancel(KEY, "fz", 4),
            b"\x11" + bytes(18),
        ]

    def gen(self, rng):
        s = self.smallenc
        acked = self.svc.small._ctr.acked
        ctr = (acked + rng.pick((1, 1, 2, 0, 65536, 65537, 0xFFFFFFFF))) & 0xFFFFFFFF
        k = rng.below(3)
        if k == 0:
            return s.encode_price(KEY, "fz", ctr, rng.u32() / 10000.0, rng.below(65536))
        if k == 1:
            start = NOW + rng.pick((0, 60, -4000, 90000, -(1 << 31)))
            return s.encode_event(KEY, "fz", ctr, start & 0xFFFFFFFF, rng.below(65536), rng.below(256))
        return s.encode_cancel(KEY, "fz", ctr)

    def run(self, data):
        # over MQTT (policy/small) or as a LoRa downlink (on the policy port, now and then another)
        k = data[-1] if data else 0
        if k & 1:
            self.svc._leaf("policy/small", data)
        else:
            self.loraservice.downlink(self.up, 10 if k & 6 else k, data)
        if len(self.svc._out) > 64:
            raise AssertionError("policy queue over its bound")
        if self.svc._out:
            last = json.loads(self.svc._out[-1][1])
            self.saw(last.get("status", "?") + ":" + last.get("why", last.get("op", "")).split(":")[0])


def _reading():
    # A gateway READING payload (gateway/reading.py), imported here so that no case pays for
    # the module's import (it would count as heap growth).
    from meternode.gateway import reading as G

    r = G.Readings(4)
    r.add(G.quantity("1-0:1.8.0"), 12345678, -2, G.unit_index("kWh"))
    r.add(G.quantity("8-0:1.0.0"), 3000, -3, G.unit_index("m³"))
    return G.pack("dlt645-000000123456", r)


class LoraFrames(Target):
    # LoRa uplink frames as the host decodes them (`umeter decode lora`, the JS codec's twin).
    def __init__(self, scratch):
        from meternode.link import loracodec, loradecode
        from meternode.store import records as R

        self.decode = loradecode.decode
        self.expected = (loracodec.CodecError,)
        p = R.profile(900, 123456789, 5500, (2300, 2290, 2310), (1500, 10, 3000), (3450, -20, 6900))
        self.seeds = [
            loracodec.encode_record(R.PROFILE, 7, NOW, p),
            loracodec.encode_record(R.DAILY, 8, NOW, R.freeze(1, 2, 3, 4)),
            loracodec.encode_record(R.MONTHLY, 8, NOW, R.freeze(1, 2, 3, 4, (4100500, NOW))),
            loracodec.encode_record(R.MONTHLY, 8, NOW, R.freeze(1, 2, 3, 4, (4100500, NOW)))[:25],  # older firmware
            loracodec.encode_record(R.EVENT, 9, NOW, R.event(R.EV_TAMPER, 1, "tamper é")),
            loracodec.encode_telemetry(3, NOW, {"v": 230.1, "f": 50.0, "p": 1200.0, "e_imp_wh": 5, "e_exp_wh": 0}),
            loracodec.encode_record(R.READING, 10, NOW, _reading()),
        ]

    def run(self, data):
        try:
            d = self.decode(data)
        except self.expected:
            self.saw("refused")
            raise
        self.saw(d["kind"])
        json.dumps(d)


class StoredRecords(Target):
    # What is on flash after corruption: a segment file, the log's meta and the cursor,
    # opened, read and published (JSON and LoRa frames), then appended to.
    def __init__(self, scratch):
        from meternode.link import loracodec
        from meternode.store import records as R
        from meternode.store.log import Cursor, LogError, RecordLog

        self.R = R
        self.Log = RecordLog
        self.LogError = LogError
        self.Cursor = Cursor
        self.codec = loracodec
        self.dir = scratch + "/seg"
        _rmtree(self.dir)
        log = RecordLog(self.dir, 4096, 16384)
        log.append(R.PROFILE, NOW, R.profile(900, 1, 2, (1, 2, 3), (4, 5, 6), (7, 8, -9)))
        log.append(R.DAILY, NOW, R.freeze(1, 2, 3, 4))
        log.append(R.MONTHLY, NOW, R.freeze(1, 2, 3, 4, (4100500, NOW)))
        log.append(R.MONTHLY, NOW, R.freeze(1, 2, 3, 4))  # stored by a firmware before billing months
        log.append(R.EVENT, NOW, R.event(R.EV_CMD_REJECTED, 3, "a" + "é" * 30))
        log.append(R.READING, NOW, _reading())
        log.append(R.READING, NOW, b'{"obis": "1.8.0", "v": 1}')  # not a READING payload
        log.append(R.EVENT, NOW, b"\x0b\x00\x00\x00\x00ab\xff")  # text cut by an older firmware
        log.mark_sent(3)
        log.close()
        with open(self.dir + "/00000001.seg", "rb") as f:
            seg = f.read()
        with open(self.dir + "/meta", "rb") as f:
            meta = f.read()
        self.seeds = [b"S" + seg, b"M" + meta, b"C" + struct.pack("<III", 5, 0, 0), b"S" + seg + seg[:30]]

    def run(self, data):
        R = self.R
        _rmtree(self.dir)
        os.mkdir(self.dir)
        what = data[:1]
        name = {b"S": "/00000001.seg", b"M": "/meta"}.get(what)
        if name is not None:
            with open(self.dir + name, "wb") as f:
                f.write(data[1:])
        with open(self.dir + ".cursor", "wb") as f:
            f.write(data[1:13] if what == b"C" else b"")
        cur = self.Cursor(self.dir + ".cursor")
        try:
            log = self.Log(self.dir, 4096, 16384, cur.acked)
        except self.LogError:
            self.saw("cursor refused")
            return
        try:
            r = log.reader()
            r.seek(1)
            n = 0
            while r.next() and n < 200:
                n += 1
                payload = r.payload[: r.n]
                try:
                    json.dumps(R.to_json_dict("fz", r.kind, r.seq, r.ts, payload))
                except ValueError:
                    pass  # the publishers send it as `unknown` with its hex (outbox.py)
                try:
                    self.codec.encode_record(r.kind, r.seq, r.ts, payload)
                except ValueError:
                    pass  # CodecError (no layout) or undecodable: LoRaLink skips it
            self.saw("records %d" % min(n, 5))
            if log.corrupt or log.torn:
                self.saw("corrupt/torn")
            log.append(R.EVENT, NOW, R.event(R.EV_REBOOT, 0, "after"))
        finally:
            log.close()


class ModemLines(Target):
    # Bytes from the LoRa modem's UART (the boards branch's LoRaModem.feed, link/lorawan.py):
    # noise, replies, events and downlinks, which it documents as never raising; each
    # downlink goes on to the node's routing by fport (loraservice.downlink).
    def __init__(self, scratch):
        from meternode.link import loraservice
        from meternode.link.lorawan import LoRaModem

        self.m = LoRaModem(None, None)
        self.got = [0]
        got = self.got

        def policy_port(data):
            got[0] += 1

        class _Svc:
            lora_ports = {10: policy_port}

        self.m.on_downlink = lambda port, data: loraservice.downlink(_Svc, port, data)
        self.seeds = [
            b"+EVT:RX_1:-80:7:UNICAST:10:11223344\r\n",
            b"+EVT:RX_1:-112:-5:UNICAST:2:\r\n",
            b"OK\r\nAT_BUSY_ERROR\r\nRestricted_Wait_3000_ms\r\n",
            b"\x00\xff+EVT:JOINED\r\n+EVT:TX_DONE\r\n+EVT:SEND_CONFIRMED_OK\r\n",
            b"RAKwireless RUI3\r\nCurrent Work Mode: LoRaWAN.\r\n",
            b"AT+NWM=1\r\n1\r\nOK\r\n",
        ]

    def run(self, data):
        n = self.got[0]
        e = self.m.errors
        self.m.feed(data)
        self.saw("downlink" if self.got[0] > n else "line error" if self.m.errors > e else "other")


_METER_FRAMES = (  # published frames (sources in tests/host/test_gateway_codecs.py)
    b"6FEFE6801000000000068910833333433AB8967451716",  # DL/T 645 (rulego)
    b"86810670517240000008116901F01000300002C000300002C0000000000000000FFC316",  # CJ/T 188 (LuatOS)
    b"U68515168080B7254029904C51400060C27000004782E254C00046D0A0CCD1304134C010000441"
    b"34B0100008401134C010000426CBF1C026CDF1C043B00000000143B160800000223A70401FD170004902808000000"
    b"3F16",  # M-Bus (libmbus: Engelmann WaterStar)
    b"D110306AE415652434049AD",  # Modbus RTU (a read-holding-registers answer)
)


class DecodeInputs(Target):
    # `umeter decode lora HEX...`, `umeter decode mqtt TOPIC PAYLOAD` and `umeter decode
    # 645|188|mbus|modbus HEX` (CPython only): the library raises ConfigError naming the flaw;
    # the CLI prints what it returns, as JSON or as lines.
    def __init__(self, scratch):
        from meternode.link import loracodec
        from umeter import bus, decode
        from umeter.errors import ConfigError

        self.bus = bus
        self.decode = decode
        self.expected = (ConfigError,)
        frames = LoraFrames(scratch).seeds
        doc = json.dumps({"node": "n7", "kind": "profile", "seq": 41, "ts": NOW, "period_s": 900, "held": 1})
        self.seeds = [b"L" + hexlify(f) for f in frames] + [b"B" + f for f in frames]
        self.seeds += [b"L21 07 00:00", b"Mumeter/n7/profile\x00" + doc.encode(), b"Mumeter/n7/state\x00online"]
        self.seeds += [b"Mumeter/n7/telemetry\x00" + json.dumps({"v": 230.1, "seq": 3}).encode()]
        self.seeds += list(_METER_FRAMES)  # as hex text (the CLI's argument)
        self.seeds += [f[:1].lower() + bytes.fromhex(f[1:].decode()) for f in _METER_FRAMES]  # as bytes
        self.codec = loracodec

    def run(self, data):
        mode, rest = data[:1], data[1:]
        if mode == b"M":
            topic, _, payload = rest.partition(b"\x00")
            d = self.decode.decode_mqtt(topic.decode("utf-8", "surrogateescape"), payload)
        elif mode == b"B":
            d = self.decode.decode_lora(rest)
        elif mode.upper() in (b"6", b"8", b"U", b"D"):
            proto = {b"6": "645", b"8": "188", b"U": "mbus", b"D": "modbus"}[mode.upper()]
            arg = rest if mode.islower() else rest.decode("utf-8", "surrogateescape")
            d = self.bus.decode_frame(proto, arg)
            self.bus.render(d)
            json.dumps(d, ensure_ascii=False)
            self.saw("frame " + proto)
            return
        else:
            d = self.decode.decode_lora(rest.decode("utf-8", "surrogateescape"))
        k = d.get("kind") or d.get("leaf")
        self.saw(k if k in ("profile", "daily", "monthly", "event", "telemetry", "state") else "other")
        json.dumps(d)


class ConsumerPayloads(Target):
    # What the host consumer takes from the broker (the ingest branch's umeter/consumer.py and
    # validate.py, CPython only): Consumer.ingest(topic, payload) into an SQLite store must
    # never raise, whatever a node (or anyone with the broker) publishes.
    def __init__(self, scratch):
        from meternode.store import records as R
        from umeter.consumer import Consumer

        self.c = Consumer(scratch + "/c.sqlite")
        docs = [
            ("profile", R.to_json_dict("n7", R.PROFILE, 1, NOW, R.profile(900, 1, 2, (1, 2, 3), (4, 5, 6), (7, 8, 9)))),
            ("event", R.to_json_dict("n7", R.EVENT, 2, NOW, R.event(R.EV_TAMPER, 1, "é tamper"))),
            ("event", {"node": "n7", "kind": "unknown", "seq": 3, "ts": 0, "held": 1, "error": "missing: gone"}),
            ("profile", R.to_json_dict("n7", R.DAILY, 4, NOW, R.freeze(1, 2, 3, 4))),
            ("profile", R.to_json_dict("n7", R.MONTHLY, 5, NOW, R.freeze(1, 2, 3, 4, (4100500, NOW)))),
            ("telemetry", {"node": "n7", "seq": 9, "ts": NOW, "v": 230.1, "p": 1.5, "e_imp_wh": 3, "e_exp_wh": 0}),
            ("cmd/result", {"id": "m1", "ok": False, "status": "rejected", "why": "unauthenticated"}),
        ]
        self.seeds = [b"umeter/n7/" + leaf.encode() + b"\x00" + json.dumps(d).encode() for leaf, d in docs]
        self.seeds += [b"umeter/n7/state\x00online", b"umeter/n8/resend\x0012"]

    def run(self, data):
        topic, _, payload = data.partition(b"\x00")
        r = self.c.ingest(topic.decode("utf-8", "surrogateescape"), payload)
        self.saw({True: "stored", False: "duplicate", None: "other"}.get(r, "?"))


HOST_TARGETS = {"decode_inputs": DecodeInputs, "consumer_payloads": ConsumerPayloads}

TARGETS = {
    "mqtt_packets": MqttPackets,
    "modem_lines": ModemLines,
    "command_envelopes": CommandEnvelopes,
    "policy_bundles": PolicyBundles,
    "ota_messages": OtaMessages,
    "small_frames": SmallFrames,
    "lora_frames": LoraFrames,
    "stored_records": StoredRecords,
}


def _heap():
    gc.collect()
    try:
        return gc.mem_alloc()  # MicroPython
    except AttributeError:
        import tracemalloc

        return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


async def run(name, n, seed=1, scratch="/tmp", warmup=200, keep=3):
    # Runs `n` cases of one target; -> the result dict (see the top).
    d = scratch + "/" + name
    _rmtree(d)
    os.mkdir(d)
    t = (TARGETS.get(name) or HOST_TARGETS[name])(d)
    rng = Rng(seed)
    uncaught = 0
    examples = []
    base = None
    growth = 0
    for i in range(warmup + n):
        if i == warmup:
            base = _heap()
        data = t.case(rng)
        try:
            if t.is_async:
                await t.run(data)
            else:
                t.run(data)
        except t.expected:
            pass
        except Exception as e:
            uncaught += 1
            if len(examples) < keep:
                examples.append({"input": hexlify(data[:120]).decode(), "error": "%s: %s" % (type(e).__name__, e)})
        if base is not None and (i - warmup) % 250 == 249:
            g = _heap() - base
            if g > growth:
                growth = g
    g = _heap() - base if base is not None else 0
    if g > growth:
        growth = g
    return {
        "parser": name,
        "cases": warmup + n,
        "uncaught": uncaught,
        "examples": examples,
        "heap_growth_bytes": growth,
        "outcomes": t.outcomes or {},
    }
