"""Virtual nodes on the MicroPython unix port, an MQTT broker, and a telemetry subscriber.

`SimRun` is what `umeter sim` drives: it writes a flash directory per node (board.json and
config.json, as `umeter provision` would on a real board), starts the firmware's own
`main.py` on the unix port for each, starts the embedded amqtt broker unless one is given,
and keeps the latest telemetry of every node from the broker.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from . import unixport
from .errors import ConfigError, TransportError


@dataclass(frozen=True)
class Scenario:
    """What a virtual node's front end sees: mains voltage and the load on each CT."""

    name: str
    description: str
    sim: dict


# I1 is the grid connection (role "main"), I2 a sub-circuit (role "circuit"); angle is the
# degrees the current lags the voltage, so 180 means power flowing out to the grid.
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "house",
        "house importing: kettle and fridge on, heat pump circuit",
        {
            "voltage": {"rms": 231.0, "harmonics": [[5, 0.02, 0.0]]},
            "currents": [{"rms": 13.5, "angle": 18.0}, {"rms": 6.0, "angle": 32.0}],
        },
    ),
    Scenario(
        "solar",
        "house with rooftop solar exporting at noon",
        {"voltage": {"rms": 236.5}, "currents": [{"rms": 9.0, "angle": 178.0}, {"rms": 14.0, "angle": 180.0}]},
    ),
    Scenario(
        "shop",
        "small shop: lighting and refrigeration, distorted current",
        {
            "voltage": {"rms": 228.0, "harmonics": [[3, 0.015, 0.0]]},
            "currents": [
                {"rms": 24.0, "angle": 28.0, "harmonics": [[3, 0.18, 0.0], [5, 0.09, 0.0]]},
                {"rms": 7.5, "angle": 40.0},
            ],
        },
    ),
)


def scenario(name: str) -> Scenario:
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise ConfigError(f"unknown scenario {name!r}", hint="choose one of " + ", ".join(s.name for s in SCENARIOS))


def parse_broker_url(url: str) -> tuple[str, int]:
    """'mqtt://host:port' -> (host, port); port defaults to 1883."""
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise ConfigError(f"bad broker URL {url!r}", hint="use mqtt://HOST:PORT, e.g. mqtt://127.0.0.1:1883")
    try:
        port = u.port or 1883
    except ValueError:
        raise ConfigError(f"bad port in broker URL {url!r}", hint="the port is a number from 1 to 65535") from None
    return u.hostname, port


def check_broker(host: str, port: int, timeout: float = 3.0) -> None:
    """Raise TransportError naming the broker when nothing accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise TransportError(
            f"cannot reach MQTT broker mqtt://{host}:{port} ({e.strerror or e})",
            hint="start the broker, or leave out --broker to use the embedded one",
        ) from None


def board_definition(name: str) -> dict:
    path = unixport.boards_dir() / f"{name}.json"
    if not path.exists():
        names = sorted(p.stem for p in unixport.boards_dir().glob("*.json"))
        raise ConfigError(f"unknown board {name!r}", hint="boards: " + ", ".join(names))
    return json.loads(path.read_text())


@dataclass
class NodeView:
    """What the host knows about one node from the broker."""

    node_id: str
    scenario: Scenario
    state: str = "starting"
    telemetry: dict | None = None
    received: float = 0.0
    messages: int = 0


@dataclass
class VirtualNode:
    node_id: str
    scenario: Scenario
    root: Path
    proc: object = None
    log_path: Path | None = None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class SimRun:
    nodes: int = 3
    broker_url: str | None = None
    telemetry_s: float = 1.0
    board: str = "sim"
    prefix: str = "umeter"
    workdir: Path | None = None
    keep: bool = False
    views: dict[str, NodeView] = field(default_factory=dict)
    vnodes: list[VirtualNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.nodes > 64:
            raise ConfigError(f"--nodes {self.nodes} is out of range", hint="run 1 to 64 virtual nodes")
        if not 0.1 <= self.telemetry_s <= 3600:
            raise ConfigError(f"telemetry interval {self.telemetry_s} s is out of range", hint="0.1 to 3600 s")
        self._broker = None
        self._client = None
        self._lock = threading.Lock()
        self._own_dir = False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        board = board_definition(self.board)
        if self.broker_url:
            host, port = parse_broker_url(self.broker_url)
            check_broker(host, port)
        else:
            from .broker import EmbeddedBroker

            self._broker = EmbeddedBroker().start()
            host, port = self._broker.host, self._broker.port
        self.host, self.port = host, port
        self._subscribe(host, port)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="umeter-sim-"))
            self._own_dir = True
        for n in range(self.nodes):
            sc = SCENARIOS[n % len(SCENARIOS)]
            node_id = f"node-{n + 1:02d}"
            self.views[node_id] = NodeView(node_id, sc)
            self.vnodes.append(self._start_node(node_id, sc, board, n))

    def _start_node(self, node_id: str, sc: Scenario, board: dict, n: int) -> VirtualNode:
        root = self.workdir / node_id
        root.mkdir(parents=True, exist_ok=True)
        (root / "board.json").write_text(json.dumps(board))
        sim = dict(sc.sim, realtime=True, seed=n + 1)
        config = {
            "node_id": node_id,
            "telemetry_s": self.telemetry_s,
            "mqtt": {"host": self.host, "port": self.port, "prefix": self.prefix, "keepalive": 30},
            "sim": sim,
        }
        (root / "config.json").write_text(json.dumps(config, indent=1))
        main = unixport.firmware_root() / "main.py"
        log_path = root / "console.log"
        log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        argv = unixport.command(main, heap=board.get("heap", unixport.DEFAULT_HEAP))
        proc = unixport.spawn(argv, cwd=root, env={"MICROPYPATH": unixport.micropypath()}, log=log)
        log.close()
        return VirtualNode(node_id, sc, root, proc, log_path)

    def _subscribe(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"umeter-sim-{time.time_ns() % 10**9}")
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe([(f"{self.prefix}/+/telemetry", 0), (f"{self.prefix}/+/state", 1)])
        try:
            c.connect(host, port, keepalive=30)
        except OSError as e:
            raise TransportError(
                f"cannot subscribe at mqtt://{host}:{port} ({e})", hint="is it an MQTT broker?"
            ) from None
        c.loop_start()
        self._client = c

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 3:
            return
        node_id, leaf = parts[1], parts[2]
        with self._lock:
            view = self.views.get(node_id)
            if view is None:
                return
            if leaf == "state":
                view.state = msg.payload.decode(errors="replace")
            elif leaf == "telemetry":
                try:
                    from meternode.link import telemetry

                    view.telemetry = telemetry.decode(msg.payload)
                except ValueError:
                    return  # not ours to crash on; the count shows it
                view.received = time.monotonic()
                view.messages += 1
                view.state = "online"

    def snapshot(self) -> list[NodeView]:
        with self._lock:
            return [
                NodeView(v.node_id, v.scenario, v.state, v.telemetry, v.received, v.messages)
                for v in self.views.values()
            ]

    def dead_nodes(self) -> list[VirtualNode]:
        return [n for n in self.vnodes if n.exited() is not None]

    def stop(self) -> None:
        for n in self.vnodes:
            if n.proc is not None:
                unixport.stop(n.proc)
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._own_dir and not self.keep and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SimRun:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
