"""`umeter provision`: give each board of an inventory its identity, secrets, calibration,
configuration and firmware build, safely, in parallel, idempotently.

Per device:
 1. connect (raw REPL, running code interrupted), read the unique id and the mpy ABI;
    refuse a board whose architecture is not the inventory's board type;
 2. bind unique id <-> node name in the fleet database (refuse a swapped board);
 3. secrets from the host keystore (created once per node): command HMAC key, MQTT password;
 4. config.json = node id, site, MQTT (user = node id), cmd_key, calibration (board defaults
    merged with the unit's overrides, checked by the firmware's own calibration module);
 5. safe-write protocol: `/.provisioning` marker first (main.py does not start the node while it
    exists) -> one batched sha256 query -> every changed file as temp file + hash check + rename
    -> stale files removed -> everything re-hashed and compared -> manifest.json last -> marker
    removed. An interrupted run leaves old or new files, never a truncated one, and the next run
    resumes where it stopped (unchanged files are skipped by hash);
    where the board reports a ROMFS partition (`vfs.rom_ioctl`) big enough for the build's
    romfs.img, the package goes there instead of lib/ (its code then runs from flash, see
    docs/memory.md): the image is written after the marker, header last, hash-checked, skipped
    when the partition already holds it, and /lib/meternode is removed (it would come first on
    sys.path); a board without one gets the files; a board whose firmware has the package
    frozen in (`umeter build --manifest`) gets no package at all, and a build of another
    version than the frozen one is refused (files would never run: '.frozen' comes first);
 6. record the result in the fleet database; optionally reset the board so the node starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import budget
from . import build as buildmod
from .errors import ConfigError, DeviceError, UmeterError
from .inventory import Device, Fleet, dumps_config, load_inventory
from .keystore import Keystore
from .mpyfile import ARCH_CODE, ARCH_NAME
from .transport import Board, resolve_port

MARKER = "/.provisioning"

Progress = Callable[[str, str, int, int], None]  # (node, stage, done_bytes, total_bytes)


@dataclass
class Report:
    node: str
    port: str
    uid: str = ""
    status: str = "pending"  # ok | failed
    written: int = 0
    skipped: int = 0
    removed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    verified: bool = False
    error: str = ""
    romfs: str = ""  # what happened with the board's ROMFS partition ("" = it has none)
    frozen: str = ""  # the version of the package frozen into the board's firmware ("" = none)
    heap: str = ""  # the board's free heap against what the node's configuration needs
    heap_short: bool = False  # less than that: the node will run short of memory
    flash: str = ""  # the board's free flash after the install against what the node will write
    flash_short: bool = False  # less than that: firmware updates refused, or the record log cut short

    def line(self) -> str:
        if self.status != "ok":
            return f"{self.node}: FAILED — {self.error}"
        rom = f" ROMFS: {self.romfs}." if self.romfs else ""
        if self.frozen:
            rom += f" Package: umeter {self.frozen}, frozen into the firmware (no package files written)."
        heap = f" {'WARNING: heap' if self.heap_short else 'Heap'}: {self.heap}." if self.heap else ""
        heap += f" {'WARNING: flash' if self.flash_short else 'Flash'}: {self.flash}." if self.flash else ""
        return (
            f"Wrote {self.written} files ({self.bytes / 1024:.1f} KiB) to {self.node}, skipped {self.skipped} "
            f"unchanged, in {self.seconds:.1f} s; {'verified' if self.verified else 'NOT verified'}.{rom}{heap}"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _a(word: str) -> str:
    """'a pico_w', 'a sim', 'an esp32_devkitc', 'an armv6m', 'an x64' (a vowel sound first)."""
    w = word.lower()
    an = w[:1] in "aeio" or (w[:1] == "x" and w[1:2].isdigit())
    return ("an " if an else "a ") + word


def calibration_for(board: dict, overrides: dict) -> dict:
    """Board defaults merged with per-unit overrides, validated by the firmware's own code."""
    from meternode.config import ConfigError as FwConfigError
    from meternode.metrology import calcheck

    try:
        cals = calcheck.resolve(board, overrides)
    except FwConfigError as e:
        raise ConfigError(f"calibration: {e}", hint="keys per channel: gain, offset, phase, phase_table") from None
    out = {}
    for c in cals:
        d = {"gain": c.gain, "offset": c.offset, "phase": c.phase}
        if c.table:
            d["phase_table"] = [list(r) for r in c.table]
        out[c.name] = d
    return out


