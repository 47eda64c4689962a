# The node's control plane for policies and firmware: takes bundle messages from the link,
# verifies them, applies them atomically and answers with a result.  Pure (no asyncio, no
# HAL), so the host's fleet simulator runs thousands of these in one process.
#
# Topics (under <prefix>/<node>/), all JSON:
#   policy/bundle  <- a signed policy bundle envelope (bundle.py); result on policy/result
#   ota            <- {"op": "begin", "bundle": <envelope text, or the envelope object>}  (files inline, or streamed:)
#                     {"op": "file", "name": n, "off": offset, "data": base64}
#                     {"op": "end"}
#                     a manifest too large for one message streams too: the begin's bundle is
#                     {"m": <its size>, "s": <signature>}, its chunks are "file" without a name
#                  result on ota/result: accepted / staged / confirmed / rolled_back / rejected;
#                  while chunks stream in, "accepted" with "got": <chunks written> every 64th
#   policy/small   <- a LoRa-sized HMAC frame (small.py), raw bytes; result on policy/result
# Results: {"ok": bool, "status": ..., "why": ..., "version": <node's version now>,
#           "campaign": <from the manifest>, "node": id}
#
# Identity (config["fleet"]): {"name": fleet, "groups": [...], "keys": {key id: hex}}.
#
# What runs when a bundle or an OTA message arrives (verification, applying a policy, staging
# a build) is in bundle.py, loaded for each message and forgotten with sha512.py
# (meternode.run, docs/memory.md): a fleet node that gets no bundle never interns their
# names.  What stays here runs at start (the identity check, the policy
# store's recovery, the OTA slots) or every boot (the switch report).
import json
from binascii import a2b_base64, unhexlify

from meternode import _nop, forget, run
from meternode.policy import ed25519
from meternode.policy.apply import PolicyStore
from meternode.policy.ota import Slots


def check_identity(fleet, where="config.fleet"):
    # -> (fleet name, groups, {key id: public key bytes}); ValueError naming the key.
    if not isinstance(fleet, dict):
        raise ValueError("%s must be an object with name, groups, keys" % where)
    name = fleet.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("%s.name must be the fleet name" % where)
    groups = fleet.get("groups", [])
    if not isinstance(groups, list) or any(not isinstance(g, str) for g in groups):
        raise ValueError("%s.groups must be a list of group names" % where)
    keys = fleet.get("keys")
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
        if kid != ed25519.key_id(pub):
            raise ValueError("%s.keys.%s does not match its key (id %s)" % (where, kid, ed25519.key_id(pub)))
        out[kid] = pub
    return name, groups, out


class Agent:
    def __init__(
        self, node_id, fleet, root, clock, event=None, on_policy=None, reset=None, sigcheck=None, partition=None
    ):
        name, groups, keys = check_identity(fleet)
        self.node_id = node_id
        # what a bundle is verified against: bundle.Verifier's arguments (the Verifier is made
        # per bundle)
        self.trust = (keys, node_id, name, groups, sigcheck)
        self.clock = clock
        self.event = event or _nop  # event(kind, text)
        self.on_policy = on_policy or _nop  # on_policy(compact) after an apply
        self.reset = reset or _nop  # reboot into a staged build
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
        self._ota = None  # (manifest, text, campaign, target) while a build streams in; while its
        # manifest does: (None, signature, None, slots)
        self.got = 0  # its chunks written so far
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
            if payload is None:  # the MQTT client had no block for it (link/mqtt.py)
                raise MemoryError("no memory for the message: send smaller ones")
            if leaf == "policy/bundle":
                return "policy/result", self.handle_policy(payload)
            if leaf == "ota":
                return "ota/result", self.handle_ota(payload)
        except Exception as e:
            self._abort_ota()
            why = "error: %r" % e
            if isinstance(e, OSError) and e.args and e.args[0] == 28:  # ENOSPC
                why = "flash full: the bundle could not be stored (send it again when there is room)"
            self.event("policy", why)
            res = "policy/result" if leaf == "policy/bundle" else "ota/result"
            return res, self._result(False, "failed", self.policy_version(), None, why)
        return None

    # -- bundles and firmware (bundle.py, loaded for the message) -------------------------------
    # SHA-512, imported by ed25519.verify() when a signature is checked, goes with it, and so
    # does the policy schema bundle.py imports.
    def handle_policy(self, payload):
        try:
            return run("meternode.policy.bundle", "handle_policy", self, payload)
        finally:
            forget("meternode.policy.sha512", "meternode.policy.schema")

    def handle_ota(self, payload):
        # A chunk of the build being received is written here, not through bundle.py: a build
        # comes in hundreds of them, each small enough for the MQTT client's buffer
        # (umeter.campaign).  Whatever this cannot write goes to bundle.py with the error.
        # Every 64th chunk is answered "accepted" with the count ("got"): the sender keeps a
        # window of messages in flight ahead of it, not the whole build (a broker holds about
        # 1000 messages for a client and drops the rest: Mosquitto's max_queued_messages).
        t = self._ota
        e = None
        if t is not None:
            try:
                msg = json.loads(payload)
                if msg["op"] == "file":
                    # (no name: a piece of the manifest, which streams in first when large)
                    done = t[3].write(msg.get("name"), a2b_base64(msg["data"]), int(msg.get("off", 0)))
                    self.got += 1
                    if not done:
                        if self.got & 63:
                            return None
                        r = self._result(True, "accepted", self.slots.version(), t[2])
                        r["got"] = self.got
                        return r
                    # the manifest is whole: bundle.py checks it
            except MemoryError:
                raise
            except Exception as x:
                e = x
        try:
            return run("meternode.policy.bundle", "handle_ota", self, payload, e)
        finally:
            forget("meternode.policy.sha512", "meternode.policy.schema")

    def _abort_ota(self):
        # A transfer given up: its partial slot goes at once (the record log needs the room).
        if self._ota is not None:
            t = self._ota[3]
            self._ota = None
            try:
                t.abort()
            except OSError:
                pass

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
