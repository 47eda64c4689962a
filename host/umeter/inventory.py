"""Fleet inventory: a TOML file listing devices to provision, and the SQLite database of what
was provisioned (keyed by the board's unique id).

Inventory file:

    [defaults]                      # any device key, applied where a device does not set it
    board = "esp32_devkitc"
    site = "plant-1"
    telemetry_s = 10.0
    mqtt = { host = "mqtt.example", port = 1883, prefix = "umeter" }

    [[device]]
    name = "meter-01"               # node id: letters, digits, - and _
    port = "/dev/ttyUSB0"           # or: serial = "A50285BI" (USB serial number)
    uid = "a4cf12345678"            # optional: the unique id this name must be bound to
    calibration = { I1 = { gain = 1.012, phase = 1.4 } }   # per-unit overrides
    config = { profile_s = 300 }    # extra config.json keys
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_DEVICE_KEYS = {"name", "port", "serial", "uid", "board", "site", "calibration", "config", "mqtt", "telemetry_s"}


@dataclass
class Device:
    name: str
    board: str
    site: str
    port: str | None = None
    serial: str | None = None
    uid: str | None = None
    calibration: dict = field(default_factory=dict)
    mqtt: dict = field(default_factory=dict)
    telemetry_s: float | None = None
    config: dict = field(default_factory=dict)


def load_inventory(path: str | os.PathLike[str]) -> list[Device]:
    """Parse and check an inventory file; ConfigError naming the device and key on bad input."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"inventory {p} does not exist", hint="see docs/fleet.md for the format")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"inventory {p}: not valid TOML ({e})", hint="fix the file") from None
    return devices_from(data, p)


