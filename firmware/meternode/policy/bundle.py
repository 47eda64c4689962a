# Signed bundles: a policy or a firmware build, signed on the host with the fleet's Ed25519
# key, checked here before anything changes.
#
# Envelope (UTF-8 JSON, the bytes on the wire):
#   {"m": "<manifest JSON text>", "s": "<128 hex: Ed25519 signature>", "f": {name: base64}}
# The Ed25519 signature covers signed_digest(manifest text) = SHA-256(DOMAIN + the manifest
# text exactly as sent): nothing is re-serialised before checking, and the pure-Python
# SHA-512 inside Ed25519 hashes one 128-byte block (R, A, 32-byte digest) whatever the
# manifest's size (hashlib.sha256 is native on every port).  "f" carries the files inline (policy bundles; a firmware
# bundle may leave it empty and stream its files, see ota.py).  Manifest:
#   kind     "policy" | "firmware"
#   fleet    fleet name; must be the node's
#   target   {"all": true} | {"groups": [...], "nodes": [...]}  (any match is enough)
#   version  int >= 1, strictly above what the node runs (anti-rollback)
#   created, expires   UNIX seconds; a bundle past `expires` is refused
#   files    {name: {"sha256": hex, "size": n}}; every file must be present and match
#   key      id of the signing key (first 16 hex of sha256(public key)): key rotation
#   build    (firmware) the manifest of `umeter build`: {"version": "...", ...}
# verify() returns the manifest dict or raises Rejected("<category>: <detail>") with the
# category one of: malformed, unsigned, unknown key, bad signature, wrong kind, wrong fleet,
# not targeted, not newer, expired, clock not set, bad file (ota.py adds busy, no space,
# unsupported).  Rejected lives in ota.py and key_id in ed25519.py: a node loads those when it
# starts.
#
# handle_policy / handle_ota (the end of this file) are what the fleet agent (agent.py) runs
# when a message arrives on policy/bundle or ota: the bundle verified, a policy applied, a
# firmware build staged, and the result.  Each is an Agent method kept out of the class
# (`self` is the agent); Agent.handle_policy / handle_ota load this module for the one message
# and forget it when it returns (meternode.run, docs/memory.md), SHA-512 with it: a node
# that receives no bundle never holds this code nor interns its names.  A streamed build's
# state between its messages is the agent's (`_ota`: the manifest and the target, ota.Slots or
# image.ImageUpdate, both classes of modules the node keeps), so nothing made here outlives
# the call but a streamed manifest's manifest.Staged, which keeps manifest.py's code for as
# long as its build streams in.  The names of this module and sha512.py are interned at the
# first message, in a heap that has run for days (a new qstr pool there may not find its
# block), so they are few: constants erased, single-use helpers folded, argument names the
# node already has, file names checked byte by byte, one module rather than two.
import hashlib
import json
from binascii import a2b_base64, hexlify, unhexlify

from micropython import const

from meternode.policy.ed25519 import key_id, verify
from meternode.policy.ota import Rejected
from meternode.policy.schema import PolicyError, check_compact
from meternode.ticks import CLOCK_SET

_DOMAIN = const(b"umeter-bundle-v1\n")
KINDS = ("policy", "firmware")
_MAX_FILES = const(256)
_MAX_MANIFEST = const(65536)  # bytes of a streamed manifest (256 files of long names: ~50 KB)
_POLICY_FILE = const("policy.json")


def signed_digest(mtext):
    # What the fleet key signs: SHA-256 over the domain tag and the manifest text.
    if isinstance(mtext, str):
        mtext = mtext.encode()
    h = hashlib.sha256(_DOMAIN)
    h.update(mtext)
    return h.digest()


def parse(payload):
    # Bytes (or the envelope already parsed: an OTA begin may carry it as an object, so its
    # manifest is not escaped twice) -> (manifest text, signature bytes, {name: base64 text}).
    # Raises Rejected.
    try:
        env = payload if isinstance(payload, dict) else json.loads(payload)
        m = env["m"]
        s = env.get("s")
        f = env.get("f", {})
        if not isinstance(m, str) or not isinstance(f, dict):
            raise ValueError
    except MemoryError:
        raise  # no room to parse it: not the sender's fault ("failed", not "malformed")
    except Exception:
        raise Rejected('malformed: expected {"m": <manifest text>, "s": <signature hex>, "f": {...}}')
    if not isinstance(s, str) or not s:
        raise Rejected("unsigned: the bundle carries no signature")
    if len(s) != 128:
        raise Rejected("bad signature: %d hex digits, expected 128" % len(s))
    try:
        sig = unhexlify(s)
    except Exception:
        raise Rejected("bad signature: not hex")
    return m, sig, f


