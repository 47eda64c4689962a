"""Virtual nodes on the MicroPython unix port, an MQTT broker, and a telemetry subscriber.

`SimRun` is what `umeter sim` drives: it writes a flash directory per node (board.json and
config.json, as `umeter provision` would on a real board), starts the firmware's own
`main.py` on the unix port for each, starts the embedded amqtt broker unless one is given,
and keeps the latest telemetry of every node from the broker.

Options the demo adds on top (docs/sim.md):
- `scenarios`: the front-end scenario of each node, by name, assigned round robin;
- `policy`: a compact policy (umeter.policy) every node runs: the tariff calendar drives the
  meter's tariff registers and demand response drives a (soft) relay; the policy's own
  `policy/state` and `policy/event` messages feed the view. A grid frequency dip is scripted
  into the sim front end so a `freq_below` rule has something to act on;
- `db`: every record the nodes send goes into umeter.consumer's store (an SQLite file, or a
  postgresql:// URL; each record once, gaps asked again); the nodes' flash then lives beside
  the file (under $UMETER_HOME/sim for a URL) so a later run continues their sequence numbers
  instead of restarting them;
- `bus`: meter-bus protocols (umeter.simbus): every node gets simulated meters on its own
  buses and the gateway configuration to poll them; their READING records and METER events
  feed each node's `meters` view.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from . import simbus, unixport, validate
from .console import ConsoleTail, LastError
from .console import register as register_consoles
from .errors import ConfigError, TransportError
from .mqttc import connect, make_client


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


def parse_scenarios(text: str) -> list[str]:
    """'house,solar' -> ['house', 'solar'], every name checked."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ConfigError(f"bad scenario list {text!r}", hint="names separated by commas, e.g. house,solar")
    for n in names:
        scenario(n)
    return names


# With a policy, the grid frequency dips for every node at these sim seconds, so a `freq_below`
# demand-response rule sheds the relay and the fleet restores after its randomised delays.
POLICY_DIP: tuple[float, float, float] = (8.0, 11.0, 49.6)  # from, until, Hz


# With `bus` every node loads the gateway, which node.py starts only with its measured need
# free at its gate (_GATEWAY_NEED, fitted to benchmarks/gateway.py's bisections): for the 5
# meters of 4 protocols a `umeter sim --bus` node reads it asks 171 349 B on the 64-bit port
# from source (`benchmarks/gateway.py --need sim` measured 168 672 B for them). What a sim
# node uses before that gate, measured (its console's "gateway off/on: N bytes free"):
# 223 968 B (at 288k 70 944 B were free), 254 208 B with the demo policy. So 400k leaves
# ~14 KB above the gate, 432k ~17 KB with a policy. With --fleet, 512k already
# leaves 261 KB free at the gate and 169 KB once the gateway runs: measured, a signed bundle
# pushed to such a node was applied while it read its five meters.
BUS_HEAP = "400k"
BUS_POLICY_HEAP = "432k"
BUS_FLEET_HEAP = "512k"
# Any other configuration (a real board's definition, fewer or other modules loaded) is sized
# by the node itself: when it logs "gateway off: F bytes free, it needs N" and --heap was not
# given, the nodes get the difference (in 16 KiB steps, one step to spare) and that node is
# started again.
_GATE = re.compile(r"gateway off: (\d+) bytes free, it needs (\d+)")
_HEAP_STEP = 16 * 1024

# A real board's definition run as a virtual node (`--board esp32_devkitc`): more channels, power
# quality and pulse inputs than the sim board; at 256 KiB its link failed to start ("memory
# allocation failed, allocating 1280 bytes"), at 384 KiB it runs with store-and-forward.
VIRTUAL_BOARD_HEAP = "384k"

