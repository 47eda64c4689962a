"""The one check every message from a node passes before it reaches a store (SQLite or
PostgreSQL): topic -> node and leaf, payload -> a typed message, or a `Reject` saying why.

`classify(prefix, topic, payload)` never raises. It returns

- `Record`: a stored record (`profile`, `event`, `reading` leaves) with its key
  (node, stream, seq), kind, ts, `held` and the JSON text to store;
- `Telemetry`, `State`, `Result`: live telemetry, the retained online/offline state,
  a command result;
- `Reject`: node, topic, reason and the first bytes of the payload (a record whose seq could
  be read keeps it in `seq`, so the store can mark that seq as received-but-rejected and not
  ask the node for it again and again);
- None: a topic the consumer does not keep (other prefix, discovery, policy state, …).

The rules are the firmware's formats (meternode.store.records, link/outbox.py,
link/telemetry.py) plus what both stores can hold: UTF-8 only (PostgreSQL text and jsonb
refuse NUL and lone surrogates, so does this), finite numbers, integers inside the record
format's widths (seq and ts are u32 in the record log header), bounded size and nesting.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from meternode.store import records as fw_records

MAX_PAYLOAD = 64 * 1024  # bytes; a node's MQTT packets are at most 16 KB
MAX_DEPTH = 16  # JSON nesting (telemetry: 3)
HEAD_BYTES = 256  # payload bytes kept with a reject
U32 = 2**32 - 1  # seq, ts and held are u32 in the record log (store/log.py header "<BBHII")
INT_MAX = 2**63 - 1  # any other integer must fit a signed 64-bit column
NODE_MAX = 64  # characters in a node id
STREAM_DEFAULT = "log"  # the node's record log: one seq space per node

# Record kinds per topic leaf (store/records.py topic_leaf); "unknown" is what the outbox sends
# for a record that passed its CRC but does not decode (never dropped, so its seq is not lost).
KINDS = {
    "profile": {"profile", "daily", "monthly", "unknown"},
    "event": {"event", "unknown"},
    "reading": {"reading", "unknown"},
}
# Integer fields each kind carries (the firmware's own key lists), and its text fields.
_INT_FIELDS = {
    "profile": tuple(fw_records.fields(fw_records.PROFILE, bytes(48))),
    "daily": tuple(fw_records.fields(fw_records.DAILY, bytes(24))),
    "monthly": tuple(fw_records.fields(fw_records.MONTHLY, bytes(24))),
    "event": ("code", "arg"),
    "reading": (),
    "unknown": (),
}
# Integer fields a kind carries from newer firmware only (a monthly's maximum demand, mW and
# the end of its period: a node before billing months sends a monthly without them).
_OPT_INT_FIELDS = {
    "monthly": tuple(k for k in fw_records.fields(fw_records.MONTHLY, bytes(32)) if k not in _INT_FIELDS["monthly"])
}
_TEXT_FIELDS = {"event": ("event", "text"), "reading": ("raw", "meter"), "unknown": ("error",)}
_TELEMETRY_NUM = ("v", "p", "e_imp_wh", "e_exp_wh")
# what every telemetry payload carries (link/telemetry.py encode_into writes them all)
TELEMETRY_KEYS = ("node", "seq", "ts", "v", "p", "e_imp_wh", "e_exp_wh", "elements")


def telemetry_doc(payload: str | bytes) -> dict:
    """A node's telemetry payload -> its dict; ValueError when it is not JSON or lacks a key
    every payload has (naming it)."""
    d = json.loads(payload)
    if not isinstance(d, dict):
        raise ValueError(f"telemetry payload is a {type(d).__name__}, not an object")
    why = _telemetry_lacks(d)
    if why:
        raise ValueError(why)
    return d


def _telemetry_lacks(d: dict) -> str:
    """Why a telemetry dict is not one ("" when it has every key a payload carries)."""
    key = next((k for k in TELEMETRY_KEYS if k not in d), None)
    return "" if key is None else f"telemetry payload lacks {key!r}"


@dataclass(frozen=True)
class Record:
    node: str
    stream: str
    seq: int
    kind: str
    ts: int
    held: int | None
    body: str  # the payload's JSON text (valid UTF-8, checked)
    doc: dict


@dataclass(frozen=True)
class Telemetry:
    node: str
    seq: int | None
    ts: int
    body: str
    doc: dict


@dataclass(frozen=True)
class State:
    node: str
    state: str


@dataclass(frozen=True)
class Result:
    node: str
    id: str | None
    body: str
    doc: dict


@dataclass(frozen=True)
class Reject:
    node: str
    topic: str
    reason: str
    head: bytes
    stream: str | None = None
    seq: int | None = None  # set when the record's key could be read


Message = Record | Telemetry | State | Result


class Invalid(ValueError):
    pass


class _Text(str):
    """Shown as is by _short (not repr'd)."""


def _text_ok(s: str, what: str) -> None:
    if "\x00" in s:
        raise Invalid(f"{what} holds a NUL character")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid(f"{what} holds a lone UTF-16 surrogate") from None


# What only the full walk (_clean) can judge, found in the JSON text itself: a NUL or a
# UTF-16 surrogate can only arrive as a \u escape (the text is strict UTF-8 and the parser
# refuses raw control characters), an integer beyond 64 bits has 19+ digits, a float that
# overflows to infinity a 3-digit exponent or 300+ digits. Payloads without any of these, and
# with fewer brackets than MAX_DEPTH, skip the walk (most of a consumer's CPU otherwise).
_SUSPECT = re.compile(r"\\u0000|\\u[dD][89a-fA-F]|\d{19,}|[eE][+-]?\d{3,}")


def _clean_text(text: str, doc: dict) -> None:
    if text.count("[") + text.count("{") > MAX_DEPTH or _SUSPECT.search(text):
        _clean(doc)


def _clean(v: object, depth: int = 0) -> None:
    """Every string storable as UTF-8 text without NUL, every number finite and 64-bit."""
    if depth > MAX_DEPTH:
        raise Invalid(f"nested deeper than {MAX_DEPTH}")
    if isinstance(v, str):
        _text_ok(v, "a string")
    elif isinstance(v, bool) or v is None:
        pass
    elif isinstance(v, int):
        if not -INT_MAX - 1 <= v <= INT_MAX:
            raise Invalid(f"integer {_short(v)} does not fit 64 bits")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise Invalid("a number is not finite")
    elif isinstance(v, dict):
        for k, x in v.items():
            _text_ok(k, "a key")
            _clean(x, depth + 1)
    elif isinstance(v, list):
        for x in v:
            _clean(x, depth + 1)


def _short(v: object, n: int = 40) -> str:
    r = v if isinstance(v, _Text) else repr(v)
    return r if len(r) <= n else r[: n - 1] + "…"


def _no_constant(name: str) -> float:
    raise Invalid(f"{name} is not JSON")


def _parse(payload: bytes) -> tuple[str, dict]:
    if len(payload) > MAX_PAYLOAD:
        raise Invalid(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid(f"payload is not UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except Invalid:
        raise
    except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise Invalid(f"payload is not JSON ({_short(_Text(e), 60)})") from None
    if not isinstance(doc, dict):
        raise Invalid(f"payload is a JSON {type(doc).__name__}, not an object")
    return text, doc  # the caller checks its fields, then _clean()s the rest


def _int(doc: dict, key: str, lo: int, hi: int, *, required: bool = True) -> int | None:
    if key not in doc:
        if required:
            raise Invalid(f"{key} is missing")
        return None
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise Invalid(f"{key} = {_short(v)} is not an integer")
    if not lo <= v <= hi:
        raise Invalid(f"{key} = {_short(v)} is outside {lo}..{hi}")
    return v


def _node_ok(node: str) -> None:
    if not node or len(node) > NODE_MAX:
        raise Invalid(f"node id of {len(node)} characters (1..{NODE_MAX})")
    if any(ord(ch) < 32 or ch == "\x7f" for ch in node):
        raise Invalid("node id holds a control character")
    _text_ok(node, "the node id")


def _record(node: str, leaf: str, text: str, doc: dict) -> Record:
    stream = doc.get("stream", STREAM_DEFAULT)
    if not isinstance(stream, str) or not 0 < len(stream) <= 16 or not stream.isascii() or not stream.isidentifier():
        raise Invalid(f"stream = {_short(stream)} is not a short name")
    seq = _int(doc, "seq", 1, U32)
    # From here the key is known: a reject keeps it (see Reject.seq).
    try:
        kind = doc.get("kind", leaf)
        if kind not in KINDS[leaf]:
            raise Invalid(f"kind = {_short(kind)} does not belong on …/{leaf}")
        ts = _int(doc, "ts", 0, U32)
        held = _int(doc, "held", 0, U32, required=False)
        if held is not None and held > seq:
            raise Invalid(f"held = {held} is above seq = {seq}")
        if "node" in doc and doc["node"] != node:
            raise Invalid(f"node = {_short(doc['node'])} is not the topic's node")
        for k in _INT_FIELDS[kind]:
            _int(doc, k, -INT_MAX - 1, INT_MAX)
        for k in _OPT_INT_FIELDS.get(kind, ()):
            _int(doc, k, 0, U32, required=False)
        for k in _TEXT_FIELDS.get(kind, ()):
            if k in doc and not isinstance(doc[k], str):
                raise Invalid(f"{k} = {_short(doc[k])} is not text")
        _clean_text(text, doc)
    except Invalid as e:
        raise _Keyed(str(e), stream, seq) from None
    return Record(node, stream, seq, kind, ts, held, text, doc)


class _Keyed(Invalid):
    def __init__(self, reason: str, stream: str, seq: int) -> None:
        super().__init__(reason)
        self.stream = stream
        self.seq = seq


def _telemetry(node: str, text: str, doc: dict) -> Telemetry:
    why = _telemetry_lacks(doc)
    if why:
        raise Invalid(why)
    seq = _int(doc, "seq", 0, INT_MAX)
    ts = _int(doc, "ts", 0, U32)
    for k in _TELEMETRY_NUM:
        v = doc[k]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise Invalid(f"{k} = {_short(v)} is not a number")
    if not isinstance(doc["elements"], list):
        raise Invalid("elements is not a list")
    if doc.get("node", node) != node:
        raise Invalid(f"node = {_short(doc['node'])} is not the topic's node")
    _clean_text(text, doc)
    return Telemetry(node, seq, ts, text, doc)


def _result(node: str, text: str, doc: dict) -> Result:
    rid = doc.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > 128):
        raise Invalid(f"id = {_short(rid)} is not a command id (text up to 128 characters)")
    _clean_text(text, doc)
    return Result(node, rid, text, doc)


def _state(node: str, payload: bytes) -> State:
    try:
        s = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("state is not UTF-8") from None
    if not 0 < len(s) <= 32 or not s.isprintable():
        raise Invalid("state is not a short printable word")
    return State(node, s)


def topic_parts(prefix: str, topic: str) -> tuple[str, str] | None:
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != prefix:
        return None
    return parts[1], "/".join(parts[2:])


RECORD_LEAVES = tuple(KINDS)
LEAVES = (*RECORD_LEAVES, "telemetry", "state", "cmd/result")


def classify(prefix: str, topic: str, payload: bytes) -> Message | Reject | None:
    """One message from the broker -> a typed message, a Reject, or None (not kept)."""
    parts = topic_parts(prefix, topic)
    if parts is None:
        return None
    node, leaf = parts
    if leaf not in LEAVES:
        return None
    head = bytes(payload[:HEAD_BYTES])
    try:
        _node_ok(node)
        if leaf == "state":
            return _state(node, payload)
        text, doc = _parse(payload)
        if leaf == "telemetry":
            return _telemetry(node, text, doc)
        if leaf == "cmd/result":
            return _result(node, text, doc)
        return _record(node, leaf, text, doc)
    except _Keyed as e:
        return Reject(node, topic, str(e), head, e.stream, e.seq)
    except Invalid as e:
        return Reject(_printable(node), _printable(topic), str(e), head)
    except Exception as e:  # a check that itself failed: still a reject, never a crash
        return Reject(_printable(node), _printable(topic), f"unreadable ({type(e).__name__}: {_short(_Text(e))})", head)


def _printable(s: str) -> str:
    out = "".join(ch if ch.isprintable() and ch != "\x00" else "?" for ch in s[:256])
    return out.encode("utf-8", "replace").decode("utf-8")
