"""Host keystore: per-node secrets (command HMAC key, MQTT password) in one JSON file of mode
0600 inside a 0700 directory. Secrets go to the node's config.json and the broker's password
file, never to stdout, logs or the fleet database.

Location: $UMETER_HOME/keystore.json (default ~/.config/umeter).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from .errors import ConfigError

_lock = threading.Lock()


class _Locked:
    """The keystore's lock: a thread lock plus flock on `<keystore>.lock`, so two `umeter`
    processes provisioning at once never lose each other's new keys."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self) -> None:
        import fcntl

        _lock.acquire()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)  # releases the flock
        _lock.release()


def home() -> Path:
    """The toolchain's state directory ($UMETER_HOME or ~/.config/umeter), created 0700."""
    p = Path(os.environ.get("UMETER_HOME") or Path.home() / ".config" / "umeter")
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    return p


def _counters(data: dict, node_id: str) -> dict:
    """Where a node's counters are kept: its entry, or for a node whose key is not here (given
    on the command line) an entry `cmd:<node>` of its own."""
    s = data.get(node_id)
    return s if s is not None else data.setdefault("cmd:" + node_id, {})


class Keystore:
    """Secrets per node id. Writes are atomic (temp file 0600 + rename)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else home() / "keystore.json"

    def _load(self) -> dict[str, dict[str, str]]:
        if not self.path.exists():
            return {}
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"keystore {self.path} is readable by others (mode {mode:04o})",
                hint=f"chmod 600 {self.path}",
            )
        try:
            return json.loads(self.path.read_text())
        except ValueError:
            raise ConfigError(f"keystore {self.path} is not valid JSON", hint="restore it from a backup") from None

    def _save(self, data: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def secrets_for(self, node_id: str) -> dict[str, str]:
        """The node's secrets, created on first use: cmd_key (32 bytes hex), mqtt_password."""
        with _Locked(self.path):
            data = self._load()
            s = data.get(node_id)
            if s is None:
                s = {"cmd_key": secrets.token_hex(32), "mqtt_password": secrets.token_urlsafe(24)}
                data[node_id] = s
                self._save(data)
            return dict(s)

    def get(self, node_id: str) -> dict[str, str] | None:
        with _Locked(self.path):
            s = self._load().get(node_id)
            return dict(s) if s else None

    def nodes(self) -> list[str]:
        with _Locked(self.path):
            return sorted(self._load())

    def rotate(self, node_id: str) -> dict[str, str]:
        """New secrets for a node (provision it again to deliver them). Its command and frame
        counters stay: the node keeps the highest it accepted across a new key."""
        with _Locked(self.path):
            data = self._load()
            old = data.get(node_id) or {}
            data[node_id] = {"cmd_key": secrets.token_hex(32), "mqtt_password": secrets.token_urlsafe(24)}
            for k in ("cmd_ctr", "lora_ctr"):  # the node keeps both across a new key
                if k in old:
                    data[node_id][k] = old[k]
            self._save(data)
            return dict(data[node_id])

    def next_counter(self, node_id: str, now: float | None = None) -> int:
        """The counter of the next command to `node_id`: one above the last this keystore gave
        it, and at least the UNIX time in seconds, so a keystore restored from an older backup
        (or another host's) still gives one the node has not accepted, while a node that has
        seen none takes it (the first may be at most 2**32). Kept under the keystore's lock
        (`_counters`)."""
        with _Locked(self.path):
            data = self._load()
            s = _counters(data, node_id)
            ctr = max(int(time.time() if now is None else now), int(s.get("cmd_ctr", 0)) + 1)
            s["cmd_ctr"] = ctr
            self._save(data)
            return ctr

    def next_frame_counter(self, node_id: str) -> int:
        """The counter of the next LoRa-sized policy frame to `node_id` (`umeter.dr`): one above
        the last this keystore gave it. Not the time: the node takes at most 65536 above the
        last counter it accepted. Kept like `next_counter`'s, as `lora_ctr`."""
        with _Locked(self.path):
            data = self._load()
            s = _counters(data, node_id)
            ctr = int(s.get("lora_ctr", 0)) + 1
            if ctr > 0xFFFFFFFF:
                raise ConfigError(
                    f"node {node_id}'s frame counter space (u32) is used up",
                    hint="send it signed bundles (`umeter policy push`) instead",
                )
            s["lora_ctr"] = ctr
            self._save(data)
            return ctr

    def set_frame_counter(self, node_id: str, last: int) -> None:
        """Takes the node's own last accepted frame counter (from its refusal): the next frame
        gets `last + 1`."""
        with _Locked(self.path):
            data = self._load()
            s = _counters(data, node_id)
            s["lora_ctr"] = int(last)
            self._save(data)