def check_manifest(man):
    # Structure of a manifest dict (after the signature matched).  Raises Rejected.
    if not isinstance(man, dict):
        raise Rejected("malformed: manifest is not an object")
    for k, kind in (("kind", str), ("fleet", str), ("target", dict), ("version", int), ("expires", int)):
        v = man.get(k)
        if not isinstance(v, kind) or isinstance(v, bool):
            raise Rejected("malformed: manifest.%s missing or not %s" % (k, kind.__name__))
    if man["kind"] not in KINDS:
        raise Rejected("malformed: manifest.kind %r is not one of %s" % (man["kind"], "/".join(KINDS)))
    if man["version"] < 1:
        raise Rejected("malformed: manifest.version must be >= 1")
    files = man.get("files")  # a dict, or a manifest.Staged (read from flash entry by entry)
    n = 0 if hasattr(files, "items") else _MAX_FILES + 1
    for name, fi in files.items() if n == 0 else ():
        n += 1
        if n > _MAX_FILES:
            break
        # a relative path of ASCII letters, digits, '_', '-', '.', '/' without empty, '.' or
        # '..' parts.  Its bytes are checked, not its characters: iterating a str makes each
        # character an interned name, for ever (MicroPython).
        ok = isinstance(name, str) and 0 < len(name) <= 96 and not name.startswith("/")
        if ok:
            for part in name.split("/"):
                if len(part) < 3 and not part.strip("."):
                    ok = False
            try:
                for c in name.encode():
                    if not (c in b"_-./" or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122):
                        ok = False
            except UnicodeError:  # CPython (the host's check): a lone surrogate, an undecodable name
                ok = False
        if not ok:
            raise Rejected("malformed: file name %r" % name)
        if not isinstance(fi, dict) or not isinstance(fi.get("sha256"), str) or len(fi["sha256"]) != 64:
            raise Rejected("malformed: manifest.files[%r].sha256" % name)
        if not isinstance(fi.get("size"), int) or fi["size"] < 0:
            raise Rejected("malformed: manifest.files[%r].size" % name)
    if n > _MAX_FILES:
        raise Rejected("malformed: manifest.files must be an object of at most %d files" % _MAX_FILES)