def devices_from(data: dict, p: Path | str) -> list[Device]:
    """The devices of a parsed inventory (`p` names it in errors), checked as load_inventory does."""
    unknown = set(data) - {"defaults", "device"}
    if unknown:
        raise ConfigError(
            f"inventory {p}: unknown table(s) {', '.join(sorted(unknown))}", hint="use [defaults] and [[device]]"
        )
    defaults = data.get("defaults", {})
    devs = data.get("device", [])
    if not isinstance(devs, list) or not devs:
        raise ConfigError(f"inventory {p} lists no [[device]]", hint="add at least one [[device]] table")
    out: list[Device] = []
    seen: set[str] = set()
    for n, d in enumerate(devs):
        where = f"device[{n}]"
        merged = {**defaults, **d}
        bad = set(merged) - _DEVICE_KEYS
        if bad:
            raise ConfigError(
                f"inventory {where}: unknown key(s) {', '.join(sorted(bad))}",
                hint=f"known: {', '.join(sorted(_DEVICE_KEYS))}",
            )
        name = merged.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"inventory {where}.name = {name!r} is not a node id", hint="letters, digits, - and _ (max 48)"
            )
        where = f"device {name!r}"
        if name in seen:
            raise ConfigError(f"inventory: {where} is listed twice", hint="node names must be unique")
        seen.add(name)
        if not merged.get("port") and not merged.get("serial"):
            raise ConfigError(
                f"inventory {where} has neither port nor serial", hint='add port = "/dev/ttyUSB0" or serial = "..."'
            )
        for key in ("board", "site"):
            if not isinstance(merged.get(key), str):
                raise ConfigError(f"inventory {where}.{key} is missing", hint="set it on the device or in [defaults]")
        for key in ("calibration", "config", "mqtt"):
            if not isinstance(merged.get(key, {}), dict):
                raise ConfigError(f"inventory {where}.{key} must be a table", hint=f"{key} = {{ ... }}")
        mqtt = {**defaults.get("mqtt", {}), **d.get("mqtt", {})}
        out.append(
            Device(
                name=name,
                board=merged["board"],
                site=merged["site"],
                port=merged.get("port"),
                serial=merged.get("serial"),
                uid=(merged.get("uid") or None) and str(merged["uid"]).lower(),
                calibration=merged.get("calibration", {}),
                mqtt=mqtt,
                telemetry_s=merged.get("telemetry_s"),
                config=merged.get("config", {}),
            )
        )
    return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    uid TEXT PRIMARY KEY,
    node_id TEXT UNIQUE NOT NULL,
    board TEXT NOT NULL,
    site TEXT NOT NULL,
    port TEXT,
    serial TEXT,
    version TEXT,
    manifest_sha256 TEXT,
    files INTEGER,
    status TEXT NOT NULL,
    first_seen REAL NOT NULL,
    provisioned_at REAL,
    utc_offset_min INTEGER
);
"""
# columns added since the first schema: a fleet database made before them gets them on opening
_ADDED = {"utc_offset_min": "INTEGER"}


class Fleet:
    """The fleet database (SQLite, $UMETER_HOME/fleet.sqlite). Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        from .keystore import home

        self.path = Path(path) if path else home() / "fleet.sqlite"
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(nodes)")}
            for col, kind in _ADDED.items():
                if col not in have:
                    db.execute(f"ALTER TABLE nodes ADD COLUMN {col} {kind}")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def bind(self, uid: str, node_id: str, board: str, site: str, port: str | None, serial: str | None) -> None:
        """Record that `uid` is node `node_id`; ConfigError if either is bound to something else."""
        with self._lock, self._db() as db:
            row = db.execute("SELECT node_id FROM nodes WHERE uid = ?", (uid,)).fetchone()
            if row and row["node_id"] != node_id:
                raise ConfigError(
                    f"board {uid} on {port} is already node {row['node_id']!r}, not {node_id!r}",
                    hint="check the port in the inventory, or `umeter fleet forget` the old node",
                )
            other = db.execute("SELECT uid FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if other and other["uid"] != uid:
                raise ConfigError(
                    f"node {node_id!r} is bound to board {other['uid']}, but {port} holds board {uid}",
                    hint="wrong board on this port? or `umeter fleet forget` to re-bind the name",
                )
            db.execute(
                "INSERT INTO nodes (uid, node_id, board, site, port, serial, status, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT(uid) DO UPDATE SET "
                "board = excluded.board, site = excluded.site, port = excluded.port, serial = excluded.serial",
                (uid, node_id, board, site, port, serial, time.time()),
            )

    def record(
        self,
        uid: str,
        *,
        status: str,
        version: str | None = None,
        manifest_sha256: str | None = None,
        files: int | None = None,
        utc_offset_min: int | None = None,
    ) -> None:
        """A provisioning's outcome; `utc_offset_min` the billing time its config gave the node."""
        with self._lock, self._db() as db:
            db.execute(
                "UPDATE nodes SET status = ?, version = COALESCE(?, version), "
                "manifest_sha256 = COALESCE(?, manifest_sha256), files = COALESCE(?, files), "
                "utc_offset_min = COALESCE(?, utc_offset_min), "
                "provisioned_at = CASE WHEN ? = 'ok' THEN ? ELSE provisioned_at END WHERE uid = ?",
                (status, version, manifest_sha256, files, utc_offset_min, status, time.time(), uid),
            )

    def set_offset(self, node_id: str, utc_offset_min: int) -> None:
        """The billing time a node said it keeps (its `status` answer): what `umeter export`
        dates its freezes by where their timestamps alone fit two offsets."""
        with self._lock, self._db() as db:
            db.execute("UPDATE nodes SET utc_offset_min = ? WHERE node_id = ?", (utc_offset_min, node_id))

    def offsets(self) -> dict[str, int]:
        """node id -> its billing offset from UTC (minutes), for the nodes it is known of."""
        with self._lock, self._db() as db:
            rows = db.execute("SELECT node_id, utc_offset_min FROM nodes WHERE utc_offset_min IS NOT NULL")
            return {r["node_id"]: r["utc_offset_min"] for r in rows}

    def nodes(self) -> list[dict]:
        with self._lock, self._db() as db:
            return [dict(r) for r in db.execute("SELECT * FROM nodes ORDER BY site, node_id")]

    def get(self, key: str) -> dict | None:
        """A node by node id or unique id."""
        with self._lock, self._db() as db:
            r = db.execute("SELECT * FROM nodes WHERE node_id = ? OR uid = ?", (key, key.lower())).fetchone()
            return dict(r) if r else None

    def forget(self, key: str) -> bool:
        with self._lock, self._db() as db:
            return db.execute("DELETE FROM nodes WHERE node_id = ? OR uid = ?", (key, key.lower())).rowcount > 0


def dumps_config(cfg: dict) -> bytes:
    """config.json bytes, canonical so an unchanged config hashes the same every run."""
    return (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode()
