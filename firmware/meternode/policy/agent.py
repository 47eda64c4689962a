# The node's control plane for policies and firmware: takes bundle messages from the link,
# verifies them, applies them atomically and answers with a result.  Pure (no asyncio, no
# HAL), so the host's fleet simulator runs thousands of these in one process.
#
# Topics (under <prefix>/<node>/), all JSON:
#   policy/bundle  <- a signed policy bundle envelope (bundle.py); result on policy/result
#   ota            <- {"op": "begin", "bundle": <envelope text, or the envelope object>}  (files inline, or streamed:)
#                     {"op": "file", "name": n, "off": offset, "data": base64}
#                     {"op": "end"}
#                  result on ota/result: accepted / staged / confirmed / rolled_back / rejected
#   policy/small   <- a LoRa-sized HMAC frame (small.py), raw bytes; result on policy/result
# Results: {"ok": bool, "status": ..., "why": ..., "version": <node's version now>,
#           "campaign": <from the manifest>, "node": id}
#
# Identity (config["fleet"]): {"name": fleet, "groups": [...], "keys": {key id: hex}}.
import json
from binascii import a2b_base64, hexlify, unhexlify

from meternode.policy import ed25519
from meternode.policy.apply import PolicyStore
from meternode.policy.bundle import Rejected, Verifier, key_id, parse
from meternode.policy.ota import Slots
from meternode.policy.schema import PolicyError, check_compact

POLICY_FILE = "policy.json"


def check_identity(fl, where="config.fleet"):
    # -> (fleet name, groups, {key id: public key bytes}); ValueError naming the key.
    if not isinstance(fl, dict):
        raise ValueError("%s must be an object with name, groups, keys" % where)
    name = fl.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("%s.name must be the fleet name" % where)
    groups = fl.get("groups", [])
    if not isinstance(groups, list) or any(not isinstance(g, str) for g in groups):
        raise ValueError("%s.groups must be a list of group names" % where)
    keys = fl.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ValueError("%s.keys must map key ids to 64-hex Ed25519 public keys" % where)
    out = {}
    for kid, hx in keys.items():
        try:
            pub = unhexlify(hx)
        except Exception:
            pub = b""
        if len(pub) != 32:
            raise ValueError("%s.keys.%s must be 64 hex digits (an Ed25519 public key)" % (where, kid))
        bad = ed25519.check_public(pub)
        if bad:
            raise ValueError("%s.keys.%s is not a usable Ed25519 public key: %s" % (where, kid, bad))
        if kid != key_id(pub):
            raise ValueError("%s.keys.%s does not match its key (id %s)" % (where, kid, key_id(pub)))
        out[kid] = pub
    return name, groups, out


def _campaign(payload):
    # Best effort: the campaign id in a manifest, for results of rejected bundles too.
    try:
        m = json.loads(parse(payload)[0])
        c = m.get("campaign")
        return c if isinstance(c, str) else None
    except Exception:
        return None


def _noop(*a):
    pass


