"""Authenticated commands to one node from the host (`umeter command`).

    from umeter.command import send
    result = send("mqtt://127.0.0.1:1883", "n7", "status")            # the node's answer, a dict

A command is the firmware's own wire format (`meternode.link.actions.make_command`: the body
JSON and its HMAC-SHA256 under the node's `cmd_key`), published QoS 1 on `<prefix>/<node>/cmd`;
the node answers on `<prefix>/<node>/cmd/result` with the command's id. The key comes from
the keystore the node was provisioned from (or is given), and so does the counter: each
command takes the next one, at least the UNIX time in seconds, kept in the keystore, so two
commands in the same second or a keystore restored from a backup still give a counter the
node has not seen (docs/uplink.md, "Commands").
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from urllib.parse import urlparse

from .errors import ConfigError, TransportError, UmeterError

# what each op takes, in the order the command line gives them (docs/uplink.md, "Commands")
OPS = {
    "read_now": (),
    "status": (),
    "set": ("key", "value"),
    "rollback": ("key",),
    "relay": ("on",),
    "time": ("epoch",),
    "reboot": (),
    "valve": ("meter", "valve"),
}


class CommandFailed(UmeterError):
    """The node answered, and not ok: refused (`rejected`) or the action failed (`failed`)."""

    def __init__(self, node: str, answer: dict) -> None:
        self.answer = answer
        status = answer.get("status", "failed")
        hint = {
            "rejected": "replayed or expired: check the host's clock; unauthenticated: provision the node's key again",
        }.get(status, "see the node's log (`umeter logs`)")
        super().__init__(f"node {node} {status} the command: {answer.get('why', '?')}", hint=hint)


def _known(op: str) -> None:
    if op not in OPS:
        raise ConfigError(f"unknown command {op!r}", hint="one of: " + ", ".join(OPS))


def parse_args(op: str, words: list[str] | tuple[str, ...]) -> dict:
    """The command line's words after the op -> the op's args (ConfigError naming what is wrong)."""
    _known(op)
    names = OPS[op]
    if len(words) != len(names):
        want = " ".join(n.upper() for n in names) or "no arguments"
        raise ConfigError(f"{op} takes {want}, got {len(words)} word(s)", hint=f"e.g. `umeter command NODE {_eg(op)}`")
    a: dict = {}
    for name, w in zip(names, words, strict=True):
        if name == "value":
            try:
                a[name] = json.loads(w)  # 30 -> int, 0.5 -> float
            except ValueError:
                raise ConfigError(f"set value {w!r} is not a number", hint="e.g. `set telemetry_s 30`") from None
        elif name == "on":
            if w not in ("on", "off"):
                raise ConfigError(f"relay takes on or off, not {w!r}", hint="e.g. `relay off`")
            a[name] = w == "on"
        elif name == "epoch":
            if w == "now":
                a[name] = int(time.time())
            else:
                try:
                    a[name] = int(w)
                except ValueError:
                    raise ConfigError(f"time takes UNIX seconds or `now`, not {w!r}", hint="e.g. `time now`") from None
        elif name == "valve":
            if w not in ("open", "close"):
                raise ConfigError(f"valve takes open or close, not {w!r}", hint="e.g. `valve METER close`")
            a[name] = w
        else:
            a[name] = w
    return a


def _eg(op: str) -> str:
    return {
        "set": "set telemetry_s 30",
        "rollback": "rollback telemetry_s",
        "relay": "relay off",
        "time": "time now",
        "valve": "valve cjt188-10-00000000001234 close",
    }.get(op, op)


def broker_address(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    if u.scheme not in ("mqtt", "mqtts", "tcp") or not u.hostname:
        raise ConfigError(f"bad broker URL {url!r}", hint="e.g. mqtt://127.0.0.1:1883")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(
            f"bad broker URL {url!r}: the port is not a number", hint="e.g. mqtt://127.0.0.1:1883"
        ) from None
    return u.hostname, port


def node_key(node: str, key_hex: str | None = None, keystore=None) -> bytes:
    """The node's command key: `key_hex`, else its `cmd_key` in the keystore."""
    if key_hex is None:
        from .keystore import Keystore

        ks = keystore or Keystore()
        s = ks.get(node)
        if not s or not s.get("cmd_key"):
            raise ConfigError(
                f"no command key for node {node!r} in the keystore {ks.path}",
                hint="provision the node from this keystore (`umeter provision`), or give --key",
            )
        key_hex = s["cmd_key"]
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise ConfigError("the command key is not hex", hint="--key takes the node's cmd_key, 64 hex digits") from None
    if len(key) < 16:
        raise ConfigError(f"the command key is {len(key)} bytes, under 16", hint="the node refuses keys that short")
    return key


