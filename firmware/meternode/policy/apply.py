# Atomic apply of a verified policy: the node runs exactly the old or the new policy after
# a power cut at any instant, never a mix.
#
# Files in <dir> (one JSON object each: {"version", "m": manifest text, "s": signature hex,
# "policy": compact policy}):
#   active.json     the policy in force
#   previous.json   the one before it (kept for `umeter policy` rollback and diagnosis)
#   staged.tmp, previous.tmp   partial files of an apply in progress
# apply(): write staged.tmp completely, copy active.json to previous.tmp and rename it to
# previous.json, then rename staged.tmp over active.json (one atomic rename on LittleFS and
# POSIX).  load() takes active.json if it parses and validates, else (a FAT-style rename that
# could not replace: active.json missing) a complete staged.tmp, else previous.json; it then
# removes the leftovers.  The version inside the file is the anti-rollback counter, so the
# policy and its version always change together.
import json
import os

from micropython import const

from meternode import run


def check_compact(policy):
    # policy/schema.py's check, loaded for the call and forgotten: the fleet agent keeps this
    # module, and the schema's tables are several KB a node would otherwise hold for good
    # (its PolicyError is a ValueError)
    run("meternode.policy.schema", "check_compact", policy)

_CHUNK = const(256)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _sync():
    s = getattr(os, "sync", None)
    if s:
        s()


def _write(path, data, pause):
    with open(path, "wb") as f:
        for i in range(0, len(data), _CHUNK):
            f.write(data[i : i + _CHUNK])
            pause("write")
    _sync()


def _read(path):
    # -> record dict if the file is complete and valid, else None.
    try:
        with open(path) as f:
            rec = json.load(f)
        if not isinstance(rec, dict) or not isinstance(rec.get("version"), int):
            return None
        check_compact(rec.get("policy"))
        return rec
    except (OSError, ValueError):
        return None


def mkdirs(path):
    # mkdir -p (MicroPython has no os.makedirs).
    p = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part:
            continue
        p = p + part if (not p or p.endswith("/")) else p + "/" + part
        try:
            os.mkdir(p)
        except OSError:
            pass


def _no_pause(step):
    pass


class PolicyStore:
    def __init__(self, path, pause=None):
        self.dir = path
        self.pause = pause or _no_pause  # test hook: called between every step
        mkdirs(path)  # its files' paths are made where they are used (no attribute each: RAM)
        self.recovered = None  # what load() had to repair, for an event

    def load(self):
        # -> the active record ({"version", "m", "s", "policy"}) or None (no policy yet).
        self.recovered = None
        d = self.dir
        active = d + "/active.json"
        staged = d + "/staged.tmp"
        rec = _read(active)
        if rec is None and _exists(active):
            self.recovered = "active.json unreadable"
        if rec is None:
            st = _read(staged)
            if st is not None:
                os.rename(staged, active)
                self.recovered = "finished an interrupted apply"
                rec = st
        if rec is None:
            rec = _read(d + "/previous.json")
            if rec is not None:
                self.recovered = (self.recovered or "active.json missing") + ", using previous.json"
        _remove(staged)
        _remove(d + "/previous.tmp")
        return rec

    def version(self):
        rec = _read(self.dir + "/active.json")
        return rec["version"] if rec else 0

    def previous(self):
        return _read(self.dir + "/previous.json")

    def apply(self, version, mtext, sig_hex, policy):
        check_compact(policy)
        data = json.dumps({"version": version, "m": mtext, "s": sig_hex, "policy": policy}).encode()
        pause = self.pause
        d = self.dir
        active = d + "/active.json"
        staged = d + "/staged.tmp"
        _write(staged, data, pause)
        pause("staged")
        if _exists(active):
            with open(active, "rb") as f:
                old = f.read()
            _write(d + "/previous.tmp", old, pause)
            pause("previous written")
            os.rename(d + "/previous.tmp", d + "/previous.json")
            pause("previous renamed")
        try:
            os.rename(staged, active)
        except OSError:
            # FAT cannot rename over a file: remove, then rename (load() finishes the job
            # from staged.tmp if the power goes in between).
            _remove(active)
            pause("active removed")
            os.rename(staged, active)
        pause("renamed")
        _sync()
