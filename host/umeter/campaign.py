"""Staged fleet campaigns: push one signed bundle (policy or firmware) to many nodes in
stages — a canary percentage first, then batches — wait for each node's result, and halt
when failures pass a threshold. State lives in SQLite, so a campaign resumes where it
stopped (the laptop slept, the operator pressed Ctrl-C, or it halted and was forced on).

    db = CampaignDB("fleet.db")
    cid = db.create(CampaignSpec(kind="policy", nodes=ids, canary_pct=5, batch=500, halt_pct=2), envelope)
    with MqttTransport("mqtt://127.0.0.1:1883") as t:
        report = run(db, cid, t, progress=print)

Topics per node (see docs/policy.md): the bundle goes to <prefix>/<node>/policy/bundle or
<prefix>/<node>/ota (as {"op": "begin", "bundle": ...}); results come back on
<prefix>/<node>/policy/result and <prefix>/<node>/ota/result. A node answers a bundle it
already runs with "not newer" and its version, which counts as done: pushing twice is safe.
"""

from __future__ import annotations

import base64
import json
import math
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from meternode.policy import bundle as fw_bundle

from .errors import ConfigError, PolicyError, TransportError
from .mqttc import connect, make_client
from .signing import read_envelope

FINAL_OK = ("ok",)
FINAL_BAD = ("failed", "timeout")


def default_db() -> Path:
    """$UMETER_FLEET_DB, else the fleet inventory's database ($UMETER_HOME/fleet.sqlite):
    campaign tables live beside the inventory's `nodes` table."""
    env = os.environ.get("UMETER_FLEET_DB")
    if env:
        return Path(env)
    from .keystore import home

    return home() / "fleet.sqlite"


def inventory_nodes(path: str | os.PathLike[str] | None = None, sites: list[str] | None = None) -> list[str]:
    """Node ids from the fleet inventory (all, or those at `sites`), in inventory order."""
    from .inventory import Fleet

    rows = Fleet(path or default_db()).nodes()
    ids = [r["node_id"] for r in rows if not sites or r["site"] in sites]
    if not ids:
        where = f" at site {', '.join(sites)}" if sites else ""
        raise ConfigError(f"the fleet inventory has no nodes{where}", hint="provision nodes first: umeter provision")
    return ids


def parse_pct(s: str | float) -> float:
    """'2%' / '2' / 2.0 -> 2.0 (percent)."""
    v = str(s).strip().rstrip("%")
    try:
        f = float(v)
    except ValueError:
        raise ConfigError(f"bad percentage {s!r}", hint="e.g. 2% or 0.5") from None
    if not 0 <= f <= 100:
        raise ConfigError(f"percentage {s!r} is outside 0..100", hint="e.g. 2%")
    return f


@dataclass
class CampaignSpec:
    kind: str  # "policy" | "firmware"
    nodes: list[str]
    canary_pct: float = 5.0
    batch: int = 100
    halt_pct: float = 2.0  # halt when failures exceed this share of the nodes done so far
    min_failures: int = 1  # ... and there are more than this many failures
    stage_timeout_s: float = 60.0
    prefix: str = "umeter"
    id: str = field(default_factory=lambda: "c" + uuid.uuid4().hex[:10])

    def check(self) -> None:
        if self.kind not in ("policy", "firmware"):
            raise ConfigError(f"campaign kind {self.kind!r}", hint="policy or firmware")
        if not self.nodes:
            raise ConfigError("the campaign targets no nodes", hint="give --node/--group/--all or check the inventory")
        if len(set(self.nodes)) != len(self.nodes):
            raise ConfigError("a node is listed twice in the campaign", hint="give each node once")
        if self.batch < 1:
            raise ConfigError(f"batch {self.batch} must be at least 1", hint="e.g. --batch 100")
        parse_pct(self.canary_pct)
        parse_pct(self.halt_pct)