class Agent:
    def __init__(
        self, node_id, fleet, root, clock, event=None, on_policy=None, reset=None, sigcheck=None, partition=None
    ):
        name, groups, keys = check_identity(fleet)
        self.node_id = node_id
        self.verifier = Verifier(keys, node_id, name, groups, sigcheck)
        self.clock = clock
        self.event = event or _noop  # event(kind, text)
        self.on_policy = on_policy or _noop  # on_policy(compact) after an apply
        self.reset = reset or _noop  # reboot into a staged build
        self.store = PolicyStore(root + "/policy")
        self.slots = Slots(root)
        # ESP32 OTA partition layouts: app-image bundles go through esp32.Partition
        self.image = None
        if partition is not None:
            from meternode.policy.image import ImageUpdate

            self.image = ImageUpdate(self.slots, partition)
        self.record = self.store.load()
        if self.store.recovered:
            self.event("policy", "recovered: %s" % self.store.recovered)
        self._ota = None  # (manifest, text, campaign, target) while a build streams in
        self.accepted = 0
        self.rejected = 0

    # -- state ---------------------------------------------------------------------------------
    def policy(self):
        return self.record["policy"] if self.record else None

    def policy_version(self):
        return self.record["version"] if self.record else 0

    def _result(self, ok, status, version, campaign, why=None):
        r = {"ok": ok, "status": status, "version": version, "campaign": campaign, "node": self.node_id}
        if why:
            r["why"] = why
        if ok:
            self.accepted += 1
        else:
            self.rejected += 1
        return r

    def handle(self, leaf, payload):
        # -> (result leaf, result dict or None) or None for an unknown leaf.  An unexpected
        # error (flash full, a bug) answers "failed" instead of killing the link task.
        try:
            if leaf == "policy/bundle":
                return "policy/result", self.handle_policy(payload)
            if leaf == "ota":
                return "ota/result", self.handle_ota(payload)
        except Exception as e:
            self._abort_ota()
            self.event("policy", "error: %s" % e)
            res = "policy/result" if leaf == "policy/bundle" else "ota/result"
            return res, self._result(False, "failed", self.policy_version(), None, "error: %r" % e)
        return None

    # -- policy bundles --------------------------------------------------------------------------
    def handle_policy(self, payload):
        cur = self.policy_version()
        camp = None
        try:
            man, mtext, files = self.verifier.verify(payload, "policy", cur, int(self.clock.time()))
            camp = man.get("campaign")
            data = files.get(POLICY_FILE)
            if data is None:
                raise Rejected("bad file: %s missing" % POLICY_FILE)
            try:
                compact = check_compact(json.loads(data))
            except (ValueError, PolicyError) as e:
                raise Rejected("bad policy: %s" % e)
            sig = parse(payload)[1]
            self.store.apply(man["version"], mtext, hexlify(sig).decode(), compact)
        except Rejected as e:
            why = str(e)
            self.event("policy", "rejected: %s" % why)
            return self._result(False, "rejected", cur, camp or _campaign(payload), why)
        self.record = {"version": man["version"], "m": mtext, "policy": compact}
        self.event("policy", "applied v%d %s" % (man["version"], compact["n"]))
        self.on_policy(compact)
        return self._result(True, "applied", man["version"], camp)

    # -- firmware ---------------------------------------------------------------------------------
    def handle_ota(self, payload):
        try:
            msg = json.loads(payload)
            op = msg.get("op") if isinstance(msg, dict) else None
        except MemoryError:
            raise  # no room to parse it: "failed" (handle()), not the sender's "malformed"
        except Exception:
            op = None
        cur = self.slots.version()
        camp = self._ota[2] if self._ota else None
        try:
            if op == "begin":
                return self._ota_begin(msg.get("bundle"), cur)
            if op == "file":
                if self._ota is None:
                    # the rest of a transfer whose begin was refused (already answered), or
                    # of one that failed: no result per chunk
                    return None
                try:
                    data = a2b_base64(msg["data"])
                    off = int(msg.get("off", 0))
                except Exception:
                    raise Rejected("malformed: file chunk needs name, off, base64 data")
                self._ota[3].write(msg.get("name"), data, off)
                return None  # no result per chunk
            if op == "end":
                if self._ota is None:
                    raise Rejected("malformed: no firmware transfer in progress")
                return self._ota_end()
            raise Rejected("malformed: op must be begin, file or end")
        except Rejected as e:
            self._abort_ota()
            why = str(e)
            self.event("ota", "rejected: %s" % why)
            return self._result(False, "rejected", cur, camp, why)

    def _abort_ota(self):
        # A transfer given up: its partial slot goes at once (the record log needs the room).
        if self._ota is not None:
            t = self._ota[3]
            self._ota = None
            try:
                t.abort()
            except OSError:
                pass

    def _ota_begin(self, envelope, cur):
        # the envelope as text, or as an object (a large manifest: escaped once, not twice)
        if isinstance(envelope, str):
            env = envelope.encode()
        elif isinstance(envelope, dict):
            env = envelope
        else:
            raise Rejected("malformed: begin needs the bundle envelope, as text or as an object")
        inline = bool(parse(env)[2])
        man, mtext, files = self.verifier.verify(env, "firmware", cur, int(self.clock.time()), check_files=inline)
        build = man.get("build")
        target = self.slots
        if isinstance(build, dict) and build.get("image") == "app":
            if self.image is None:
                raise Rejected("unsupported: an app image, and this node has no OTA app partitions")
            target = self.image
        target.begin(man)
        self._ota = (man, mtext, man.get("campaign"), target)
        if inline:
            for name in files:
                target.write(name, files[name], 0)
            return self._ota_end()
        self.event("ota", "receiving v%d" % man["version"])
        return self._result(True, "accepted", cur, self._ota[2])

    def _ota_end(self):
        man, mtext, camp, target = self._ota
        slot = target.finish(mtext)  # on Rejected the caller aborts (removes the slot)
        self._ota = None
        self.event("ota", "staged v%d in %s" % (man["version"], slot))
        return self._result(True, "staged", man["version"], camp)

    def boot_report(self):
        # What the last switch did (confirmed / rolled back), once per switch, or None.
        s = self.slots
        st = s.state()
        last = st.get("last", "")
        if not last or last == st.get("reported"):
            return None
        running = st["versions"].get(st["active"], 0) if st["active"] else st.get("image_version", 0)
        camp = st.get("campaign")
        if "rolled back" in last or "crash loop" in last:
            res = self._result(False, "rolled_back", running, camp, last)
        elif last.endswith("confirmed"):
            res = self._result(True, "confirmed", running, camp)
        else:
            return None
        st["reported"] = last
        s._save(st)
        return res