_WHAT = {
    "+store": "store-and-forward",
    "+cmd_key": "store-and-forward and commands",
    "+policy": "a policy",
    "+fleet": "a policy and signed bundles",
}
# The budget is a running node's; a fleet node must also take in a signed bundle at once.
# Measured with tests/e2e/test_sim_ota.py's bundle on the 64-bit port when it came inline (one
# 13.7-KB MQTT message): at 393k the message found no free block of its length, at 425k the
# transfer failed, at 512k it was staged and confirmed.  Files come in 1-KB chunks now, but that
# build is the firmware as source (~110 files): a ~15-KB `begin`, and a boot that compiles it.
FLEET_HEAP = "512k"
PROFILE_S = 60  # the demo's load-profile period: one record per node per minute (the minimum)


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
    policy_state: dict | None = None  # the last `policy/state` (tariff, relay, price)
    policy_event: dict | None = None  # the last `policy/event`
    records: int = 0  # records stored in the database by this run
    error: str | None = None  # the node's last failure from its console ("link error: …")
    error_at: float = 0.0  # time.monotonic() when it was seen
    restarts: int = 0  # times the node was started again (reset, reboot into new firmware, crash)
    meters: dict[str, simbus.MeterView] = field(default_factory=dict)  # with --bus: meter id -> view
    gateway_on: bool | None = None  # with --bus: None until the node's console says whether it started
    gateway_error: str | None = None  # why the gateway is off, or a meter it skipped

    def failing(self) -> bool:
        """The last thing heard from the node is a failure (nothing received since)."""
        return self.error is not None and (self.telemetry is None or self.error_at > self.received)

    def tariff(self) -> int | None:
        t = self.telemetry or {}
        if "tariff" in t:
            return t["tariff"]
        return None if self.policy_state is None else self.policy_state.get("tariff")

    def relay(self) -> bool | None:
        """The relay state from telemetry (`relay`), else from the policy service's state."""
        t = self.telemetry or {}
        if t.get("relay") is not None:
            return bool(t["relay"])
        r = None if self.policy_state is None else self.policy_state.get("relay")
        return None if r is None else bool(r)


# the file a node's sim watchdog takes as a request to stop (firmware hal/sim.py SimWatchdog, state
# path "supervisor.json" + ".stop")
STOP_FILE = "supervisor.json.stop"