class Verifier:
    # keys: {key id: 32-byte public key} (the fleet key, plus the next one while rotating).
    def __init__(self, keys, node, fleet, groups=(), sigcheck=None):
        # sigcheck(public, message, signature) -> bool; default: the pure-Python Ed25519.
        # (The host's fleet simulator passes the `cryptography` one to model 10,000 nodes.)
        self.sigcheck = sigcheck or verify
        if isinstance(keys, (bytes, bytearray)):
            keys = {key_id(bytes(keys)): bytes(keys)}
        if not keys:
            raise ValueError("no fleet public key: bundles cannot be verified")
        self.keys = keys
        self.node = node
        self.fleet = fleet
        self.groups = list(groups)

    def verify(self, payload, kind, cur, now, check=True, path=None):
        # payload: the envelope (bytes, or parsed: see parse()); cur: the version the node runs;
        # check: the files are inline and checked (False: a firmware build streamed later).
        # path: a manifest streamed to flash (payload: its signature), read from there.
        # -> (manifest dict, manifest text (None: streamed), {name: bytes} of the inline files).
        if path:
            from meternode import forget
            from meternode.policy.manifest import Staged

            forget("meternode.policy.manifest")  # the transfer's Staged keeps its code while it lasts
            mtext, sig, inline = None, payload, {}
            man = Staged(path).head
            h = hashlib.sha256(_DOMAIN)  # what signed_digest() hashes, read back in pieces
            buf = bytearray(128)
            with open(path, "rb") as f:
                n = f.readinto(buf)
                while n:
                    h.update(memoryview(buf)[:n])
                    n = f.readinto(buf)
            digest = h.digest()
        else:
            mtext, sig, inline = parse(payload)
            try:
                man = json.loads(mtext)
            except Exception:
                raise Rejected("malformed: manifest is not JSON")
            digest = signed_digest(mtext)
        kid = man.get("key") if isinstance(man, dict) else None
        pub = self.keys.get(kid) if kid is not None else None
        if pub is None:
            if len(self.keys) != 1 or kid is not None:
                raise Rejected("unknown key: %r is not a key of this fleet" % kid)
            pub = list(self.keys.values())[0]
        if not self.sigcheck(pub, digest, sig):
            raise Rejected("bad signature: not signed by the fleet key")
        check_manifest(man)
        if man["kind"] != kind:
            raise Rejected("wrong kind: a %s bundle, expected %s" % (man["kind"], kind))
        if man["fleet"] != self.fleet:
            raise Rejected("wrong fleet: for %s, this node is in %s" % (man["fleet"], self.fleet))
        # targeted: all nodes, or this node or one of its groups named (any match is enough)
        target = man["target"]
        hit = target.get("all") is True
        nodes = target.get("nodes", [])
        if isinstance(nodes, list) and self.node in nodes:
            hit = True
        nodes = target.get("groups", [])
        if isinstance(nodes, list):
            for g in self.groups:
                if g in nodes:
                    hit = True
        if not hit:
            raise Rejected("not targeted: %s is not in the bundle's nodes or groups" % self.node)
        if man["version"] <= cur:
            raise Rejected("not newer: version %d is not above %d" % (man["version"], cur))
        if now < CLOCK_SET:
            raise Rejected("clock not set: cannot check the expiry")
        if man["expires"] <= now:
            raise Rejected("expired: %d s ago" % (now - man["expires"]))
        files = {}
        if check:
            for name, fi in man["files"].items():
                b64 = inline.get(name)
                if b64 is None:
                    raise Rejected("bad file: %s is missing" % name)
                try:
                    data = a2b_base64(b64)
                except Exception:
                    raise Rejected("bad file: %s is not base64" % name)
                if len(data) != fi["size"] or hexlify(hashlib.sha256(data).digest()).decode() != fi["sha256"]:
                    raise Rejected("bad file: %s does not match its hash" % name)
                files[name] = data
            for name in inline:
                if name not in man["files"]:
                    raise Rejected("bad file: %s is not in the manifest" % name)
        return man, mtext, files


# -- policy bundles --------------------------------------------------------------------------
def handle_policy(self, payload):
    # The Verifier is made from the agent's fleet identity (agent.trust) per message.
    cur = self.policy_version()
    camp = None
    try:
        man, mtext, files = Verifier(*self.trust).verify(payload, "policy", cur, int(self.clock.time()))
        camp = man.get("campaign")
        data = files.get(_POLICY_FILE)
        if data is None:
            raise Rejected("bad file: %s missing" % _POLICY_FILE)
        try:
            compact = check_compact(json.loads(data))
        except (ValueError, PolicyError) as e:
            raise Rejected("bad policy: %s" % e)
        # its tariff hours in a time other than the one the node bills in (config
        # utc_offset_min, or the last policy's): the day's tariffs and its freezes would
        # disagree, unless the manifest says to move the billing time there (billing_tz:
        # `umeter policy sign --move-billing-time`); then the node bills in it from now on
        # (rare.load; the freezes follow the local date: store/profile.py)
        from meternode import ticks

        tz = compact["tz"]
        was = ticks.LOCAL_S // 60
        if tz != was and man.get("billing_tz") != tz:
            raise Rejected(
                "bad policy: utc_offset_min %d, the node bills in %d (to move it there: sign with --move-billing-time)"
                % (tz, was)
            )
        sig = parse(payload)[1]
        self.store.apply(man["version"], mtext, hexlify(sig).decode(), compact)
        if tz != was:
            self.event("policy", "billing time %d min, was %d" % (tz, was))  # (an event keeps 40 characters)
    except Rejected as e:
        why = str(e)
        self.event("policy", "rejected: %s" % why)
        if not camp:
            # best effort: the campaign id in the manifest, for results of rejected bundles too
            try:
                camp = json.loads(parse(payload)[0]).get("campaign")
                if not isinstance(camp, str):
                    camp = None
            except Exception:
                camp = None
        return self._result(False, "rejected", cur, camp, why)
    self.record = {"version": man["version"], "m": mtext, "policy": compact}
    self.event("policy", "applied v%d %s" % (man["version"], compact["n"]))
    self.on_policy(compact)
    return self._result(True, "applied", man["version"], camp)


