# What the fleet agent (agent.py) runs when a message arrives on policy/bundle or ota: the
# signed bundle verified (bundle.py, Ed25519 with SHA-512), a policy applied, a firmware build
# staged, and the result.  Agent.handle_policy / handle_ota load this module for the one
# message and forget it when it returns (meternode.lazy.run, docs/memory.md): a node that
# receives no bundle never holds this code nor interns its names, or those of bundle.py and
# sha512.py.  A streamed build's state between its messages is the agent's (`_ota`: the
# manifest and the target, ota.Slots or image.ImageUpdate, both classes of modules the node
# keeps), so nothing made here outlives the call.  Each function is an Agent method kept out of
# the class: `self` is the agent.
import json
from binascii import a2b_base64, hexlify

from meternode.policy.ota import Rejected
from meternode.policy.schema import PolicyError, check_compact

POLICY_FILE = "policy.json"


def _verifier(self):
    # The agent's fleet identity as a bundle.Verifier, made for this message.  bundle.py is
    # imported where a bundle is checked, not at the top: a streamed build's chunks need none of it.
    from meternode.policy.bundle import Verifier

    keys, name, groups, sigcheck = self.trust
    return Verifier(keys, self.node_id, name, groups, sigcheck)


def _campaign(payload):
    # Best effort: the campaign id in a manifest, for results of rejected bundles too.
    try:
        from meternode.policy.bundle import parse

        m = json.loads(parse(payload)[0])
        c = m.get("campaign")
        return c if isinstance(c, str) else None
    except Exception:
        return None


# -- policy bundles --------------------------------------------------------------------------
def handle_policy(self, payload):
    cur = self.policy_version()
    camp = None
    try:
        man, mtext, files = _verifier(self).verify(payload, "policy", cur, int(self.clock.time()))
        camp = man.get("campaign")
        data = files.get(POLICY_FILE)
        if data is None:
            raise Rejected("bad file: %s missing" % POLICY_FILE)
        try:
            compact = check_compact(json.loads(data))
        except (ValueError, PolicyError) as e:
            raise Rejected("bad policy: %s" % e)
        from meternode.policy.bundle import parse

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
            return _ota_begin(self, msg.get("bundle"), cur)
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
            return _ota_end(self)
        raise Rejected("malformed: op must be begin, file or end")
    except Rejected as e:
        self._abort_ota()
        why = str(e)
        self.event("ota", "rejected: %s" % why)
        return self._result(False, "rejected", cur, camp, why)


def _ota_begin(self, envelope, cur):
    # the envelope as text, or as an object (a large manifest: escaped once, not twice)
    if isinstance(envelope, str):
        env = envelope.encode()
    elif isinstance(envelope, dict):
        env = envelope
    else:
        raise Rejected("malformed: begin needs the bundle envelope, as text or as an object")
    from meternode.policy.bundle import parse

    inline = bool(parse(env)[2])
    man, mtext, files = _verifier(self).verify(env, "firmware", cur, int(self.clock.time()), check_files=inline)
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
        return _ota_end(self)
    self.event("ota", "receiving v%d" % man["version"])
    return self._result(True, "accepted", cur, self._ota[2])


def _ota_end(self):
    man, mtext, camp, target = self._ota
    slot = target.finish(mtext)  # on Rejected the caller aborts (removes the slot)
    self._ota = None
    self.event("ota", "staged v%d in %s" % (man["version"], slot))
    return self._result(True, "staged", man["version"], camp)