def node_config(dev: Device, board: dict, secrets: dict[str, str]) -> dict:
    """The node's config.json (holds its secrets: it only ever goes to the node itself)."""
    cfg: dict = {"node_id": dev.name, "site": dev.site}
    if dev.telemetry_s is not None:
        cfg["telemetry_s"] = float(dev.telemetry_s)
    cfg["cmd_key"] = secrets["cmd_key"]
    if dev.mqtt:
        m = dict(dev.mqtt)
        if "host" not in m:
            raise ConfigError(f"inventory device {dev.name!r}: mqtt.host is missing", hint="set mqtt = { host = ... }")
        m.setdefault("prefix", "umeter")
        m["user"] = dev.name
        m["password"] = secrets["mqtt_password"]
        cfg["mqtt"] = m
    cfg["calibration"] = calibration_for(board, dev.calibration)
    if board.get("hal") == "sim":
        # a virtual board's front end paces itself to the wall clock, as a board's ADC does;
        # without it the node's clock ran as fast as the host computes (~7x)
        cfg["sim"] = {"realtime": True}
    for k, v in dev.config.items():
        if k in ("node_id", "cmd_key"):
            raise ConfigError(f"inventory device {dev.name!r}: config.{k} is set by provisioning", hint="remove it")
        if k == "sim" and isinstance(v, dict) and "sim" in cfg:
            v = {**cfg["sim"], **v}  # the inventory's scenario, still in real time unless it says not
        cfg[k] = v
    pol = cfg.get("policy")
    if isinstance(pol, dict) and isinstance(pol.get("tz"), int) and "utc_offset_min" not in cfg:
        # the node's billing time (its freezes, docs/metrology.md) is its tariff calendar's; one
        # the inventory gives that is not is refused by the firmware's check_config below
        cfg["utc_offset_min"] = pol["tz"]
    from meternode.checks import check_config
    from meternode.config import ConfigError as FwConfigError

    try:
        check_config(json.loads(json.dumps(cfg)))
    except FwConfigError as e:
        raise ConfigError(f"inventory device {dev.name!r}: {e}", hint="fix the inventory") from None
    return cfg


def image_files(build_dir: Path) -> dict[str, bytes]:
    """The build's files (without its manifest), keyed by board path ('/lib/...')."""
    man = buildmod.read_manifest(build_dir)
    return {"/" + rel: (build_dir / rel).read_bytes() for rel in man["files"]}


def provision_device(
    dev: Device,
    build_dir: Path,
    *,
    keystore: Keystore,
    fleet: Fleet,
    progress: Progress | None = None,
    reset: bool = True,
    timeout: float = 10.0,
) -> Report:
    """Provision one device; raises UmeterError on failure (provision() turns it into a Report)."""
    t0 = time.monotonic()
    rep = Report(node=dev.name, port=dev.port or dev.serial or "")
    port = resolve_port(dev.port, dev.serial)
    rep.port = port
    man = buildmod.read_manifest(build_dir)
    board_def = json.loads((build_dir / "board.json").read_text())
    step = progress or (lambda *a: None)
    step(dev.name, "connect", 0, 0)  # no size yet: the bar shows the stage, not "0/1 bytes"
    with Board(port, timeout=timeout) as b:
        info = b.info()
        try:
            _provision_open(b, dev, info, man, board_def, build_dir, rep, keystore, fleet, step, port)
        except UmeterError:
            if fleet.get(info["uid"]):
                fleet.record(info["uid"], status="failed")
            raise
        if reset:
            b.hard_reset()
    rep.status = "ok"
    rep.seconds = time.monotonic() - t0
    step(dev.name, "done", rep.bytes, rep.bytes)
    return rep


