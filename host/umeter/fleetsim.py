"""A fleet simulator: thousands of node control planes in one CPython process, over a real
MQTT broker, running the firmware's own policy code (meternode.policy.agent: bundle
verification, targeting, anti-rollback, atomic apply, OTA slots, the engine's schema).

    with FleetSim(2000, "mqtt://127.0.0.1:1883", fleet_identity(key, "acme"), tmp) as sim:
        ... run a campaign against sim.node_ids ...

Each simulated node has its own directory (its flash) and answers on its own topics like a
real one. A firmware bundle is staged, then the node "reboots" into the trial slot; nodes in
`faulty` fail their health check and roll back on the next boot, the others confirm.
`offline` nodes never answer. Signatures are checked with the `cryptography` package by
default (`pure=True`: the firmware's pure-Python Ed25519, ~1.5 ms per node on CPython).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from meternode.policy.agent import Agent
from meternode.policy.engine import Engine
from meternode.policy.ota import Slots

from .errors import ConfigError, TransportError
from .mqttc import connect, make_client
from .signing import crypto_verify


class _Clock:
    def time(self) -> float:
        return time.time()


class SimNode:
    """One node's control plane: the firmware Agent plus a simulated reboot for OTA."""

    def __init__(self, node_id: str, fleet: dict, root: Path, *, faulty: bool, pure: bool) -> None:
        self.id = node_id
        self.root = str(root)
        self.fleet = fleet
        self.faulty = faulty
        self.pure = pure
        self.events: list[tuple[str, str]] = []
        self.engine: Engine | None = None
        self.agent = self._boot()

    def _boot(self) -> Agent:
        a = Agent(
            self.id,
            self.fleet,
            self.root,
            _Clock(),
            event=lambda k, t: self.events.append((k, t)),
            on_policy=self._on_policy,
            sigcheck=None if self.pure else crypto_verify,
        )
        if a.policy():
            self._on_policy(a.policy())
        return a

    def _on_policy(self, compact: dict) -> None:
        self.engine = Engine(compact, seed=zlib.crc32(self.id.encode()) & 0x7FFFFFFF)

    def reboot(self) -> dict | None:
        """Boot (select the slot), run the health check, return the boot report."""
        slots = Slots(self.root)
        slots.select()
        if slots.trial and self.faulty:
            # health check deadline passes -> reset -> next boot rolls back
            slots = Slots(self.root)
            slots.select()
        elif slots.trial or slots.running:
            slots.healthy()
        self.agent = self._boot()
        self.agent.slots = slots
        return self.agent.boot_report()

    def handle(self, leaf: str, payload: bytes) -> list[tuple[str, dict]]:
        out = self.agent.handle(leaf, payload)
        if out is None or out[1] is None:
            return []
        results = [out]
        if out[1].get("status") == "staged":
            rep = self.reboot()
            if rep:
                results.append(("ota/result", rep))
        return results


class FleetSim:
    def __init__(
        self,
        n: int,
        broker_url: str,
        fleet: dict,
        root: str | Path,
        *,
        prefix: str = "umeter",
        faulty: set[str] | None = None,
        offline: set[str] | None = None,
        shards: int = 4,
        pure: bool = False,
        id_format: str = "sim-{:05d}",
        ids: list[str] | None = None,
    ) -> None:
        if n < 1:
            raise ConfigError(f"a fleet of {n} nodes", hint="at least 1")
        u = urlparse(broker_url if "://" in broker_url else f"mqtt://{broker_url}")
        if not u.hostname:
            raise ConfigError(f"bad broker URL {broker_url!r}", hint="e.g. mqtt://127.0.0.1:1883")
        self.host, self.port = u.hostname, u.port or 1883
        self.prefix = prefix
        self.fleet = fleet
        self.root = Path(root)
        self.node_ids = list(ids) if ids else [id_format.format(i + 1) for i in range(n)]
        self.faulty = faulty or set()
        self.offline = offline or set()
        self.pure = pure
        self.nshards = max(1, min(shards, len(self.node_ids)))
        self._nodes: dict[str, SimNode] = {}
        self._clients: list = []
        self._ready = threading.Barrier(self.nshards + 1)
        self._lock = threading.Lock()
        self.received = 0
        self.sent = 0
        self.statuses: Counter = Counter()

    def node(self, node_id: str) -> SimNode:
        n = self._nodes.get(node_id)
        if n is None:
            n = SimNode(node_id, self.fleet, self.root / node_id, faulty=node_id in self.faulty, pure=self.pure)
            self._nodes[node_id] = n
        return n

    def __enter__(self) -> FleetSim:

        self.root.mkdir(parents=True, exist_ok=True)
        live = [n for n in self.node_ids if n not in self.offline]
        for k in range(self.nshards):
            mine = live[k :: self.nshards]
            c = make_client(f"fleetsim-{k}", bulk=True)
            c.user_data_set({"nodes": mine, "subscribed": threading.Event()})
            c.on_connect = self._on_connect
            c.on_subscribe = self._on_subscribe
            c.on_message = self._on_message
            connect(c, self.host, self.port, keepalive=60, hint="start a broker")
            c.loop_start()
            self._clients.append(c)
        deadline = time.monotonic() + 60
        for c in self._clients:
            ev = c.user_data_get()["subscribed"]
            if not ev.wait(max(0.1, deadline - time.monotonic())):
                self.__exit__()
                raise TransportError("fleet simulator: subscriptions not acknowledged in 60 s", hint="check the broker")
        return self

    def _on_connect(self, client, ud, flags, reason, properties=None) -> None:
        nodes = ud["nodes"]
        topics = []
        for n in nodes:
            topics.append((f"{self.prefix}/{n}/policy/bundle", 1))
            topics.append((f"{self.prefix}/{n}/ota", 1))
        ud["pending"] = set()
        if not topics:
            ud["subscribed"].set()
            return
        for i in range(0, len(topics), 400):
            _, mid = client.subscribe(topics[i : i + 400])
            ud["pending"].add(mid)

    def _on_subscribe(self, client, ud, mid, reason_codes, properties=None) -> None:
        ud["pending"].discard(mid)
        if not ud["pending"]:
            ud["subscribed"].set()

    def _on_message(self, client, ud, msg) -> None:
        parts = msg.topic.split("/")
        node_id = parts[1] if len(parts) > 2 else None
        leaf = "/".join(parts[2:])
        if node_id is None:
            return
        results = self.node(node_id).handle(leaf, msg.payload)
        with self._lock:
            self.received += 1
            self.sent += len(results)
            for _, r in results:
                self.statuses[r.get("status")] += 1
        for rleaf, r in results:
            client.publish(f"{self.prefix}/{node_id}/{rleaf}", json.dumps(r), qos=1)

    def __exit__(self, *exc) -> None:
        for c in self._clients:
            c.disconnect()  # before loop_stop: wakes the network thread at once
            c.loop_stop()
        self._clients = []

    def policy_versions(self) -> Counter:
        """How many nodes run each policy version (0 = none), from their own stores."""
        return Counter(self.node(n).agent.policy_version() for n in self.node_ids)
