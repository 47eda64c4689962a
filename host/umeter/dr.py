"""Real-time prices and demand-response events to nodes, in LoRa-sized frames
(`umeter policy price | event | cancel`).

    from umeter import dr
    ch = dr.price(0.42, valid_s=7200)                       # 0.42 per kWh for two hours
    answers = dr.send("mqtt://127.0.0.1:1883", ["n7"], ch)  # node -> its answer
    for d in dr.downlinks(["n7"], dr.event(start, 1800)):   # for a LoRaWAN network server
        print(d.node, d.fport, d.hex)

A frame is the firmware's (`meternode.policy.small`, docs/policy.md "LoRa-sized changes"): op,
counter, body and an 8-byte HMAC-SHA256 under the node's `cmd_key`, 19 or 20 bytes, so one
EU868 DR0 downlink (51 bytes) carries it where a signed bundle does not fit. Over MQTT it goes
to `<prefix>/<node>/policy/small` and the node answers on `policy/result`; through a LoRaWAN
network server it is queued as a downlink on the node's `lora.policy_fport` (10 by default).

The counter: the node takes a frame whose counter is above every one it accepted and at most
65536 above the last one (so one frame cannot use up the counter space). Time cannot give that
(seconds since 1970 step by far more between two frames), so the keystore the node was
provisioned from keeps the last counter it gave each node (`lora_ctr`) and gives the next one.
When the node refuses a frame because the keystore is behind it (restored from a backup,
another host) or too far ahead of it (a node whose counter file was wiped), its answer names
its counter and `send` takes that and sends the frame again, once.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from meternode.policy import smallenc

from .command import Commander, node_key
from .errors import ConfigError, UmeterError

PRICE_MAX = 0xFFFFFFFF / 10000  # the frame's price is u32 in 1/10000 per kWh
VALID_MAX_S = 0xFFFF * 60  # u16 minutes
DURATION_MAX_S = 0xFFFF  # u16 seconds: 18 h 12 min 15 s
RULE_ALL = 255
CTR_MAX = 0xFFFFFFFF
FPORT = 10  # config.lora.policy_fport's default (docs/policy.md, "Hooks")
_CTR = re.compile(r"counter (\d+) is (?:not above|more than \d+ above) (\d+)")


@dataclass(frozen=True)
class Change:
    """One small policy change: op "price" (price per kWh, validity in minutes), "event" (start
    UNIX s, duration s, rule index or 255 = every event rule) or "cancel" (no values)."""

    op: str
    values: tuple = ()

    def encode(self, key: bytes, node: str, ctr: int) -> bytes:
        if self.op == "price":
            return smallenc.encode_price(key, node, ctr, *self.values)
        if self.op == "event":
            return smallenc.encode_event(key, node, ctr, *self.values)
        return smallenc.encode_cancel(key, node, ctr)

    def describe(self) -> str:
        if self.op == "price":
            return f"price {self.values[0]:g} per kWh for {_span(self.values[1] * 60)}"
        if self.op == "event":
            start, dur, rule = self.values
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(start))
            which = "every event rule" if rule == RULE_ALL else f"dr rule {rule}"
            return f"DR event at {when} for {_span(dur)} ({which})"
        return "cancel DR events"


def _span(s: int) -> str:
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


def price(value: float, valid_s: int) -> Change:
    """A real-time price (currency per kWh) in force for `valid_s` seconds (a whole number of
    minutes, up to 45 days; the node caps it at its policy's `realtime_max_s`)."""
    if not 0 <= value <= PRICE_MAX:
        raise ConfigError(f"price {value:g} is outside 0..{PRICE_MAX:.4f} per kWh", hint="e.g. 0.42")
    if round(value * 10000) != round(value * 10000, 6):
        raise ConfigError(f"price {value!r} has more than 4 decimals", hint="the frame carries 1/10000 per kWh")
    if valid_s % 60 or not 60 <= valid_s <= VALID_MAX_S:
        raise ConfigError(
            f"validity {valid_s} s is not a whole number of minutes from 1 min to {VALID_MAX_S // 86400} days",
            hint="e.g. --valid 2h",
        )
    return Change("price", (value, valid_s // 60))


def event(start: int, duration_s: int, rule: int | None = None, *, now: float | None = None) -> Change:
    """A demand-response event: every DR rule with trigger `event` in the node's policy (or only
    the `dr` rule at index `rule`) sheds from `start` (UNIX s) for `duration_s` seconds. The
    node takes an event that starts at most a day ahead and ended at most an hour ago."""
    now = int(time.time() if now is None else now)
    if not 1 <= duration_s <= DURATION_MAX_S:
        raise ConfigError(f"duration {duration_s} s is outside 1 s..{DURATION_MAX_S} s (18 h 12 min)", hint="e.g. 30m")
    if rule is not None and not 0 <= rule < RULE_ALL:
        raise ConfigError(f"rule {rule} is outside 0..254", hint="the index of an event rule in the policy's dr list")
    if start > now + smallenc.MAX_AHEAD_S:
        raise ConfigError(
            f"the event starts {start - now} s from now, more than a day ahead: the node would refuse it",
            hint="send it less than 24 h before it starts",
        )
    if start + duration_s < now - smallenc.MAX_LATE_S:
        raise ConfigError(
            f"the event ended {now - start - duration_s} s ago, more than an hour: the node would refuse it",
            hint="check --start (UNIX seconds, `now`, `+15m` or an ISO time)",
        )
    if not 0 < start <= CTR_MAX:
        raise ConfigError(f"start {start} is not a UNIX time the frame can carry")
    return Change("event", (start, duration_s, RULE_ALL if rule is None else rule))


def cancel() -> Change:
    """Ends every pushed DR event on the node now."""
    return Change("cancel")


@dataclass(frozen=True)
class Downlink:
    node: str
    counter: int
    frame: bytes
    fport: int = FPORT

    @property
    def hex(self) -> str:
        return self.frame.hex()

    @property
    def base64(self) -> str:
        import base64

        return base64.b64encode(self.frame).decode()


def downlinks(nodes, change: Change, *, keystore=None, key_hex: str | None = None, fport: int = FPORT):
    """The frames for a LoRaWAN network server's downlink queue, one per node (each takes the
    keystore's next counter; no answer comes back over LoRaWAN but the node's log line)."""
    from .keystore import Keystore

    ks = keystore or Keystore()
    out = []
    for n in nodes:
        key = node_key(n, key_hex, ks)
        ctr = ks.next_frame_counter(n)
        out.append(Downlink(n, ctr, change.encode(key, n, ctr), fport))
    return out


class Refused(UmeterError):
    """Nodes that refused the change or did not answer."""


class _Results(Commander):
    LEAF = "policy/result"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self._got: dict[str, list[dict]] = {}

    def _on_message(self, client, userdata, msg) -> None:
        try:
            d = json.loads(msg.payload)
        except ValueError:
            return
        # a bundle's or OTA's result names its version; a small frame's does not
        if isinstance(d, dict) and "version" not in d:
            node = msg.topic[len(self.prefix) + 1 : -len(self.LEAF) - 1]
            with self._cv:
                self._got.setdefault(node, []).append(d)
                self._cv.notify_all()

    def publish(self, node: str, frame: bytes) -> int:
        with self._cv:
            seen = len(self._got.get(node, ()))
        self._client.publish(f"{self.prefix}/{node}/policy/small", frame, qos=1).wait_for_publish(10)
        return seen

    def answer(self, node: str, seen: int, ctr: int, op: str, deadline: float) -> dict | None:
        """The node's first answer after `seen` that is to this frame (its op, or a refusal)."""
        with self._cv:
            while True:
                for d in self._got.get(node, [])[seen:]:
                    why = str(d.get("why", ""))
                    if d.get("op") == op or (not d.get("ok") and (f"counter {ctr} " in why or "counter" not in why)):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cv.wait(left)


def send(
    broker: str,
    nodes,
    change: Change,
    *,
    prefix: str = "umeter",
    keystore=None,
    key_hex: str | None = None,
    timeout: float = 30.0,
    user: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    progress=None,
) -> dict[str, dict | None]:
    """Sends `change` to every node over MQTT and waits for their answers: -> node -> the node's
    answer (None: none within `timeout` s). A node that refused the counter gets the frame again
    once, with the counter its answer names."""
    from .keystore import Keystore

    ks = keystore or Keystore()
    keys = {n: node_key(n, key_hex, ks) for n in nodes}
    out: dict[str, dict | None] = {}
    with _Results(broker, prefix=prefix, keystore=ks, user=user, password=password, tls_ca=tls_ca) as r:
        pending = {}
        for n in nodes:
            ctr = ks.next_frame_counter(n)
            pending[n] = (ctr, r.publish(n, change.encode(keys[n], n, ctr)))
        deadline = time.monotonic() + timeout
        for n, (ctr, seen) in pending.items():
            a = r.answer(n, seen, ctr, change.op, deadline)
            m = _CTR.search(str(a.get("why", ""))) if a and not a.get("ok") else None
            if m and int(m.group(1)) == ctr:
                last = int(m.group(2))
                if progress:
                    progress(f"{n}: the keystore's counter {ctr} did not suit the node's {last}; sending again")
                ks.set_frame_counter(n, last)
                ctr = ks.next_frame_counter(n)
                seen = r.publish(n, change.encode(keys[n], n, ctr))
                a = r.answer(n, seen, ctr, change.op, max(deadline, time.monotonic() + min(timeout, 10)))
            out[n] = a
    return out


def verdict(a: dict | None, change: Change, timeout: float) -> str | None:
    """Why a node's answer (None: none came) is not the change taking effect, or None when it is."""
    if a is None:
        return f"no answer in {timeout:g} s"
    if not a.get("ok"):
        return str(a.get("why", a.get("status", "?")))
    if change.op == "event" and not a.get("rules"):
        return "its policy has no DR rule with trigger event" + _rule(change)
    return None


_HINTS = (
    ("no answer", "is the node online (`umeter monitor`)?"),
    ("unauthenticated", "the node's key is not the keystore's: provision it again (`umeter provision`)"),
    ("unsupported", "the node needs a cmd_key and a policy"),
    ("no DR rule", 'its policy needs a [[dr]] with trigger = "event" (docs/policy.md)'),
    ("expired", "check this host's clock and the node's (`umeter command NODE status`)"),
)


def check(answers: dict[str, dict | None], change: Change, timeout: float) -> None:
    """Refused naming every node that refused the change, or answered without effect, or not at all."""
    bad = [(n, why) for n, a in answers.items() if (why := verdict(a, change, timeout))]
    if bad:
        hints = [h for key, h in _HINTS if any(key in why for _, why in bad)]
        raise Refused(
            f"{len(bad)} of {len(answers)} node(s) did not take the {change.op}: "
            + "; ".join(f"{n}: {why}" for n, why in bad),
            hint="; ".join(hints) or "see the node's log (`umeter logs NODE`)",
        )


def _rule(change: Change) -> str:
    return "" if change.values[2] == RULE_ALL else f" at index {change.values[2]}"


def took(a: dict, change: Change) -> str:
    """A node's ok answer in words."""
    if change.op == "price":
        return f"price {a.get('price')} in force for {_span(int(a.get('valid_s', 0)))}"
    if change.op == "event":
        return f"event set on {a.get('rules')} rule(s)"
    return "DR events cancelled"