def _provision_open(b: Board, dev: Device, info: dict, man: dict, board_def: dict, build_dir: Path, rep: Report,
                    keystore: Keystore, fleet: Fleet, step: Progress, port: str) -> None:  # fmt: skip
    rep.uid = info["uid"]
    want_arch = ARCH_CODE.get(man["arch"])
    if info["mpy_arch"] != want_arch:
        have = ARCH_NAME.get(info["mpy_arch"], f"arch {info['mpy_arch']}")
        raise DeviceError(
            f"{port} is {_a(have)} board ({info['machine']}), but {dev.name} is {_a(dev.board)} ({man['arch']})",
            hint="fix board= in the inventory or plug the right board into this port",
        )
    if dev.uid and dev.uid != info["uid"]:
        raise DeviceError(
            f"{port} holds board {info['uid']}, but the inventory binds {dev.name} to {dev.uid}",
            hint="wrong board on this port? fix uid= or the port in the inventory",
        )
    frozen = b.frozen_package()
    if frozen is not None and frozen != man["version"]:
        raise DeviceError(
            f"{port}'s firmware has umeter {frozen} frozen in, which the board imports before any file: "
            f"build {man['version']} would be written and never run",
            hint="provision a build of the frozen version (umeter build at its commit, then --build), "
            "or flash firmware with this build frozen in (umeter build --manifest) or without the package",
        )
    fleet.bind(info["uid"], dev.name, dev.board, dev.site, port, dev.serial)
    secrets = keystore.secrets_for(dev.name)
    cfg = node_config(dev, board_def, secrets)
    cfg_bytes = dumps_config(cfg)
    files = image_files(build_dir)
    files["/config.json"] = cfg_bytes
    if frozen is not None:  # the package is in the firmware ('.frozen' comes before /rom/lib and /lib)
        image, load = None, "frozen"
        rep.frozen = frozen
    else:
        image = _romfs_plan(b, man, build_dir, rep)
        load = "romfs" if image is not None else "mpy"
    _heap_check(b, man["arch"], dev.board, cfg, load, rep)
    if load != "mpy":  # the package runs from the ROMFS partition or the firmware: no lib/ files
        # (and those an earlier provisioning left go below: they would never run)
        files = {p: d for p, d in files.items() if not p.startswith("/lib/")}
    entries = {p[1:]: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for p, d in files.items()}
    device_man = dict(man, node_id=dev.name, files=entries)
    if image is None:
        device_man.pop("romfs", None)
    if frozen is not None:
        device_man["frozen"] = True
    man_bytes = (json.dumps(device_man, indent=1, sort_keys=True) + "\n").encode()
    paths = sorted(files)
    have = b.hashes([*paths, "/manifest.json", MARKER])
    changed = [p for p in paths if have[p] != entries[p[1:]]["sha256"]]
    man_ok = have["/manifest.json"] == hashlib.sha256(man_bytes).hexdigest()
    rep.skipped = len(paths) - len(changed)
    total = sum(len(files[p]) for p in changed)
    rom_stale = image is not None and b.romfs_hash(len(image)) != man["romfs"]["sha256"]
    if changed or not man_ok or have[MARKER] is not None or rom_stale:
        b.write_file(MARKER, f"{man['version']}\n".encode())
        if rom_stale:
            sent = 0

            def rtick(n: int) -> None:
                nonlocal sent
                sent += n
                step(dev.name, "romfs", sent, len(image))

            b.write_romfs(image, progress=rtick)
            rep.romfs = f"image written ({len(image) / 1024:.1f} KiB), verified"
        done = 0
        for p in changed:

            def tick(n: int, p: str = p) -> None:
                nonlocal done
                done += n
                step(dev.name, p, done, total)

            b.write_file(p, files[p], progress=tick)
            rep.written += 1
            rep.bytes += len(files[p])
        # stale firmware files (a module that left the build) and temp files of earlier runs
        want = set(paths)
        for p in b.walk("/lib/meternode") + [f"/{n}" for n in b.eval("os.listdir('/')")]:
            if (p.startswith("/lib/meternode/") and p not in want) or p.endswith(".tmp"):
                b.remove(p)
                rep.removed += 1
        if load != "mpy":
            # an empty /lib/meternode left behind would still be imported (a namespace package
            # before /rom/lib on sys.path), shadowing the image; under a frozen package it is
            # only flash spent
            b.remove_dirs("/lib/meternode")
        step(dev.name, "verify", total, total)
        got = b.hashes(paths)
        bad = [p for p in paths if got[p] != entries[p[1:]]["sha256"]]
        if bad:
            raise DeviceError(f"{dev.name}: {len(bad)} file(s) differ after writing, e.g. {bad[0]}", hint="run again")
        b.write_file("/manifest.json", man_bytes)
        b.remove(MARKER)
    else:
        step(dev.name, "verify", total, total)
    rep.verified = True
    _flash_check(b, cfg, {n: e for n, e in entries.items() if n != "config.json"}, load, rep)
    fleet.record(
        info["uid"],
        status="ok",
        version=man["version"],
        manifest_sha256=hashlib.sha256(man_bytes).hexdigest(),
        files=len(paths),
        utc_offset_min=cfg.get("utc_offset_min", 0),
    )