# -- firmware ---------------------------------------------------------------------------------
def handle_ota(self, payload, err=None):
    # `err`: why the agent could not write this message as a chunk of the build in progress
    try:
        msg = json.loads(payload)
        op = msg.get("op") if isinstance(msg, dict) else None
    except MemoryError:
        raise  # no room to parse it: "failed" (handle()), not the sender's "malformed"
    except Exception:
        op = None
    cur = self.slots.version()
    t = self._ota
    camp = t[2] if t else None
    now = int(self.clock.time())
    try:
        inline = False
        if op == "begin":
            self._abort_ota()
            # the envelope as text, or as an object (a large manifest: escaped once, not twice)
            env = msg.get("bundle")
            if isinstance(env, str):
                env = env.encode()
            elif not isinstance(env, dict):
                raise Rejected("malformed: begin needs the bundle envelope, as text or as an object")
            elif isinstance(env.get("m"), int):
                # a manifest too large for one message: its size and signature here, its text
                # in chunks (to the slot: Slots.write), checked when whole (below)
                t = parse({"m": "", "s": env.get("s")})[1]
                if not 0 < env["m"] <= _MAX_MANIFEST:
                    raise Rejected("malformed: a manifest of %d bytes (at most %d)" % (env["m"], _MAX_MANIFEST))
                self.slots.begin(env["m"])
                self._ota = (None, t, None, self.slots)
                self.got = 0
                return self._result(True, "accepted", cur, None)
            inline = bool(parse(env)[2])
            man, mtext, files = Verifier(*self.trust).verify(env, "firmware", cur, now, inline)
        elif op == "file":
            if t is None:
                # the rest of a transfer whose begin was refused (already answered), or
                # of one that failed: no result per chunk
                return None
            # the agent writes the chunks (Agent.handle_ota); this one it could not
            if isinstance(err, Rejected):
                raise err
            if err is not None or t[0] is not None:
                raise Rejected("malformed: file chunk needs name, off, base64 data")
            # ... or it was the last of a streamed manifest: checked now, read back from flash
            s = self.slots
            man, mtext, files = Verifier(*self.trust).verify(
                t[1], "firmware", cur, now, False, s.slot_dir(s._staging[0]) + "/manifest~"
            )
        elif op != "end":
            raise Rejected("malformed: op must be begin, file or end")
        elif t is None:
            raise Rejected("malformed: no firmware transfer in progress")
        elif t[0] is None:
            raise Rejected("bad file: the manifest ended before its %d bytes" % self.slots._staging[1])
        if op != "end":
            build = man.get("build")
            target = self.slots
            if isinstance(build, dict) and build.get("image") == "app":
                if self.image is None:
                    raise Rejected("unsupported: an app image, and this node has no OTA app partitions")
                target = self.image
                if mtext is None:  # streamed: the image's one file (ImageUpdate.begin counts)
                    man["files"] = dict(man["files"].items())
                    self.slots.abort()
            target.begin(man)
            self._ota = (man, mtext, man.get("campaign"), target)
            camp = self._ota[2]
            if not inline:
                self.event("ota", "receiving v%d" % man["version"])
                r = self._result(True, "accepted", cur, camp)
                if op == "file":
                    r["got"] = self.got
                return r
            for name in files:
                target.write(name, files[name], 0)
            # files inline: staged now, as at an "end"
        man, mtext, camp, target = self._ota
        slot = target.finish(mtext)  # on Rejected the handler below aborts (removes the slot)
        self._ota = None
        self.event("ota", "staged v%d in %s" % (man["version"], slot))
        return self._result(True, "staged", man["version"], camp)
    except Rejected as e:
        self._abort_ota()
        why = str(e)
        self.event("ota", "rejected: %s" % why)
        return self._result(False, "rejected", cur, camp, why)