class Commander:
    """One broker connection that sends commands to nodes and collects their answers by id
    (`umeter command` sends one, `umeter fleet health` one per node):

        with Commander("mqtt://broker:1883", user="ops", password=pw) as c:
            ids = {c.send(node, "status"): node for node in nodes}
            answers = c.wait(ids, timeout=30)      # id -> the node's answer (those that came)
    """

    LEAF = "cmd/result"  # what the answers come on, under <prefix>/<node>/

    def __init__(
        self,
        broker: str,
        *,
        prefix: str = "umeter",
        keystore=None,
        user: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        from .keystore import Keystore

        self.host, self.port = broker_address(broker)
        self.prefix = prefix
        self.keystore = keystore or Keystore()
        self._auth = (user, password)
        self._tls_ca = tls_ca
        self._answers: dict[str, dict] = {}
        self._cv = threading.Condition()
        self._client = None

    def __enter__(self) -> Commander:
        from .mqttc import connect, make_client, refusal

        topic = f"{self.prefix}/+/{self.LEAF}"
        connack = threading.Event()
        subscribed = threading.Event()
        refused: list[str] = []

        def on_connect(client, userdata, flags, rc, props=None) -> None:
            if rc.is_failure:
                refused.append(refusal(rc))
            else:
                client.subscribe(topic, 1)
            connack.set()

        c = make_client("umeter-cmd", tls_ca=self._tls_ca, bulk=True)
        if self._auth[0]:
            c.username_pw_set(*self._auth)
        c.on_connect = on_connect
        c.on_subscribe = lambda *a, **k: subscribed.set()
        c.on_message = self._on_message
        connect(c, self.host, self.port)
        c.loop_start()
        self._client = c
        where = f"mqtt://{self.host}:{self.port}"
        if not connack.wait(10):
            self.__exit__()
            raise TransportError(f"no CONNACK from {where} in 10 s", hint="check the broker")
        if refused:
            self.__exit__()
            raise TransportError(
                f"the broker at {where} refused the connection: {refused[0]}",
                hint="give --user NAME of a host user made by `umeter broker-config --host-user NAME` "
                "(its password comes from the keystore or $UMETER_MQTT_PASSWORD)",
            )
        if not subscribed.wait(10):
            self.__exit__()
            raise TransportError(
                f"the broker at {where} did not confirm the subscription to {topic} in 10 s",
                hint="check the broker's ACL for this user (`umeter broker-config --host-user`)",
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    def _on_message(self, client, userdata, msg) -> None:
        try:
            d = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            with self._cv:
                self._answers[d["id"]] = d
                self._cv.notify_all()

    def send(
        self,
        node: str,
        op: str,
        args: dict | None = None,
        *,
        key: bytes | None = None,
        counter: int | None = None,
        expires_s: int = 3600,
    ) -> str:
        """Publishes `op` to `node` (signed with its key, the keystore's next counter): -> the
        command's id, which its answer carries."""
        from meternode.link.actions import make_command

        _known(op)
        k = key if key is not None else node_key(node, keystore=self.keystore)
        ctr = counter if counter is not None else self.keystore.next_counter(node)
        mid = uuid.uuid4().hex[:12]
        body = make_command(k, node, op, args, ctr, int(time.time()) + expires_s, mid)
        self._client.publish(f"{self.prefix}/{node}/cmd", body, qos=1).wait_for_publish(10)
        return mid

    def wait(self, ids, timeout: float) -> dict[str, dict]:
        """The answers to the commands `ids` that came within `timeout` seconds, by id."""
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                got = {i: self._answers[i] for i in ids if i in self._answers}
                left = end - time.monotonic()
                if len(got) == len(ids) or left <= 0:
                    return got
                self._cv.wait(left)


def send(
    broker: str,
    node: str,
    op: str,
    args: dict | None = None,
    *,
    prefix: str = "umeter",
    key: bytes | None = None,
    keystore=None,
    counter: int | None = None,
    expires_s: int = 3600,
    timeout: float = 30.0,
    user: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
) -> dict:
    """Sends `op` to `node` and waits for its answer: -> the answer's `result` when ok;
    CommandFailed when the node refused it or its action failed; TransportError when no answer
    came within `timeout` seconds (a node offline: the command stays queued at the broker for a
    persistent session and expires after `expires_s`)."""
    _known(op)
    with Commander(broker, prefix=prefix, keystore=keystore, user=user, password=password, tls_ca=tls_ca) as c:
        mid = c.send(node, op, args, key=key, counter=counter, expires_s=expires_s)
        answer = c.wait([mid], timeout).get(mid)
    if answer is None:
        raise TransportError(
            f"no answer from node {node} in {timeout:g} s (command {mid} on {prefix}/{node}/cmd)",
            hint=f"is it online? (`umeter monitor`); the command expires in {expires_s} s",
        )
    if not answer.get("ok"):
        raise CommandFailed(node, answer)
    return answer.get("result", {})