_LOADED_FROM = {"mpy": ".mpy files", "romfs": "ROMFS", "frozen": "frozen firmware"}
_OTA_RESERVE_BYTES = 16384  # config ota.reserve_bytes's default (policy/ota.py and rare.py keep it)


def _kib(n: int) -> str:
    return f"{n // 1024} KiB"


def _flash_check(b: Board, cfg: dict, build: dict, load: str, rep: Report) -> None:
    """The board's free flash after the install against what the node will write there: its
    record log up to its bound (store.max_bytes, one segment more) and, for a node that takes
    firmware updates (`fleet` in its config, the package from .mpy files), a second copy of
    the build staged beside it, counted as the firmware counts it before it stages one
    (meternode.policy.otaspace.build_bytes, + ota.reserve_bytes). Short is a warning in the report:
    the log stops at the flash's bound (delivered records make room first), and an update is
    refused with "no space" before a byte is written."""
    from meternode.policy.otaspace import build_bytes
    from meternode.store.storeinit import _MAX_BYTES, _SEGMENT_BYTES  # the node's defaults

    try:
        bs, blocks, free_blocks = b.fs()
    except Exception as e:  # a board without os.statvfs: nothing to say
        rep.flash = f"not checked: {e}"
        return
    free = bs * free_blocks
    st = cfg.get("store") or {}
    log = st.get("max_bytes", _MAX_BYTES) + st.get("segment_bytes", _SEGMENT_BYTES)
    rep.flash = f"{_kib(free)} free of {_kib(bs * blocks)} after the install; the record log grows to {_kib(log)}"
    short = []
    if log > free:
        short.append("the record log will stop at the flash's bound, making room by dropping delivered records")
    if cfg.get("fleet") and load == "mpy":
        update = build_bytes(build, bs) + (cfg.get("ota") or {}).get("reserve_bytes", _OTA_RESERVE_BYTES)
        rep.flash += f", a firmware update needs {_kib(update)} beside it"
        if update + log > free:
            smaller = ", a smaller store.max_bytes" if update <= free else ""  # (else no log is small enough)
            short.append(
                f"firmware updates will be refused on this board (no space) — a board with more flash{smaller}"
                " or the package frozen into the firmware (umeter build --manifest)"
            )
    if short:
        rep.flash_short = True
        rep.flash += ": " + "; ".join(short)