@dataclass
class VirtualNode:
    node_id: str
    scenario: Scenario
    root: Path
    proc: object = None
    log_path: Path | None = None
    tail: ConsoleTail | None = None  # its console.log, read as it grows
    restarts: int = 0
    crashes: int = 0  # exits with a non-zero code (a traceback) in a row
    restart_at: float | None = None  # when an exited node is started again
    started_at: float = 0.0
    heap: int = 0  # the heap it was started with (bytes)

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
    scenarios: list[str] | None = None
    policy: dict | None = None
    fleet: dict | None = None
    db: Path | str | None = None
    heap: str | None = None
    bus: list[str] | None = None  # meter-bus protocols (umeter.simbus.PROTOCOLS) for every node
    bus_interval_s: float = simbus.INTERVAL_S  # each simulated meter is read this often
    on_console: Callable[[str, str], None] | None = None  # (node, line) for every console line
    # authenticated commands: every node gets its cmd_key from the keystore ($UMETER_HOME), so
    # `umeter command NODE ...` reaches it as it would a provisioned board
    commands: bool = False
    views: dict[str, NodeView] = field(default_factory=dict)
    vnodes: list[VirtualNode] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.nodes > 64:
            raise ConfigError(f"--nodes {self.nodes} is out of range", hint="run 1 to 64 virtual nodes")
        if not 0.1 <= self.telemetry_s <= PROFILE_S / 2:
            # the nodes' load profile (a record a minute) needs a snapshot in every interval
            raise ConfigError(
                f"telemetry interval {self.telemetry_s} s is out of range",
                hint=f"0.1 to {PROFILE_S // 2} s: half the nodes' {PROFILE_S}-s load-profile period at most",
            )
        names = self.scenarios or [s.name for s in SCENARIOS]
        if self.scenarios and len(names) > self.nodes:
            raise ConfigError(
                f"{len(names)} scenarios for {self.nodes} nodes",
                hint="give at most one scenario per node, or more --nodes",
            )
        self._scenarios = [scenario(n) for n in names]
        if self.bus:
            self.bus = simbus.parse_protocols(",".join(self.bus))
        if self.fleet is not None and self.policy is None:
            raise ConfigError("a fleet identity without a policy", hint="give --policy too")
        self._broker = None
        self._client = None
        self.firmware: Path | None = None  # the .mpy build the nodes run (start())
        self._lock = threading.Lock()
        self._own_dir = False
        self.consumer = None
        self._base: dict[str, int] = {}  # records per node in the database before this run
        self._counters0: dict[str, int] = {}
        self._board: dict = {}
        self._virtual = False  # a real board's definition behind the sim front end (_as_virtual)
        self._node_heap = ""
        self._stopping = threading.Event()
        self._keeper: threading.Thread | None = None
        self._registry: Path | None = None
        self.buses: dict[str, simbus.NodeBuses] = {}  # with bus: node id -> its buses and meters

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        board = self._as_virtual(board_definition(self.board))
        if self.bus:
            simbus.check_board(board, self.board, self.bus)
        if self.broker_url:
            host, port = parse_broker_url(self.broker_url)
            check_broker(host, port)
        else:
            from .broker import EmbeddedBroker

            self._broker = EmbeddedBroker().start()
            host, port = self._broker.host, self._broker.port
        self.host, self.port = host, port
        heap = self.heap or self._heap(board)
        self._subscribe(host, port)
        ids = [f"node-{n + 1:02d}" for n in range(self.nodes)]
        if self.db is not None:
            self._open_db(host, port, ids)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="umeter-sim-"))
            self._own_dir = True
        self._board, self._node_heap = board, heap
        # the nodes run the .mpy build, as provisioned boards do (compiling from source would
        # need the compiler's peak on top of the budget), for this unix port's architecture
        from .build import build

        self.firmware = build(self.board, self.workdir / "firmware", arch=unixport.native_arch()).out
        for n, node_id in enumerate(ids):
            sc = self._scenarios[n % len(self._scenarios)]
            view = NodeView(node_id, sc)
            if self.bus:
                nb = self.buses[node_id] = simbus.NodeBuses(n, self.bus, self.bus_interval_s).start()
                view.meters = {
                    bm.meter_id: simbus.MeterView(bm.meter_id, bm.protocol, bm.bus, bm.kind) for bm in nb.meters
                }
            self.views[node_id] = view
            self.vnodes.append(self._start_node(node_id, sc, board, n, heap))
        self._registry = register_consoles({v.node_id: v.log_path for v in self.vnodes})
        self._keeper = threading.Thread(target=self._keep_nodes, name="umeter-sim-nodes", daemon=True)
        self._keeper.start()

    def _as_virtual(self, board: dict) -> dict:
        """A real board's definition for a virtual node: its channels, scaling, calibration and
        pins as they are, its ADC replaced by the sim front end (`hal` "sim"), and a heap the
        64-bit unix port needs for that configuration (measured: below it the node runs out of
        memory starting its link; docs/sim.md)."""
        if board.get("hal") == "sim":
            return board
        self._virtual = True
        self.notes.append(
            f"The {self.board} board's channels and calibration run with the sim front end (its ADC needs the "
            f"hardware) and a {VIRTUAL_BOARD_HEAP} heap instead of its {board.get('heap', unixport.DEFAULT_HEAP)}: "
            "the 64-bit unix port needs up to twice a 32-bit board's heap."
        )
        return dict(board, hal="sim", heap=VIRTUAL_BOARD_HEAP)

    def _heap(self, board: dict) -> int | str:
        """The budgeted heap of this run's node configuration on this unix port (umeter.budget,
        docs/memory.md): what such a node holds, run from the .mpy build, + 32 KB. The gateway
        (`bus`) is not in the budget: its nodes get the heaps measured for it (BUS_HEAP…),
        and more if a node's gate says so. The budget is measured on the sim board: a real
        board's definition (more channels, power quality, pulse inputs) keeps the heap
        _as_virtual gave it where that is more."""
        from . import budget

        if self.bus:
            have = board.get("heap", unixport.DEFAULT_HEAP)
            need = BUS_FLEET_HEAP if self.fleet else BUS_POLICY_HEAP if self.policy is not None else BUS_HEAP
            why = "gateway" + (" + policy + signed bundles" if self.fleet else " + policy" if self.policy else "")
            if unixport.parse_heap(have) >= unixport.parse_heap(need):
                return have
            self.notes.append(
                f"Nodes run with a {need} heap instead of the {self.board} board's {have}: the {why} service "
                "(the gateway is not in the budget: docs/memory.md)."
            )
            return need
        k = "+fleet" if self.fleet else "+policy" if self.policy else "+cmd_key" if self.commands else "+store"
        heap = budget.heap_for(k, words=unixport.word_bytes())
        if self._virtual:
            return max(heap, unixport.parse_heap(board["heap"]))
        if self.fleet:
            heap = max(heap, unixport.parse_heap(FLEET_HEAP))
            self.notes.append(
                f"Nodes run the .mpy build in a {heap // 1024} KB heap each: a node with {_WHAT[k]} holds "
                f"{budget.held_kb(k, words=unixport.word_bytes())} KB, and receiving a bundle needs more at once "
                "(docs/memory.md)."
            )
            return heap
        self.notes.append(
            f"Nodes run the .mpy build in a {heap // 1024} KB heap each: what a node with "
            f"{_WHAT[k]} holds + {budget.MARGIN_KB} KB (docs/memory.md)."
        )
        return heap

    def _open_db(self, host: str, port: int, ids: list[str]) -> None:
        from .consumer import Consumer
        from .errors import UmeterError
        from .store import describe, is_url

        if is_url(self.db):  # PostgreSQL: the nodes' flash lives under $UMETER_HOME
            from .keystore import home

            label = describe(self.db)
            if self.workdir is None:
                self.workdir = home() / "sim" / "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
                self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            db = Path(self.db)
            label = str(db)
            if db.parent and not db.parent.is_dir():
                raise ConfigError(
                    f"--db {db}: directory {db.parent} does not exist", hint="create it or choose another path"
                )
            if self.workdir is None:  # the nodes' flash lives beside their records
                self.workdir = db.with_name(db.name + ".nodes")
                self.workdir.mkdir(exist_ok=True)
        try:
            c = Consumer(self.db, None, port, self.prefix)
        except UmeterError:
            raise
        except Exception as e:  # sqlite3.DatabaseError: not a database, locked, ...
            raise ConfigError(f"--db {label}: cannot be used as a store ({e})", hint="give a new file") from None
        for node_id in ids:
            n = c.count(node_id)
            if n and not (self.workdir / node_id / "store").is_dir():
                c.close()
                raise ConfigError(
                    f"--db {label} holds {n} records of {node_id} but its flash {self.workdir / node_id} is gone: "
                    "its new records would restart at seq 1 and be dropped as duplicates",
                    hint="use a new --db file",
                )
            self._base[node_id] = n
        self._counters0 = c.counters()
        c.host = host
        c.start()
        self.consumer = c

    def db_summary(self) -> dict:
        """What this run stored: records per node, duplicates dropped, and the database's totals."""
        from .store import describe

        c = self.consumer
        if c is None:
            return {}
        now = c.counters()
        per = {n: c.count(n) - self._base.get(n, 0) for n in self.views}
        return {
            "db": describe(self.db),
            "records": per,
            "duplicates": now["duplicates"] - self._counters0.get("duplicates", 0),
            "lost": now["lost"] - self._counters0.get("lost", 0),
            "resend_requests": now["resend_requests"] - self._counters0.get("resend_requests", 0),
            "total": c.count(),
            "gaps": {n: c.gaps(n) for n in self.views if c.gaps(n)},
        }

    def node_config(self, node_id: str, sc: Scenario, n: int) -> dict:
        """The config.json of one virtual node (what `umeter provision` writes on a board)."""
        sim = dict(sc.sim, realtime=True, seed=n + 1)
        config = {
            "node_id": node_id,
            "telemetry_s": self.telemetry_s,
            "profile_s": PROFILE_S,
            "mqtt": {"host": self.host, "port": self.port, "prefix": self.prefix, "keepalive": 30},
            "sim": sim,
        }
        if node_id in self.buses:
            config["gateway"] = self.buses[node_id].gateway_config()
        if self.commands:
            from .keystore import Keystore

            config["cmd_key"] = Keystore().secrets_for(node_id)["cmd_key"]
        if self.policy is not None:
            t0, t1, hz = POLICY_DIP
            sim["events"] = [*sim.get("events", []), {"at": t0, "freq": hz}, {"at": t1, "freq": sim.get("freq", 50.0)}]
            config["policy"] = self.policy
            # the nodes bill in the policy's local time, as its tariff calendar runs
            config["utc_offset_min"] = self.policy.get("tz", 0)
            if self.fleet is not None:
                config["fleet"] = self.fleet
        return config

    def _start_node(self, node_id: str, sc: Scenario, board: dict, n: int, heap: str | int) -> VirtualNode:
        root = self.workdir / node_id
        root.mkdir(parents=True, exist_ok=True)
        (root / "board.json").write_text(json.dumps(board))
        config = self.node_config(node_id, sc, n)
        (root / "config.json").write_text(json.dumps(config, indent=1))
        log_path = root / "console.log"
        tail = ConsoleTail(log_path)
        if log_path.exists():
            tail.offset = log_path.stat().st_size  # a continued run (--db): only this run's lines
        vn = VirtualNode(node_id, sc, root, None, log_path, tail)
        self._power_on(vn)
        return vn

    def _power_on(self, vn: VirtualNode) -> None:
        """Start (or start again) a node's firmware: main.py on the unix port in its flash dir."""
        main = self.firmware / "main.py"  # the .mpy build (start())
        with open(vn.log_path, "ab") as log:  # the child keeps its own descriptor
            argv = unixport.command(main, heap=self._node_heap)
            path = f"{self.firmware / 'lib'}:.frozen"
            vn.proc = unixport.spawn(argv, cwd=vn.root, env={"MICROPYPATH": path}, log=log)
        vn.heap = unixport.parse_heap(self._node_heap)
        vn.started_at = time.monotonic()
        vn.restart_at = None

    # -- keeping the nodes running, as a board's reset and watchdog would ----------------------------
    RESTART_S = (0.2, 1.0, 2.0, 5.0, 10.0)  # after a reset (exit 0): at once; after crashes in a row: backing off

    def _keep_nodes(self) -> None:
        """Read every node's console as it grows and start again a node that exited: exit 0 is
        the firmware resetting itself (reboot into new firmware, a `reboot` command), anything
        else a crash whose traceback the console shows; a board's watchdog would restart it too."""
        while not self._stopping.wait(0.2):
            self.poll_nodes()

    def poll_nodes(self) -> None:
        now = time.monotonic()
        for vn in self.vnodes:
            lines = vn.tail.poll() if vn.tail is not None else []
            if self.on_console is not None:
                for ln in lines:
                    self.on_console(vn.node_id, ln)
            if self.bus:
                short = self._gateway_lines(vn.node_id, lines)
                if short is not None and self.heap is None and not self._stopping.is_set():
                    self._raise_heap(vn, *short)
            err = vn.tail.last_error if vn.tail is not None else None
            code = vn.exited()
            if code is not None and vn.restart_at is None and not self._stopping.is_set():
                if code == 0:
                    vn.crashes = 0
                else:
                    vn.crashes = 1 if now - vn.started_at > 60 else vn.crashes + 1
                    if err is None or err.at < vn.started_at:
                        vn.tail.last_error = err = LastError(f"exited with code {code}", now)
                vn.restart_at = now + self.RESTART_S[min(vn.crashes, len(self.RESTART_S) - 1)]
                if self.on_console is not None:
                    why = "reset" if code == 0 else f"crashed (exit code {code})"
                    self.on_console(vn.node_id, f"umeter sim: node {why}; starting it again")
            if vn.restart_at is not None and now >= vn.restart_at and not self._stopping.is_set():
                vn.restarts += 1
                self._power_on(vn)
            with self._lock:
                view = self.views.get(vn.node_id)
                if view is not None:
                    view.restarts = vn.restarts
                    if err is not None:
                        view.error, view.error_at = err.text, err.at

    def _gateway_lines(self, node_id: str, lines: list[str]) -> tuple[int, int] | None:
        """The node's console about its gateway: on / off (and why), a meter skipped, why a
        meter fell silent. Returns (free, needed) when its gateway was off for want of heap."""
        short = None
        with self._lock:
            view = self.views.get(node_id)
            if view is None:
                return None
            for ln in lines:
                what, meter, text = simbus.console_gateway(ln)
                if what == "on":
                    view.gateway_on, view.gateway_error = True, None
                elif what == "off":
                    view.gateway_on, view.gateway_error = False, text
                    m = _GATE.search(text or "")
                    short = (int(m.group(1)), int(m.group(2))) if m else short
                elif what == "skipped":
                    view.gateway_error = text
                elif what == "silent" and meter in view.meters:
                    view.meters[meter].why = text
        return short

    def _raise_heap(self, vn: VirtualNode, free: int, need: int) -> None:
        """A node's gateway did not start for want of heap (`_gateway_lines`): give every node
        what it lacked, rounded up to 16 KiB with one step to spare, and start this one again
        (others that said the same at the old heap follow as they say it)."""
        want = vn.heap + need - free
        want = (want + _HEAP_STEP - 1) // _HEAP_STEP * _HEAP_STEP + _HEAP_STEP
        if want > unixport.parse_heap(self._node_heap):
            self._node_heap = f"{want // 1024}k"
            self.notes.append(
                f"{vn.node_id}: the gateway needs {need} bytes free and had {free} with a {vn.heap // 1024}k heap; "
                f"nodes run with {self._node_heap} from now on (restarted)."
            )
        if vn.heap < unixport.parse_heap(self._node_heap) and vn.proc is not None:
            if self.on_console is not None:
                self.on_console(vn.node_id, f"umeter sim: starting the node again with a {self._node_heap} heap")
            unixport.stop(vn.proc)
            vn.restarts += 1
            with self._lock:
                view = self.views.get(vn.node_id)
                if view is not None:
                    view.gateway_on = view.gateway_error = None
            self._power_on(vn)

    def _subscribe(self, host: str, port: int) -> None:
        topics = [
            (f"{self.prefix}/+/telemetry", 0),
            (f"{self.prefix}/+/state", 1),
            (f"{self.prefix}/+/policy/state", 0),
            (f"{self.prefix}/+/policy/event", 0),
        ]
        if self.bus:  # the gateway's READING records and METER events (stored records, QoS 1)
            topics += [(f"{self.prefix}/+/reading", 1), (f"{self.prefix}/+/event", 1)]
        c = make_client("umeter-sim")
        c.on_message = self._on_message
        c.on_connect = lambda cl, *a: cl.subscribe(topics)
        connect(c, host, port, hint="is it an MQTT broker?")
        c.loop_start()
        self._client = c

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/", 2)
        if len(parts) != 3:
            return
        node_id, leaf = parts[1], parts[2]
        with self._lock:
            view = self.views.get(node_id)
            if view is None:
                return
            if leaf in ("policy/state", "policy/event"):
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    return
                if isinstance(doc, dict):
                    if leaf == "policy/state":
                        view.policy_state = doc
                    else:
                        view.policy_event = doc
            elif leaf in ("reading", "event"):
                try:
                    doc = json.loads(msg.payload)
                except ValueError:
                    return
                if not isinstance(doc, dict):
                    return
                if leaf == "reading":
                    mv = view.meters.get(str(doc.get("meter")))
                    if mv is not None and "frozen_day" not in (doc.get("status") or ()):  # not a midnight copy
                        mv.on_reading(doc)
                else:
                    mv = view.meters.get(simbus.event_meter(doc) or "")
                    if mv is not None:
                        mv.on_event(doc)
            elif leaf == "state":
                view.state = msg.payload.decode(errors="replace")
            elif leaf == "telemetry":
                try:
                    view.telemetry = validate.telemetry_doc(msg.payload)
                except ValueError:
                    return  # not ours to crash on; the count shows it
                view.received = time.monotonic()
                view.messages += 1
                view.state = "online"

    def snapshot(self) -> list[NodeView]:
        c = self.consumer
        with self._lock:
            views = [
                dataclasses.replace(v, meters={k: dataclasses.replace(m) for k, m in v.meters.items()})
                for v in self.views.values()
            ]
        if c is not None:
            for v in views:
                v.records = c.count(v.node_id) - self._base.get(v.node_id, 0)
        return views

    def tariff_name(self, index: int | None) -> str | None:
        if index is None or self.policy is None or not 0 <= index < len(self.policy["t"]):
            return None
        return self.policy["t"][index]

    def dead_nodes(self) -> list[VirtualNode]:
        """Nodes whose firmware has exited and not been started again yet (see _keep_nodes)."""
        return [n for n in self.vnodes if n.exited() is not None]

    def stop(self) -> None:
        self._stopping.set()
        if self._keeper is not None:
            self._keeper.join(5)
            self._keeper = None
        # Ask every node to stop (the sim watchdog's stop file: the node stops as on a Ctrl-C,
        # between bytecodes, and saves its registers on the way out), wait for them all, then
        # Ctrl-C and kill what is left. A SIGINT first could land inside a node's collector and
        # hang it (the next run's registers started from 0).
        running = [n for n in self.vnodes if n.proc is not None and n.proc.poll() is None]
        for n in running:
            (n.root / STOP_FILE).write_text("stop\n")
        deadline = time.monotonic() + 15.0
        while running and time.monotonic() < deadline:
            running = [n for n in running if n.proc.poll() is None]
            time.sleep(0.05)
        for n in running:
            unixport.stop(n.proc, 5.0)
        if self.vnodes:
            self.poll_nodes()  # the consoles' last lines ("stopped", a final error)
        for nb in self.buses.values():
            nb.stop()
        if self._registry is not None:
            self._registry.unlink(missing_ok=True)
            self._registry = None
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None
        if self.consumer is not None:
            self.consumer.stop()  # the database stays open for db_summary(); close() closes it
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._own_dir and not self.keep and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SimRun:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.stop()
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    def __exit__(self, *exc: object) -> None:
        self.close()
