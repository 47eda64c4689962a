"""Helpers for the policy end-to-end tests: a virtual node (the real firmware on the unix port,
sim front end) with a board root directory, restarted like a board after a reset, and an
MQTT listener on its topics."""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from umeter import unixport

HERE = Path(__file__).resolve().parent
BOOT = HERE / "policy_vnode_main.py"


def board() -> dict:
    return json.loads((unixport.boards_dir() / "sim.json").read_text())


class VNode:
    """Runs policy_vnode_main.py (what firmware/main.py does, plus the OTA slot selection) in `root`;
    exit code 3 is a reset: the node is started again, like a board after machine.reset()."""

    def __init__(self, root: Path, config: dict, heap: str = "512k") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "board.json").write_text(json.dumps(board()))
        (root / "config.json").write_text(json.dumps(config))
        shutil.copy(BOOT, root / "main.py")
        self.heap = heap
        self.boots = 0
        self.proc = None
        self._stop = False
        self._t = threading.Thread(target=self._supervise, daemon=True)

    def _supervise(self) -> None:
        while not self._stop:
            self.boots += 1
            with open(self.root / "console.log", "ab") as log:
                log.write(b"=== boot %d\n" % self.boots)
                log.flush()
                self.proc = unixport.spawn(
                    unixport.command(self.root / "main.py", heap=self.heap),
                    cwd=self.root,
                    env={"MICROPYPATH": unixport.micropypath()},
                    log=log,
                )
            rc = self.proc.wait()
            if rc != 3 or self._stop:
                return

    def start(self) -> VNode:
        self._t.start()
        return self

    def stop(self) -> None:
        self._stop = True
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._t.join(10)

    def log(self) -> str:
        p = self.root / "console.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> VNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Listener:
    """Collects JSON messages on <prefix>/<node>/# into a queue of (leaf, dict)."""

    def __init__(self, url_host: str, port: int, node: str, prefix: str = "umeter") -> None:
        self.q: queue.Queue[tuple[str, object]] = queue.Queue()
        self.node = node
        self.prefix = prefix
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"listen-{node}-{time.time_ns() % 10**6}")
        self.c.on_message = self._on
        self.c.connect(url_host, port)
        self.c.subscribe(f"{prefix}/{node}/#", 1)
        self.c.loop_start()
        self.host, self.port, self.t = url_host, port, None

    def _on(self, client, ud, msg) -> None:
        leaf = msg.topic.split("/", 2)[2]
        try:
            self.q.put((leaf, json.loads(msg.payload)))
        except ValueError:
            self.q.put((leaf, msg.payload))

    def publish(self, leaf: str, payload: bytes) -> None:
        self.c.publish(f"{self.prefix}/{self.node}/{leaf}", payload, qos=1)

    def push_ota(self, bundle: bytes) -> None:
        """A firmware bundle to the node as a campaign sends it: streamed in chunks, a window of
        them ahead of the node's progress reports (umeter.campaign.MqttTransport)."""
        from umeter.campaign import MqttTransport

        if self.t is None:
            self.t = MqttTransport(f"mqtt://{self.host}:{self.port}", self.prefix).__enter__()
        self.t.push("firmware", self.node, bundle)

    def wait(self, pred, timeout: float, what: str, vnode: VNode | None = None):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                leaf, m = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append((leaf, m))
            if pred(leaf, m):
                return m, seen
        tail = vnode.log()[-3000:] if vnode else ""
        raise AssertionError(f"{what}: not seen in {timeout} s; got {[s[0] for s in seen][-20:]}\n{tail}")

    def close(self) -> None:
        if self.t is not None:
            self.t.__exit__()
        self.c.disconnect()
        self.c.loop_stop()


def firmware_files(version_text: str, broken: bool) -> dict[str, bytes]:
    """The firmware package as a module build (`meternode/...py`) with VERSION replaced; a broken
    build's MQTT link never connects, so its health check cannot pass."""
    root = unixport.firmware_root()
    files = {}
    for p in sorted((root / "meternode").rglob("*.py")):
        files[str(p.relative_to(root))] = p.read_bytes()
    init = files["meternode/__init__.py"].decode()
    files["meternode/__init__.py"] = "\n".join(
        f'VERSION = "{version_text}"' if ln.startswith("VERSION") else ln for ln in init.splitlines()
    ).encode()
    if broken:
        files["meternode/link/uplink.py"] += (
            b"\n\nasync def _never(self):\n    import asyncio\n\n    while True:\n"
            b"        await asyncio.sleep_ms(1000)\n\n\nMqttLink.run = _never\n"
        )
    return files
