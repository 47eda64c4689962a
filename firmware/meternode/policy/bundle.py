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
# unsupported).  Rejected lives in ota.py and key_id in ed25519.py: a node loads
# those when it starts, this module only while it checks a bundle (receive.py).
import hashlib
import json
from binascii import a2b_base64, hexlify, unhexlify

from meternode.policy.ed25519 import key_id, verify
from meternode.policy.ota import Rejected

DOMAIN = b"umeter-bundle-v1\n"
KINDS = ("policy", "firmware")
MAX_FILES = 256
MIN_EPOCH = 1577836800  # 2020-01-01: a clock below this was never set


def signed_digest(mtext):
    # What the fleet key signs: SHA-256 over the domain tag and the manifest text.
    if isinstance(mtext, str):
        mtext = mtext.encode()
    h = hashlib.sha256(DOMAIN)
    h.update(mtext)
    return h.digest()


def _safe_name(n):
    # Relative path of letters, digits, '_', '-', '.', '/' without '..' or empty parts.
    if not isinstance(n, str) or not 0 < len(n) <= 96 or n[0] == "/":
        return False
    for part in n.split("/"):
        if not part or part == "." or part == "..":
            return False
    for ch in n:
        if not (ch.isalpha() or ch.isdigit() or ch in "_-./"):
            return False
    return True


def parse(envelope):
    # Bytes (or the envelope already parsed: an OTA begin may carry it as an object, so its
    # manifest is not escaped twice) -> (manifest text, signature bytes, {name: base64 text}).
    # Raises Rejected.
    try:
        env = envelope if isinstance(envelope, dict) else json.loads(envelope)
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
    files = man.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise Rejected("malformed: manifest.files must be an object of at most %d files" % MAX_FILES)
    for name, fi in files.items():
        if not _safe_name(name):
            raise Rejected("malformed: file name %r" % name)
        if not isinstance(fi, dict) or not isinstance(fi.get("sha256"), str) or len(fi["sha256"]) != 64:
            raise Rejected("malformed: manifest.files[%r].sha256" % name)
        if not isinstance(fi.get("size"), int) or fi["size"] < 0:
            raise Rejected("malformed: manifest.files[%r].size" % name)


def targeted(target, node, groups):
    if target.get("all") is True:
        return True
    nodes = target.get("nodes", [])
    if isinstance(nodes, list) and node in nodes:
        return True
    tg = target.get("groups", [])
    if isinstance(tg, list):
        for g in groups:
            if g in tg:
                return True
    return False


class Verifier:
    # keys: {key id: 32-byte public key} (the fleet key, plus the next one while rotating).
    def __init__(self, keys, node, fleet, groups=(), sigcheck=None):
        # sigcheck(public, message, signature) -> bool; default: the pure-Python Ed25519.
        # (The host's fleet simulator passes the `cryptography` one to model 10,000 nodes.)
        self._sigcheck = sigcheck or verify
        if isinstance(keys, (bytes, bytearray)):
            keys = {key_id(bytes(keys)): bytes(keys)}
        if not keys:
            raise ValueError("no fleet public key: bundles cannot be verified")
        self.keys = keys
        self.node = node
        self.fleet = fleet
        self.groups = list(groups)

    def verify(self, envelope, kind, current_version, now, check_files=True):
        # -> (manifest dict, manifest text, {name: bytes} of the inline files).
        mtext, sig, inline = parse(envelope)
        try:
            man = json.loads(mtext)
            kid = man.get("key") if isinstance(man, dict) else None
        except Exception:
            raise Rejected("malformed: manifest is not JSON")
        pub = self.keys.get(kid) if kid is not None else None
        if pub is None:
            if len(self.keys) != 1 or kid is not None:
                raise Rejected("unknown key: %r is not a key of this fleet" % kid)
            pub = list(self.keys.values())[0]
        if not self._sigcheck(pub, signed_digest(mtext), sig):
            raise Rejected("bad signature: not signed by the fleet key")
        check_manifest(man)
        if man["kind"] != kind:
            raise Rejected("wrong kind: a %s bundle, expected %s" % (man["kind"], kind))
        if man["fleet"] != self.fleet:
            raise Rejected("wrong fleet: for %s, this node is in %s" % (man["fleet"], self.fleet))
        if not targeted(man["target"], self.node, self.groups):
            raise Rejected("not targeted: %s is not in the bundle's nodes or groups" % self.node)
        if man["version"] <= current_version:
            raise Rejected("not newer: version %d is not above %d" % (man["version"], current_version))
        if now < MIN_EPOCH:
            raise Rejected("clock not set: cannot check the expiry")
        if man["expires"] <= now:
            raise Rejected("expired: %d s ago" % (now - man["expires"]))
        files = {}
        if check_files:
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
