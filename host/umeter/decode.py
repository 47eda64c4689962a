"""Decoding uplink payloads on the host, with the firmware's own codec (one definition).

- `decode_lora(frame)`: a LoRaWAN frame (bytes or hex) -> dict, as `meternode.link.loradecode`
  reads what `meternode.link.loracodec` encodes (kind, seq, ts and the fields).
- `decode_mqtt(topic, payload)`: a node's MQTT message -> dict (records, telemetry, state).
- `js_decoder()`: the same format as a ChirpStack v4 / TTN v3 payload codec (JavaScript
  `decodeUplink(input)`), generated from the firmware's layout table.
"""

from __future__ import annotations

import json
import struct

from meternode.link import loracodec, loradecode

from .errors import ConfigError


def event_names() -> dict[int, str]:
    """{code: name} of every event code the firmware names (records.event_name; a code past
    the last reads "unknown")."""
    names = {}
    code = 1
    while (name := loracodec.records.event_name(code)) != "unknown":
        names[code] = name
        code += 1
    return names


def _bytes(frame: bytes | str) -> bytes:
    if isinstance(frame, bytes | bytearray):
        return bytes(frame)
    s = frame.strip().replace(" ", "").replace(":", "")
    bad = next((c for c in s if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise ConfigError(
            f"payload {frame!r} is not hex (character {bad!r})", hint="give the frame as hex digits, e.g. 21070000..."
        )
    if len(s) % 2:
        raise ConfigError(
            f"payload {frame!r} has an odd number of hex digits ({len(s)})",
            hint="two digits per byte: is one missing or extra?",
        )
    return bytes.fromhex(s)


def decode_lora(frame: bytes | str) -> dict:
    """A LoRa uplink frame -> its fields. Raises ConfigError naming what is wrong."""
    try:
        return loradecode.decode(_bytes(frame))
    except ValueError as e:
        raise ConfigError(f"cannot decode LoRa frame: {e}", hint="is it a umeter frame (version 1)?") from None


# field suffix -> (divisor, unit, decimals): the codec's integer fields in physical units
_UNITS = {"_dv": (10, "V", 1), "_chz": (100, "Hz", 2), "_dw": (10, "W", 1), "_cA": (100, "A", 2),
          "_wh": (1, "Wh", 0), "_l": (1, "l", 0), "_min": (1, "min", 0)}  # fmt: skip


def physical(d: dict) -> list[tuple[str, str]]:
    """A decoded frame's fields as (name, text in physical units): 'v_dv': 2310 -> ('v', '231.0 V')."""
    out = []
    for k, v in d.items():
        for suffix, (div, unit, dec) in _UNITS.items():
            if k.endswith(suffix) and isinstance(v, int):
                out.append((k[: -len(suffix)], f"{v / div:.{dec}f} {unit}"))
                break
        else:
            out.append((k, str(v)))
    return out


def decode_mqtt(topic: str, payload: bytes) -> dict:
    """A node's MQTT message -> dict with `node` and `leaf` added."""
    parts = topic.split("/")
    if len(parts) < 3:
        raise ConfigError(f"topic {topic!r} is not <prefix>/<node>/<leaf>", hint="e.g. umeter/node-01/profile")
    node, leaf = parts[1], "/".join(parts[2:])
    if leaf == "state":
        return {"node": node, "leaf": leaf, "state": payload.decode("utf-8", "replace")}
    try:
        d = json.loads(payload)
    except (ValueError, RecursionError) as e:  # RecursionError: nested deeper than Python goes
        raise ConfigError(f"{topic}: payload is not JSON ({e})", hint="node payloads are JSON objects") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{topic}: payload is not a JSON object", hint="node payloads are JSON objects")
    d.setdefault("node", node)
    d["leaf"] = leaf
    return d


_JS_READ = {"B": ("getUint8", 1), "H": ("getUint16", 2), "I": ("getUint32", 4), "i": ("getInt32", 4)}


def js_decoder() -> str:
    """JavaScript payload codec for ChirpStack v4 / TTN v3, built from the firmware's layouts
    (loracodec.FORMATS, named by loradecode.LAYOUTS)."""
    kinds = []
    for kind, (name, fields) in sorted(loradecode.LAYOUTS.items()):
        off = 9
        reads = []
        short = loradecode.SHORT.get(kind)  # an older firmware's frame ends after these fields
        need = None
        for i, (key, code) in enumerate(fields):
            fn, size = _JS_READ[code]
            if i == short:
                need = off
                reads.append(f"      if (b.length > {off}) {{")
            reads.append(f"      {'  ' if need else ''}d.{key} = v.{fn}({off}, true);")
            off += size
        if need:
            reads.append("      }")
        extra = ""
        if name == "event":
            names = ", ".join(f'{c}: "{n}"' for c, n in sorted(event_names().items()))
            extra = (
                f'      d.event = ({{{names}}})[d.code] || "unknown";\n'
                f"      d.text = String.fromCharCode.apply(null, b.slice({off}));\n"
            )
        check = f"b.length < {off}" if need is None else f"b.length !== {need} && b.length < {off}"
        kinds.append(
            f"    case {kind}:\n"
            f"      if ({check})\n"
            f'        return {{errors: ["{name} frame is " + b.length + " bytes, expected {off}"]}};\n'
            f'      d.kind = "{name}";\n' + "\n".join(reads) + "\n" + extra + "      break;"
        )
    kinds.append(
        f"    case {loracodec.records.READING}:\n"
        '      d.kind = "reading";\n'
        "      var e = readingBody(b.slice(9), d);\n"
        "      if (e) return {errors: [e]};\n"
        "      break;"
    )
    body = "\n".join(kinds)
    return f"""// umeter LoRaWAN payload codec (format version {loracodec.VERSION}), generated by `umeter decode js`.
// ChirpStack v4 and The Things Stack v3: decodeUplink({{bytes, fPort}}) -> {{data}} or {{errors}}.
function decodeUplink(input) {{
  var b = input.bytes;
  if (b.length < 9) return {{errors: ["frame of " + b.length + " bytes is shorter than the 9-byte header"]}};
  if (b.length > {loracodec.MAX_FRAME})
    return {{errors: ["frame of " + b.length + " bytes is over {loracodec.MAX_FRAME}"]}};
  var v = new DataView(new Uint8Array(b).buffer);
  if ((b[0] >> 5) !== {loracodec.VERSION}) return {{errors: ["frame version " + (b[0] >> 5)]}};
  var d = {{seq: v.getUint32(1, true), ts: v.getUint32(5, true)}};
  switch (b[0] & 31) {{
{body}
    default:
      return {{errors: ["unknown frame kind " + (b[0] & 31)]}};
  }}
  return {{data: d}};
}}
{_js_reading()}"""


def _js_reading() -> str:
    """JavaScript for a READING frame's body (gateway/reading.py `lora()`): the same fields
    as `lorareading.lora_decode`. Values are zigzag varints of up to 64 bits: decoded with
    Number arithmetic (not 32-bit bit operations) while exact, with BigInt beyond 2**53, and
    their decimal text is built from digits, so no float ever rounds a total."""
    from meternode.gateway import reading as R

    quantities = json.dumps([[code, name] for code, name, _, _ in R.quantities()])
    return f"""
var READING_Q = {quantities};
var READING_U = {json.dumps(list(R.UNITS))};
var READING_P = {json.dumps(list(R.PROTOCOLS))};
var READING_S = {json.dumps(list(R.STATUS_NAMES))};
function readingDecimal(s, e) {{
  // the exact decimal text of the integer written s (digits, maybe "-") times 10**e
  if (e >= 0) return s === "0" ? "0" : s + "0".repeat(e);
  var neg = s.charAt(0) === "-";
  if (neg) s = s.slice(1);
  var k = -e;
  if (s.length <= k) s = "0".repeat(k - s.length + 1) + s;
  s = s.slice(0, s.length - k) + "." + s.slice(s.length - k);
  return neg ? "-" + s : s;
}}
function readingBody(b, d) {{
  if (b.length < 8) return "reading frame body of " + b.length + " bytes is too short";
  var status = b[0];
  var mts = (b[1] | (b[2] << 8) | (b[3] << 16)) + b[4] * 16777216;
  var proto = b[5] < READING_P.length ? READING_P[b[5]] : "unknown";
  var nd = b[6];
  var k = 7 + ((nd + 1) >> 1);
  if (b.length < k + 1) return "reading frame is cut inside its meter id";
  var digits = "";
  for (var i = 7; i < k; i++) digits += (b[i] < 16 ? "0" : "") + b[i].toString(16);
  digits = digits.slice(0, nd);
  if (proto === "cjt188" && digits.length > 2) digits = digits.slice(0, 2) + "-" + digits.slice(2);
  var n = b[k];
  k += 1;
  var out = [];
  for (var j = 0; j < n; j++) {{
    if (k + 4 > b.length) return "reading frame is cut inside a value";
    var q = b[k], u = b[k + 1], e = b[k + 2];
    if (e > 127) e -= 256;
    k += 3;
    var z = 0, big = null, sh = 0, x;
    do {{
      if (k >= b.length) return "reading frame is cut inside a value";
      x = b[k];
      k += 1;
      if (big === null && sh + 7 > 53) {{
        if (typeof BigInt !== "function") return "value of more than 53 bits needs BigInt";
        big = BigInt(z);
      }}
      if (big === null) z += (x & 127) * Math.pow(2, sh);
      else big += BigInt(x & 127) << BigInt(sh);
      sh += 7;
    }} while (x & 128);
    var v, text;
    if (big === null) {{
      v = z % 2 === 0 ? z / 2 : -(z + 1) / 2;
      text = String(v);
    }} else {{
      var one = BigInt(1);
      var bv = (big & one) === BigInt(0) ? big >> one : -((big + one) >> one);
      text = bv.toString();
      v = Number.isSafeInteger(Number(bv)) ? Number(bv) : text;
    }}
    if (q >= READING_Q.length || u >= READING_U.length)
      return "reading frame has unknown quantity " + q + " / unit " + u;
    out.push({{code: READING_Q[q][0], quantity: READING_Q[q][1], v: v, e: e,
              value: readingDecimal(text, e), unit: READING_U[u]}});
  }}
  if (k !== b.length) return "reading frame has " + (b.length - k) + " bytes after its values";
  var names = [];
  for (var bit = 0; bit < 8; bit++) if (status & (1 << bit)) names.push(READING_S[bit]);
  d.meter = proto + "-" + digits;
  d.status = names;
  d.meter_ts = mts || null;
  d.readings = out;
  return null;
}}
"""


def frame_size(kind: int) -> int:
    """Bytes of a frame of `kind` without event text (for docs and budgets)."""
    return 9 + struct.calcsize(loracodec.FORMATS[kind])