def _heap_check(b: Board, arch: str, board: str, cfg: dict, load: str, rep: Report) -> None:
    """The board's free heap against the budget of the node's configuration (umeter.budget,
    docs/memory.md: what it holds once running + 32 KB, + the machine code an rp2 keeps in its
    heap, + what the board's HAL holds beyond the sim board's, + what its open files hold on the
    board's LittleFS). Short is a warning in the
    report, not a failure: the node starts, and refuses store-and-forward (or meets
    MemoryErrors) when its heap runs out."""
    kind = budget.kind(cfg)
    try:
        parts = budget.need_parts(kind, arch=arch, load=load, board=board)
    except ValueError as e:  # a configuration or load the budget has no figure for
        rep.heap = f"not checked: {e} (docs/memory.md)"
        return
    need = sum(kb for _, kb in parts) * 1024
    gc_free, idf = b.heap()
    have = gc_free + idf
    what = f"{_a(kind.lstrip('+') or kind)} node from {_LOADED_FROM[load]}"
    shown = " + ".join(f"{kb} {name}" for name, kb in parts)
    free = f"{gc_free // 1024} KiB free" + (f" + {idf // 1024} KiB of IDF heap it can grow into" if idf else "")
    rep.heap = f"{free}; {what} needs {need // 1024} KiB ({shown})"
    if have < need:
        rep.heap_short = True
        rep.heap += (
            ": the node will run short of memory (store-and-forward refused, MemoryErrors); a ROMFS image, "
            "fewer features or a board with more RAM (docs/memory.md)"
        )


def _romfs_plan(b: Board, man: dict, build_dir: Path, rep: Report) -> bytes | None:
    """The build's ROMFS image when the board has a partition it fits in, else None (files)."""
    part = b.romfs_partition()
    if part is None:
        return None
    rom = man.get("romfs")
    if not rom:
        rep.romfs = "partition not used: the build has no romfs.img (umeter build --romfs)"
        return None
    if rom["size"] > part["size"]:
        rep.romfs = f"partition too small ({part['size'] // 1024} KiB for a {rom['size'] / 1024:.1f} KiB image): files"
        return None
    image = (build_dir / rom["file"]).read_bytes()
    if hashlib.sha256(image).hexdigest() != rom["sha256"]:
        raise ConfigError(f"{build_dir / rom['file']} does not match its manifest", hint="build again")
    rep.romfs = "image unchanged"
    return image


def build_for(boards: set[str], build_root: Path) -> dict[str, Path]:
    """Build the firmware once per board type (build_root/<board>), ROMFS image included."""
    out = {}
    for name in sorted(boards):
        res = buildmod.build(name, build_root / name, romfs=True)
        out[name] = res.out
    return out


def provision(
    devices: list[Device] | str | os.PathLike[str],
    *,
    build_dirs: dict[str, Path] | None = None,
    build_root: Path | None = None,
    keystore: Keystore | None = None,
    fleet: Fleet | None = None,
    jobs: int = 8,
    progress: Progress | None = None,
    reset: bool = True,
    timeout: float = 10.0,
) -> list[Report]:
    """Provision every device (in parallel, `jobs` at a time). Never raises for one device's
    failure: each Report says ok or failed with the one-line error."""
    devs = load_inventory(devices) if isinstance(devices, str | os.PathLike) else devices
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {jobs}", hint="e.g. --jobs 8")
    keystore = keystore or Keystore()
    fleet = fleet or Fleet()
    dirs = dict(build_dirs or {})
    missing = {d.board for d in devs} - set(dirs)
    if missing:
        from .keystore import home

        dirs.update(build_for(missing, build_root or home() / "build"))

    def one(dev: Device) -> Report:
        t0 = time.monotonic()
        try:
            return provision_device(
                dev, dirs[dev.board], keystore=keystore, fleet=fleet, progress=progress, reset=reset, timeout=timeout
            )
        except UmeterError as e:
            return Report(node=dev.name, port=dev.port or dev.serial or "", status="failed", error=str(e),
                          seconds=time.monotonic() - t0)  # fmt: skip

    with ThreadPoolExecutor(max_workers=min(jobs, len(devs))) as ex:
        return list(ex.map(one, devs))
