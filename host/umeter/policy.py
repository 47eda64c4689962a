"""Policy documents on the host: TOML source -> the node's compact JSON, diff, signed bundles.

    compact = compile_file("tou.toml")           # PolicyError naming the bad key
    env = policy_bundle(key, "acme", 8, compact, make_target(groups=["north"]))

Validation is the firmware's own code (meternode.policy.schema): the host runs the same
compile + check the node runs on every policy it loads.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from meternode.policy import compile as fw_compile
from meternode.policy import schema

from .errors import PolicyError
from .signing import make_manifest, sign_bundle

POLICY_FILE = "policy.json"


def load_source(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PolicyError(f"{p}: cannot be read ({e.strerror})", hint="check the path") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{p}: not valid TOML ({e})", hint="fix the syntax at that line") from None


def compile_source(src: dict, name: str = "policy") -> dict:
    try:
        return fw_compile.compile_policy(src)
    except schema.PolicyError as e:
        raise PolicyError(f"{name}: {e}", hint="see docs/policy.md for the policy format") from None


def compile_file(path: str | Path) -> dict:
    return compile_source(load_source(path), str(path))


def load_any(path: str | Path) -> dict:
    """A compact policy from a .toml source, a compact .json, or a signed bundle."""
    p = Path(path)
    if p.suffix == ".toml":
        return compile_file(p)
    try:
        data = json.loads(p.read_bytes())
    except (OSError, ValueError) as e:
        raise PolicyError(f"{p}: neither TOML nor JSON ({e})", hint="give a .toml source or a .json policy") from None
    if isinstance(data, dict) and "m" in data and "f" in data:
        from .signing import read_envelope

        _, _, files = read_envelope(p.read_bytes())
        if POLICY_FILE not in files:
            raise PolicyError(f"{p}: bundle has no {POLICY_FILE}", hint="is it a firmware bundle?")
        data = json.loads(files[POLICY_FILE])
    try:
        return schema.check_compact(data)
    except schema.PolicyError as e:
        raise PolicyError(f"{p}: {e}", hint="recompile it from the TOML source") from None


def compact_bytes(compact: dict) -> bytes:
    return json.dumps(compact, separators=(",", ":"), sort_keys=True).encode()


def _hm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _md(d: int) -> str:
    return f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}" if d > 10000 else f"{d // 100:02d}-{d % 100:02d}"


def describe(c: dict) -> dict[str, str]:
    """Flat, readable key -> value view of a compact policy (what `diff` compares)."""
    t = c["t"]
    out: dict[str, str] = {
        "name": c["n"],
        "utc_offset_min": str(c["tz"]),
        "tariffs": ", ".join(t),
        "holidays": ", ".join(_md(d) for d in c["h"]),
    }
    for s in c["s"]:
        for k, day in enumerate(schema.DAY_TYPES):
            periods = s[1 + k]
            out[f"season {_md(s[0])} {day}"] = " ".join(
                f"{_hm(periods[i])}={t[periods[i + 1]]}" for i in range(0, len(periods), 2)
            )
    for i, p in enumerate(c["p"]):
        out[f"price {t[i]}"] = "unset" if p < 0 else f"{p:g}"
    out["realtime_max_s"] = str(c["rt"])
    for n, lm in enumerate(c["l"]):
        out[f"limit[{n}]"] = (
            f"{schema.LIMIT_KINDS[lm[0]]} level={lm[1]:g} hold={lm[2]}s action={schema.ACTIONS[lm[3]]} "
            f"shed={lm[4]}s retries={lm[5]}"
        )
    for n, r in enumerate(c["d"]):
        trig = schema.DR_TRIGGERS[r[0]]
        lev = f"{r[1]:g}..{r[2]:g}" if r[0] == 3 else f"{r[1]:g}"
        out[f"dr[{n}]"] = f"{trig} level={lev} for={r[3]}s shed={r[4]}s random={r[5]}s"
    if "r" in c:
        out["reporting"] = f"telemetry={c['r'][0]}s profile={c['r'][1]}min quantities={','.join(c['r'][2])}"
    return out


def diff(old: dict, new: dict) -> list[tuple[str, str | None, str | None]]:
    """[(key, old value or None, new value or None)] for every key that differs."""
    a, b = describe(old), describe(new)
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def policy_bundle(key, fleet: str, version: int, compact: dict, target: dict, **kw) -> bytes:
    """A signed policy bundle (envelope bytes) carrying `compact` as policy.json."""
    files = {POLICY_FILE: compact_bytes(compact)}
    man = make_manifest("policy", fleet, version, files, target, key=key, **kw)
    return sign_bundle(key, man, files)