def plan_stages(n: int, canary_pct: float, batch: int) -> list[int]:
    """Stage number per node index: stage 0 is the canary (at least one node), then batches."""
    canary = min(n, max(1, math.ceil(n * canary_pct / 100.0))) if canary_pct > 0 else 0
    return [0 if i < canary else 1 + (i - canary) // batch for i in range(n)]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    spec TEXT NOT NULL, bundle BLOB NOT NULL, version INTEGER NOT NULL, report TEXT
);
CREATE TABLE IF NOT EXISTS campaign_node (
    campaign TEXT NOT NULL, node TEXT NOT NULL, stage INTEGER NOT NULL, state TEXT NOT NULL,
    status TEXT, why TEXT, version INTEGER, sent_at REAL, done_at REAL,
    PRIMARY KEY (campaign, node)
);
CREATE INDEX IF NOT EXISTS campaign_node_stage ON campaign_node (campaign, stage, state);
"""


class CampaignDB:
    """Campaign state in SQLite (the fleet inventory's database file by default)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path and str(path).split(":", 1)[0] in ("postgresql", "postgres"):
            raise ConfigError(
                f"--db {path}: campaign state is kept in an SQLite file, not PostgreSQL",
                hint="give a file (or none: the fleet database); postgresql:// URLs are for "
                "records (umeter monitor, umeter sim)",
            )
        self.path = Path(path) if path else default_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.executescript(_SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def create(self, spec: CampaignSpec, bundle: bytes) -> str:
        spec.check()
        man, _, _ = read_envelope(bundle)
        if man.get("kind") != spec.kind:
            raise PolicyError(f"the bundle is a {man.get('kind')} bundle, not {spec.kind}", hint="sign the right kind")
        if spec.kind == "firmware":
            ota_messages(bundle)  # PolicyError now for a bundle no node takes, not at each node
        stages = plan_stages(len(spec.nodes), spec.canary_pct, spec.batch)
        with self.db:
            try:
                self.db.execute(
                    "INSERT INTO campaign VALUES (?, ?, ?, 'running', ?, ?, ?, NULL)",
                    (spec.id, spec.kind, time.time(), json.dumps(asdict(spec)), bundle, man["version"]),
                )
            except sqlite3.IntegrityError:
                raise ConfigError(f"campaign {spec.id} already exists", hint="resume it or pick another id") from None
            self.db.executemany(
                "INSERT INTO campaign_node (campaign, node, stage, state) VALUES (?, ?, ?, 'pending')",
                [(spec.id, n, s) for n, s in zip(spec.nodes, stages, strict=True)],
            )
        return spec.id

    def get(self, cid: str) -> tuple[CampaignSpec, bytes, int, str]:
        row = self.db.execute("SELECT spec, bundle, version, state FROM campaign WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise ConfigError(f"no campaign {cid!r} in {self.path}", hint="list them: umeter policy status")
        return CampaignSpec(**json.loads(row[0])), row[1], row[2], row[3]

    def list(self) -> list[dict]:
        rows = self.db.execute("SELECT id, kind, created, state, version FROM campaign ORDER BY created").fetchall()
        return [{"id": r[0], "kind": r[1], "created": r[2], "state": r[3], "version": r[4]} for r in rows]

    def set_state(self, cid: str, state: str, report: dict | None = None) -> None:
        with self.db:
            self.db.execute(
                "UPDATE campaign SET state = ?, report = COALESCE(?, report) WHERE id = ?",
                (state, json.dumps(report) if report else None, cid),
            )

    def nodes(self, cid: str, stage: int | None = None, states: tuple[str, ...] | None = None) -> list[str]:
        q = "SELECT node FROM campaign_node WHERE campaign = ?"
        args: list = [cid]
        if stage is not None:
            q += " AND stage = ?"
            args.append(stage)
        if states:
            q += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        return [r[0] for r in self.db.execute(q + " ORDER BY rowid", args)]

    def stages(self, cid: str) -> list[int]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT stage FROM campaign_node WHERE campaign = ? ORDER BY stage", (cid,)
            )
        ]

    def mark(self, cid: str, updates: list[tuple[str, str, str | None, str | None, int | None]]) -> None:
        """updates: (node, state, status, why, version)."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "UPDATE campaign_node SET state = ?, status = ?, why = ?, version = ?, done_at = ? "
                "WHERE campaign = ? AND node = ?",
                [(st, status, why, v, now, cid, n) for n, st, status, why, v in updates],
            )

    def mark_sent(self, cid: str, nodes: list[str]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "UPDATE campaign_node SET state = 'sent', sent_at = ? WHERE campaign = ? AND node = ?",
                [(now, cid, n) for n in nodes],
            )

    def counts(self, cid: str) -> Counter:
        return Counter(
            dict(self.db.execute("SELECT state, COUNT(*) FROM campaign_node WHERE campaign = ? GROUP BY state", (cid,)))
        )

    def results(self, cid: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT node, stage, state, status, why, version FROM campaign_node WHERE campaign = ? ORDER BY rowid",
            (cid,),
        )
        return [dict(zip(("node", "stage", "state", "status", "why", "version"), r, strict=True)) for r in rows]


# A streamed build is hundreds of messages; a broker holds about 1000 for a client and drops the
# rest (Mosquitto's max_queued_messages), so a node that takes them slower than they are sent
# loses chunks. The node answers every PROGRESS_EVERY-th chunk with "accepted" and "got" (its
# count, firmware policy/agent.py), and the sender keeps WINDOW messages at most ahead of it.
# A node that reports nothing for STALL_S seconds (firmware older than the reports) gets the
# next window anyway.
PROGRESS_EVERY = 64
WINDOW = 256
STALL_S = 10.0


@dataclass
class _Stream:
    topic: str
    msgs: list[bytes] | None  # None once all are published
    bundle: bytes
    streamed: bool  # do they begin with a streamed manifest (its "m" a size)?
    sent: int = 0  # messages published
    done: int = 0  # messages the node has taken: begin + its last "got"
    at: float = field(default_factory=time.monotonic)  # the last send or report
    legacy: bool = False  # sent again in the form firmware before the streamed manifest takes
    stale: int = 0  # answers still to come to the streamed form's `end` (NO_TRANSFER)
    owed: int = 0  # final answers still to come for bundles pushed to the node before this one


class MqttTransport:
    """Publishes bundles and collects node results over MQTT (paho), one connection. A
    firmware bundle streamed in chunks is sent WINDOW messages ahead of the node's progress
    reports at most (see PROGRESS_EVERY). A node whose firmware predates the streamed
    manifest refuses that form (LEGACY_REFUSAL): it gets the bundle again, once, in the form it
    takes (ota_messages(stream=False)), and only its answer to that is a result; `legacy`
    counts those nodes."""

    def __init__(self, url: str, prefix: str = "umeter", client_id: str | None = None, window: int = WINDOW) -> None:
        u = urlparse(url if "://" in url else f"mqtt://{url}")
        if u.scheme not in ("mqtt", "tcp") or not u.hostname:
            raise ConfigError(f"bad broker URL {url!r}", hint="e.g. mqtt://127.0.0.1:1883")
        self.host, self.port = u.hostname, u.port or 1883
        self.prefix = prefix
        self.results: queue.Queue[tuple[str, str, dict]] = queue.Queue()
        self._cid = client_id or "umeter-campaign-" + uuid.uuid4().hex[:8]
        self._client = None
        self._connected = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self.window = window
        self._lock = threading.RLock()  # the streams; held while publishing, so chunks go in order
        self._stop = threading.Event()
        self.legacy = 0

    def __enter__(self) -> MqttTransport:

        c = make_client("umeter-campaign", client_id=self._cid, bulk=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        connect(c, self.host, self.port)
        c.loop_start()
        self._client = c
        if not self._connected.wait(10):
            self.__exit__()
            raise TransportError(f"no CONNACK from {self.host}:{self.port} in 10 s", hint="check the broker")
        self._stop.clear()
        threading.Thread(target=self._watch, name="umeter-ota-window", daemon=True).start()
        return self

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        client.subscribe([(f"{self.prefix}/+/policy/result", 1), (f"{self.prefix}/+/ota/result", 1)])
        self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        try:
            res = json.loads(msg.payload)
        except ValueError:
            return
        if len(parts) >= 4 and isinstance(res, dict):
            if parts[-2] == "ota":
                got = res.get("got")
                status = res.get("status")
                if status == "accepted":
                    if not self._owed(parts[-3]):
                        self._send(parts[-3], 1 + got if isinstance(got, int) and got >= 0 else 1)
                elif status in ("confirmed", "rolled_back"):
                    pass  # a report from the boot after a build was staged, not the answer to a
                    # stream: arriving after the next bundle was pushed, it must not end that one
                elif not self._final(parts[-3], res):
                    return  # an older firmware's refusal of a form it gets again in its own
            self.results.put((parts[-3], parts[-2], res))

    def _final(self, node: str, res: dict) -> bool:
        # A node's staged / rejected / failed: the rest of its stream is of no use, and the
        # answer is its result -- but for an older firmware's refusal of the streamed manifest
        # (False: the bundle goes again in the form it takes, once) and its answer to that
        # form's `end`, if that went out too.
        why = str(res.get("why") or "")
        resend = None
        with self._lock:
            s = self._streams.get(node)
            if s is not None and s.owed:
                s.owed -= 1  # the answer to an earlier bundle, whose messages all went first
                return True
            if s is not None and s.stale and why == NO_TRANSFER:
                s.stale -= 1
                return False
            if s is not None and not s.legacy and why.startswith(LEGACY_REFUSAL) and s.streamed:
                try:
                    resend = ota_messages(s.bundle, topic=len(s.topic.encode()), stream=False)
                except PolicyError:
                    resend = None  # a manifest that firmware cannot take: its refusal stands
                if resend is not None:
                    s.stale = 1 if s.msgs is None else 0  # its `end` went out
                    s.msgs, s.sent, s.done, s.legacy, s.streamed = resend, 0, 0, True, False
                    self.legacy += 1
            if resend is None:
                self._streams.pop(node, None)
        if resend is None:
            return True
        self._send(node, 0)
        return False

    def push(self, kind: str, node: str, bundle: bytes) -> None:
        if kind == "policy":
            self._client.publish(f"{self.prefix}/{node}/policy/bundle", bundle, qos=1)
            return
        topic = f"{self.prefix}/{node}/ota"
        with self._lock:  # the stream and its first window at once: no answer comes in between
            msgs = ota_messages(bundle, topic=len(topic.encode()))
            b = json.loads(msgs[0]).get("bundle")
            s = _Stream(topic, msgs, bundle, isinstance(b, dict) and isinstance(b.get("m"), int))
            old = self._streams.get(node)
            if old is not None:
                # The node takes its messages in order, and a `begin` ends a transfer in progress
                # without an answer: the bundle before this one still answers if all of its
                # messages went out (and an older firmware's stale refusals with it). Those
                # answers come first and are not this stream's.
                s.owed = old.owed + old.stale + (old.msgs is None)
            self._streams[node] = s
            self._send(node, 0)

    def _owed(self, node: str) -> bool:
        with self._lock:
            s = self._streams.get(node)
            return s is not None and s.owed > 0

    def streaming(self) -> int:
        """Nodes with messages of a firmware bundle still to send."""
        with self._lock:
            return sum(1 for s in self._streams.values() if s.msgs is not None)

    def _send(self, node: str, done: int) -> None:
        # The node has taken `done` messages of its stream: publish up to WINDOW ahead of that.
        with self._lock:
            s = self._streams.get(node)
            if s is None or s.msgs is None:
                return
            s.done = max(s.done, done)
            s.at = time.monotonic()
            end = min(len(s.msgs), s.done + self.window)
            while s.sent < end:
                self._client.publish(s.topic, s.msgs[s.sent], qos=1)  # one topic, QoS 1: in order
                s.sent += 1
            if s.sent == len(s.msgs):
                s.msgs = None  # the record stays until the node's final answer (_final)

    def _watch(self) -> None:
        # A node that reports no progress for STALL_S seconds gets the next window.
        while not self._stop.wait(1.0):
            with self._lock:
                stalled = [
                    (n, s.sent)
                    for n, s in self._streams.items()
                    if s.msgs is not None and time.monotonic() - s.at > STALL_S
                ]
            for node, sent in stalled:
                self._send(node, sent)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._client is not None:
            self._client.disconnect()  # before loop_stop: wakes the network thread at once
            self._client.loop_stop()
            self._client = None


# A node reads MQTT packets into one 1-KiB buffer (firmware link/mqtt.py _READ); a longer one
# needs a free block of its size, which a node that has run a while in its budgeted heap may
# not have (docs/memory.md): it then drops the message and answers "failed: ... no memory".
# So a bundle goes inline only when its `begin` fits that buffer, a build is streamed in
# `file` chunks that each do, and a manifest too large for a `begin` of that size streams
# first in chunks of its own.
NODE_BUFFER = 1024
INLINE_MAX = NODE_BUFFER
# the largest streamed manifest a node takes (firmware policy/bundle.py)
MANIFEST_MAX = fw_bundle._MAX_MANIFEST
TOPIC_BYTES = 128  # room for the topic `<prefix>/<node>/ota` when the caller does not say
# Firmware from before the streamed manifest (main up to 3e57599) takes a manifest only in its
# `begin`, in a packet of at most 16 KiB (link/mqtt.py MAX_PACKET; topic and header on top),
# and answers a streamed `begin` (its "m" a size, not the text) with its envelope parser's
# refusal, which starts with this:
LEGACY_BEGIN_MAX = 16384 - 256
LEGACY_REFUSAL = 'malformed: expected {"m": <manifest text>'
# ... then, when the streamed form's `end` had gone out too, with this for that `end`:
NO_TRANSFER = "malformed: no firmware transfer in progress"


def _packet(payload: int, topic: int) -> int:
    # bytes of a QoS 1 PUBLISH: fixed header (1 + remaining length), topic, packet id, payload
    body = 2 + topic + 2 + payload
    return 1 + (1 if body < 128 else 2 if body < 16384 else 3) + body


def chunk_size(name: str | None, size: int, topic: int = TOPIC_BYTES, fit: int = NODE_BUFFER) -> int:
    """Raw bytes per `file` chunk of `name` (`size` bytes; None: the manifest) so that each
    chunk's packet fits `fit` bytes: base64 takes 4 characters per 3 bytes."""
    head = {**_file_head(name), "off": size, "data": ""}
    room = fit - _packet(len(json.dumps(head).encode()), topic)
    if room < 4:
        raise PolicyError(f"{name}: the file name leaves no room in a {fit}-byte message", hint="shorter paths")
    return room // 4 * 3


def _file_head(name: str | None) -> dict:
    # a `file` message's leading keys: a piece of the manifest has no name
    return {"op": "file"} if name is None else {"op": "file", "name": name}


def _chunks(name: str | None, data: bytes, step: int) -> list[bytes]:
    head = _file_head(name)
    return [
        json.dumps({**head, "off": off, "data": base64.b64encode(data[off : off + step]).decode()}).encode()
        for off in range(0, max(1, len(data)), step)
    ]


def ota_messages(
    bundle: bytes,
    inline_max: int = INLINE_MAX,
    chunk: int | None = None,
    topic: int = TOPIC_BYTES,
    stream: bool = True,
) -> list[bytes]:
    """The messages that carry a firmware bundle to a node's `ota` topic (`topic` bytes long),
    each of whose packets fits `inline_max` bytes (a node's receive buffer, NODE_BUFFER):

    - one `begin` with the files inline when it is small;
    - else `begin` with the manifest, `file` chunks and `end`, when that `begin` fits (what
      every firmware takes);
    - else (a build of more than a few files) a `begin` with the manifest's size and signature
      (`{"m": <bytes>, "s": <hex>}`), the manifest in `file` chunks without a name, the files'
      chunks in the manifest's order, and `end` (firmware from this version on; an older one
      answers LEGACY_REFUSAL, and MqttTransport sends that node the form below instead).

    `stream=False` (for firmware before the streamed manifest): the manifest always goes in
    the `begin`, as text, or as an object when that is shorter than LEGACY_BEGIN_MAX and
    the text is not; a node takes it only if it has a free block that large. PolicyError when
    even that does not fit.

    Chunks are `chunk` raw bytes, or as many as fit. PolicyError for a manifest over
    MANIFEST_MAX bytes, which no node takes."""
    inline = json.dumps({"op": "begin", "bundle": bundle.decode()}).encode()
    if _packet(len(inline), topic) <= inline_max:
        return [inline]
    env = json.loads(bundle)
    files = env.get("f", {})
    head = {"m": env["m"], "s": env["s"], "f": {}}
    begin = json.dumps({"op": "begin", "bundle": json.dumps(head, separators=(",", ":"))}).encode()
    out = [begin]
    names = list(files)
    if not stream:
        if len(begin) > LEGACY_BEGIN_MAX:  # the manifest escaped once, not twice
            out = [json.dumps({"op": "begin", "bundle": head}, separators=(",", ":")).encode()]
        if len(out[0]) > LEGACY_BEGIN_MAX:
            raise PolicyError(
                f"the firmware manifest ({len(files)} files) makes a {len(out[0])}-byte begin; firmware before the"
                f" streamed manifest takes at most {LEGACY_BEGIN_MAX}",
                hint="update those nodes with a build of fewer files first",
            )
    elif _packet(len(begin), topic) > inline_max:
        mtext = env["m"].encode()
        if len(mtext) > MANIFEST_MAX:
            raise PolicyError(
                f"the firmware manifest is {len(mtext)} bytes; a node takes at most {MANIFEST_MAX}",
                hint="target groups rather than a long list of nodes, or ship fewer files",
            )
        out = [json.dumps({"op": "begin", "bundle": {"m": len(mtext), "s": env["s"]}}).encode()]
        out += _chunks(None, mtext, chunk or chunk_size(None, len(mtext), topic, inline_max))
        listed = json.loads(mtext).get("files", {})  # the node looks files up in this order
        names = [n for n in listed if n in files] + [n for n in files if n not in listed]
    for name in names:
        data = base64.b64decode(files[name])
        out += _chunks(name, data, chunk or chunk_size(name, len(data), topic, inline_max))
    out.append(b'{"op": "end"}')
    return out


def classify(kind: str, version: int, res: dict) -> tuple[str, str | None]:
    """A node result -> (state, why): 'ok', 'failed', or 'wait' (firmware staged, not booted yet)."""
    status = res.get("status")
    why = res.get("why")
    if status in ("applied", "confirmed"):
        return ("ok", None) if res.get("version") == version or status == "applied" else ("wait", None)
    if status in ("staged", "accepted"):
        return "wait", None
    if status == "rejected" and str(why).startswith("not newer") and (res.get("version") or 0) >= version:
        return "ok", f"already at version {res.get('version')}"
    return "failed", why or status or "no status"


@dataclass
class Report:
    id: str
    kind: str
    state: str
    version: int
    nodes: int
    ok: int
    failed: int
    timeout: int
    pending: int
    seconds: float
    messages: int
    reasons: dict[str, int]

    def line(self) -> str:
        rate = self.messages / self.seconds if self.seconds > 0 else 0.0
        return (
            f"Campaign {self.id} ({self.kind} v{self.version}) {self.state}: {self.ok}/{self.nodes} ok, "
            f"{self.failed} failed, {self.timeout} timed out, {self.pending} not reached "
            f"in {self.seconds:.1f} s ({rate:.0f} msg/s)."
        )


def _report(db: CampaignDB, cid: str, state: str, seconds: float, messages: int) -> Report:
    spec, _, version, _ = db.get(cid)
    c = db.counts(cid)
    reasons = Counter(r["why"].split(":")[0] for r in db.results(cid) if r["state"] == "failed" and r["why"])
    return Report(
        cid, spec.kind, state, version, len(spec.nodes), c["ok"], c["failed"], c["timeout"],
        c["pending"] + c["sent"], round(seconds, 3), messages, dict(reasons),
    )  # fmt: skip


def run(
    db: CampaignDB,
    cid: str,
    transport,
    *,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
    max_stages: int | None = None,
) -> Report:
    """Runs (or resumes) a campaign stage by stage; returns the report. Nodes already done
    are skipped; nodes sent but never answered are sent again (idempotent on the node).
    `force` resumes a halted campaign, retries nodes that timed out and stops halting it;
    `max_stages` stops (paused)
    after that many stages, as an interrupted laptop would."""
    spec, bundle, version, state = db.get(cid)
    if state == "done" and not force:
        return _report(db, cid, "done", 0.0, 0)
    if state == "halted" and not force:
        raise PolicyError(
            f"campaign {cid} halted on failures", hint="look at the per-node results, then resume with --force"
        )
    db.set_state(cid, "running")
    say = progress or (lambda s: None)
    t0 = time.monotonic()
    messages = 0
    stages_run = 0
    for stage in db.stages(cid):
        # a forced resume also retries the nodes that never answered
        todo = db.nodes(cid, stage, ("pending", "sent", "timeout") if force else ("pending", "sent"))
        if not todo:
            continue
        if max_stages is not None and stages_run >= max_stages:
            db.set_state(cid, "paused")
            return _report(db, cid, "paused", time.monotonic() - t0, messages)
        stages_run += 1
        name = "canary" if stage == 0 else f"batch {stage}"
        for n in todo:
            transport.push(spec.kind, n, bundle)
        db.mark_sent(cid, todo)
        messages += len(todo)
        waiting = set(todo)
        deadline = time.monotonic() + spec.stage_timeout_s
        updates: list = []
        while waiting and time.monotonic() < deadline:
            try:
                node, _leaf, res = transport.results.get(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                continue
            messages += 1
            if node not in waiting or res.get("campaign") not in (None, cid):
                continue
            st, why = classify(spec.kind, version, res)
            if st == "wait":
                continue
            waiting.discard(node)
            updates.append((node, st, res.get("status"), why, res.get("version")))
            if len(updates) >= 500:
                db.mark(cid, updates)
                updates = []
        db.mark(cid, updates)
        db.mark(cid, [(n, "timeout", None, f"no result in {spec.stage_timeout_s:g} s", None) for n in waiting])
        c = db.counts(cid)
        done = c["ok"] + c["failed"] + c["timeout"]
        bad = c["failed"] + c["timeout"]
        older = getattr(transport, "legacy", 0)  # nodes on firmware before the streamed manifest
        say(
            f"{name}: {len(todo)} nodes, {len(todo) - len(waiting)} answered; total {c['ok']} ok, {bad} failed"
            + (f"; {older} on older firmware sent the build in its form" if older else "")
        )
        if not force and bad >= spec.min_failures and bad * 100.0 > spec.halt_pct * done:
            rep = _report(db, cid, "halted", time.monotonic() - t0, messages)
            db.set_state(cid, "halted", asdict(rep))
            say(f"halted: {bad} of {done} failed (threshold {spec.halt_pct:g}%)")
            return rep
    rep = _report(db, cid, "done", time.monotonic() - t0, messages)
    db.set_state(cid, "done", asdict(rep))
    return rep
