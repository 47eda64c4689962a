"""Virtual boards that become running nodes: `umeter vboard start --provision [--inventory F]`.

One call does what a person does with real boards on a desk: boards (the firmware on the unix
port behind a pty, umeter_hil.vboard), a broker (the embedded one unless `broker_url` names
another), a build of the firmware, `umeter provision` of every board with `reset=True`, and
the nodes start, publish and can be followed with `umeter logs NODE`.

Without an inventory each board becomes `vnode-01`, `vnode-02`, … at site `lab`, with the
demo's scenarios in turn (house, solar, shop) in real time; with one, its devices are given the
boards' ports in order (a `sim`-type board: virtual boards run the x64 build). The boards live
in `$UMETER_HOME/vboards` unless `base` says where, so the same names stay bound to the same
board ids (and the same flash) from one run to the next.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .inventory import Device, devices_from
from .provision import Report, provision
from .sim import SCENARIOS, board_definition, check_broker, parse_broker_url

# The provisioned node (store-and-forward, authenticated commands, loaded from .mpy) ran out of
# memory in the sim board's 256 KiB on the 64-bit unix port ("link error: memory allocation
# failed"); with 384 KiB it runs. A 32-bit board needs about half (docs/memory.md).
PROVISIONED_HEAP = "384k"


@dataclass
class VNodes:
    board: str = "sim"
    count: int = 1
    inventory: str | os.PathLike[str] | None = None
    broker_url: str | None = None
    base: str | os.PathLike[str] | None = None
    tcp: bool = False
    telemetry_s: float = 1.0
    jobs: int = 8
    boards: list = field(default_factory=list)  # umeter_hil.vboard.VirtualBoard
    devices: list[Device] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._broker = None
        self._registry: Path | None = None
        self._planned: list[Device] | None = None
        self.host = self.port = None

    def plan(self) -> list[Device]:
        """The devices the boards will become, checked (ConfigError) before anything starts."""
        if self._planned is None:
            self._planned = self._devices()
        return self._planned

    def _devices(self) -> list[Device]:
        if self.inventory is None:
            if self.count < 1:
                raise ConfigError(f"--count must be at least 1, not {self.count}", hint="e.g. --count 4")
            devs = [
                Device(
                    name=f"vnode-{k + 1:02d}",
                    board=self.board,
                    site="lab",
                    port="(virtual)",
                    telemetry_s=self.telemetry_s,
                    config={"sim": dict(SCENARIOS[k % len(SCENARIOS)].sim, seed=k + 1)},
                )
                for k in range(self.count)
            ]
        else:
            devs = load_inventory_for_vboards(self.inventory)
        for d in devs:
            b = board_definition(d.board)
            if b.get("arch") != "x64":
                where = f"inventory device {d.name!r}" if self.inventory is not None else "--board"
                raise ConfigError(
                    f"{where}: {d.board} is a {b.get('arch')} board; a virtual board runs the x64 build",
                    hint='use the "sim" board for virtual boards',
                )
        return devs

    def start(self) -> list[Report]:
        """Boards, broker, build, provision; the nodes run when this returns. Raises a
        ConfigError/TransportError before anything starts for bad input, and a DeviceError
        naming the boards that could not be provisioned."""
        from umeter_hil.vboard import VirtualBoard

        from .errors import DeviceError
        from .keystore import home

        devs = self.plan()
        need_broker = [d for d in devs if not d.mqtt.get("host")]
        if need_broker:
            if self.broker_url:
                self.host, self.port = parse_broker_url(self.broker_url)
                check_broker(self.host, self.port)
            else:
                from .broker import EmbeddedBroker

                self._broker = EmbeddedBroker().start()
                self.host, self.port = self._broker.host, self._broker.port
        base = Path(self.base) if self.base is not None else home() / "vboards"
        for k, d in enumerate(devs):
            vb = VirtualBoard(base / f"{d.board}-{k}", d.board, tcp=self.tcp, heap=PROVISIONED_HEAP).start()
            self.boards.append(vb)
        for vb in self.boards:
            vb.wait_booted()
        broker = {"host": self.host, "port": self.port}
        self.devices = [
            dataclasses.replace(d, port=vb.port, serial=None, mqtt=d.mqtt if d.mqtt.get("host") else d.mqtt | broker)
            for d, vb in zip(devs, self.boards, strict=True)
        ]
        from .console import register

        # `umeter logs NODE` reads the board's console from the start, not only what comes next
        self._registry = register({d.name: vb.console_path for d, vb in zip(self.devices, self.boards, strict=True)})
        self.reports = provision(self.devices, jobs=self.jobs, reset=True)
        failed = [r for r in self.reports if r.status != "ok"]
        if failed:
            first = failed[0]
            raise DeviceError(
                f"{len(failed)} of {len(self.reports)} virtual boards not provisioned: {first.node}: {first.error}",
                hint="fix that and start again; finished files are skipped",
            )
        return self.reports

    @property
    def broker(self) -> str | None:
        return None if self.host is None else f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        for vb in self.boards:
            vb.stop()
        self.boards = []
        if self._registry is not None:
            self._registry.unlink(missing_ok=True)
            self._registry = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

    def __enter__(self) -> VNodes:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_inventory_for_vboards(path: str | os.PathLike[str]) -> list[Device]:
    """An inventory whose devices may leave out port and serial: the virtual boards give them."""
    import tomllib

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"inventory {p}: {e.strerror}", hint="see docs/fleet.md for the format") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"inventory {p}: not valid TOML ({e})", hint="fix the file") from None
    # every device gets a placeholder port (replaced by its virtual board's pty), so the
    # inventory's own checks run unchanged
    defaults = data.get("defaults", {})
    if isinstance(defaults, dict):
        defaults = {k: v for k, v in defaults.items() if k not in ("port", "serial")}
        data["defaults"] = {**defaults, "port": "(virtual)"}
    devs = data.get("device", [])
    if isinstance(devs, list):
        data["device"] = [{k: v for k, v in d.items() if k not in ("port", "serial")} if isinstance(d, dict) else d
                          for d in devs]  # fmt: skip
    return devices_from(data, p)
