"""What the nodes recorded, out of the store for billing and analysis (`umeter export`).

    from umeter.export import export
    from umeter.store import open_store
    table = export(open_store("meter.sqlite"), "profile", since=t0, until=t1)
    table.header, table.rows, table.warnings

Kinds, one row per record (docs/uplink.md, "Payloads"; times in UTC, ISO 8601):

- `profile`: each load-profile interval — its start and end, the energy imported and exported
  in it (the difference of the registers at its end and at the previous record's end, in
  exact kWh) and the registers, voltage, current and power avg/min/max. An interval that does
  not begin where the previous record ended (a reboot dropped the interval in progress, a
  record is missing, the first one exported) has no interval energy: its `status` says why,
  and its registers still hold everything.
- `daily` / `monthly`: the freezes at the node's local midnight / first of the month — the
  billing day or month that ended (local), the energy in it (against the previous freeze, when
  that is the day or month before), the registers, the water and gas meters' readings and the
  month's maximum demand. The node's billing offset from UTC is read from the freezes' own
  timestamps (each is a local midnight) unless given. A midnight between 10:00 and 12:00 UTC
  fits two offsets (UTC+14 and UTC-10 alike): the one the fleet database knows for the node
  (`known`: provisioned with it, or said in its `status`) tells them apart; without it the
  eastern one is taken and a warning says so.
- `events`: time, seq, code, name, argument and text.

The store may lack records (lost by the node, or not yet resent): `warnings` names every
missing seq range of the nodes exported within the time range, so a bill is never made from a
silently incomplete series.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass, field

from .errors import ConfigError
from .when import tz_name

KINDS = ("profile", "daily", "monthly", "events")
_KIND = {"events": "event"}  # the records' own kind names


@dataclass
class Table:
    header: list[str]
    rows: list[list] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong (a moved billing time)
    incomplete: int = 0  # rows without interval energy (a gap, a reset, the first)


def _iso(ts: int | None) -> str:
    return "" if not ts else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _kwh(mwh: int | None) -> str:
    """Exact mWh as kWh text (no float rounding)."""
    if mwh is None:
        return ""
    sign = "-" if mwh < 0 else ""
    return f"{sign}{abs(mwh) // 1_000_000}.{abs(mwh) % 1_000_000:06d}"


def _scaled(v: int, div: int, places: int) -> str:
    return f"{v / div:.{places}f}"


_TZ_LO, _TZ_HI = -720, 840  # the offsets a node's config takes (firmware checks.py)


def utc_offsets(ts: int) -> list[int]:
    """The offsets from UTC (minutes, eastern first) at which `ts` is a local midnight: one, or
    two when it is between 10:00 and 12:00 UTC (UTC+14 or UTC-10); none when `ts` is not on a
    whole minute."""
    if ts % 60:
        return []
    m = (-ts) % 86400 // 60
    return [o for o in (m, m - 1440) if _TZ_LO <= o <= _TZ_HI]


def _local(ts: int, offset_min: int) -> time.struct_time:
    return time.gmtime(ts + offset_min * 60)


def export(
    store,
    kind: str,
    nodes: list[str] | None = None,
    since: int | None = None,
    until: int | None = None,
    offset_min: int | None = None,
    known: dict[str, int] | None = None,
) -> Table:
    """The rows of `kind` (KINDS) for `nodes` (default: every node with such records), records
    with since <= ts < until. `offset_min` dates every node's freezes; else each node's are dated
    by their own midnights, `known` (node -> offset, the fleet database's) choosing where
    those fit two offsets."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r}", hint="one of: " + ", ".join(KINDS))
    if since is not None and until is not None and until <= since:
        raise ConfigError(f"--to ({_iso(until)}) is not after --from ({_iso(since)})")
    rk = _KIND.get(kind, kind)
    table = Table(_HEADERS[kind])
    for node in nodes or store.record_nodes(rk):
        docs = store.records(node, rk, since, until)
        if not docs and nodes:
            table.warnings.append(f"{node}: no {rk} records" + (" in the range" if since or until else ""))
        prev = store.record_before(node, rk, since) if since is not None and kind != "events" else None
        _ROWS[kind](table, node, docs, prev, (offset_min, (known or {}).get(node)))
        if docs:
            lo, hi = docs[0]["seq"], docs[-1]["seq"]
            for a, b in store.gaps(node):
                if a <= hi and b >= lo:
                    n = b - a + 1
                    table.warnings.append(
                        f"{node}: {'record' if n == 1 else 'records'} {a}{'' if n == 1 else f'..{b}'} missing "
                        "(lost by the node or not yet resent): the series has a hole"
                    )
    return table


_HEADERS = {
    "profile": [
        "node", "start", "end", "period_s", "import_kwh", "export_kwh", "import_register_kwh",
        "export_register_kwh", "v_avg", "v_min", "v_max", "i_avg_a", "i_min_a", "i_max_a", "p_avg_w", "p_min_w",
        "p_max_w", "status", "seq",
    ],
    "daily": [
        "node", "day", "frozen_at", "import_kwh", "export_kwh", "import_register_kwh", "export_register_kwh",
        "water_l", "gas_l", "status", "seq",
    ],
    "monthly": [
        "node", "month", "frozen_at", "import_kwh", "export_kwh", "import_register_kwh", "export_register_kwh",
        "water_l", "gas_l", "max_demand_kw", "max_demand_end", "status", "seq",
    ],
    "events": ["node", "time", "seq", "code", "event", "arg", "text"],
}  # fmt: skip


def _energy(table: Table, d: dict, prev: dict | None, continuous: bool, why: str) -> tuple[str, str, str]:
    """(import, export, status) of a record against the one before it."""
    if prev is None or not continuous:
        table.incomplete += 1
        return "", "", why
    di, de = d["e_imp_mwh"] - prev["e_imp_mwh"], d["e_exp_mwh"] - prev["e_exp_mwh"]
    if di < 0 or de < 0:
        table.incomplete += 1
        return "", "", "registers went back (a new node under this id?)"
    return _kwh(di), _kwh(de), "ok"


def _profile(table: Table, node: str, docs: list[dict], prev: dict | None, _off) -> None:
    for d in docs:
        start = d["ts"] - d["period_s"]
        why = "first exported" if prev is None else f"gap: the previous record ends at {_iso(prev['ts'])}"
        imp, exp, status = _energy(table, d, prev, prev is not None and prev["ts"] == start, why)
        table.rows.append([
            node, _iso(start), _iso(d["ts"]), d["period_s"], imp, exp, _kwh(d["e_imp_mwh"]), _kwh(d["e_exp_mwh"]),
            _scaled(d["v_avg_dv"], 10, 1), _scaled(d["v_min_dv"], 10, 1), _scaled(d["v_max_dv"], 10, 1),
            _scaled(d["i_avg_ma"], 1000, 3), _scaled(d["i_min_ma"], 1000, 3), _scaled(d["i_max_ma"], 1000, 3),
            _scaled(d["p_avg_dw"], 10, 1), _scaled(d["p_min_dw"], 10, 1), _scaled(d["p_max_dw"], 10, 1),
            status, d["seq"],
        ])  # fmt: skip
        prev = d


def _offsets(table: Table, node: str, docs: list[dict], prev: dict | None, offs: tuple) -> list[int]:
    """The offset each freeze of `node` (`prev` first, when given) is dated by: the one given,
    else its own midnight's — the one before it, then the fleet database's `known`, choosing
    where a midnight fits two; a freeze at no midnight (a move across one) keeps the one
    before. A move of the billing time between two freezes is a note; each doubt a warning."""
    given, known = offs
    seq = [*([prev] if prev else []), *docs]
    if given is not None:
        bad = [d for d in seq if given not in utc_offsets(d["ts"])]
        if bad:
            said = " or ".join(tz_name(o) for o in utc_offsets(bad[0]["ts"])) or "no offset"
            table.warnings.append(
                f"{node}: {len(bad)} of its freezes are not at local midnight in the {tz_name(given)} given "
                f"(the first, seq {bad[0]['seq']}, is in {said}): dated as given"
            )
        return [given] * len(seq)
    out: list[int] = []
    doubt = False
    for d in seq:
        fits = utc_offsets(d["ts"])
        last = out[-1] if out else None
        if last in fits or (not fits and last is not None):
            o = last
        elif known in fits:
            o = known
        elif fits:
            o = fits[0]
            doubt = doubt or len(fits) > 1
        else:
            o = known if known is not None else 0
            table.warnings.append(
                f"{node}: the freeze at {_iso(d['ts'])} (seq {d['seq']}) is at no local midnight: dated in {tz_name(o)}"
            )
        if last is not None and o != last:
            table.notes.append(
                f"{node}: billing time moved from {tz_name(last)} to {tz_name(o)} before the freeze at "
                f"{_iso(d['ts'])} (seq {d['seq']})"
            )
        out.append(o)
    newest = utc_offsets(seq[-1]["ts"]) if seq else []
    if doubt and known is None:
        said = " or ".join(tz_name(o) for o in newest)
        table.warnings.append(
            f"{node}: its freezes are at local midnight in {said}: dated in {tz_name(out[-1])}; give "
            "--utc-offset-min, or let `umeter fleet health` ask the node its own"
        )
    elif known is not None and newest and known not in newest:
        said = " or ".join(tz_name(o) for o in newest)
        table.warnings.append(
            f"{node}: the fleet database has {tz_name(known)}, but its newest freeze is at local midnight in "
            f"{said} (provisioned again with another offset?): dated by its freezes in {tz_name(out[-1])}"
        )
    return out


def _freezes(monthly: bool):
    def rows(table: Table, node: str, docs: list[dict], prev: dict | None, offs: tuple) -> None:
        tz = iter(_offsets(table, node, docs, prev, offs))
        before = _local(prev["ts"] - 1, next(tz)) if prev else None
        for d in docs:
            end = _local(d["ts"] - 1, next(tz))  # the day (month) that ended at this freeze, local
            if monthly:
                label = f"{end.tm_year:04d}-{end.tm_mon:02d}"
                follows = (
                    before is not None and before.tm_year * 12 + before.tm_mon + 1 == end.tm_year * 12 + end.tm_mon
                )
            else:
                label = time.strftime("%Y-%m-%d", end)
                # the day after the one before it: 24 h, or 23 or 25 where the billing time moved
                follows = before is not None and calendar.timegm(end) // 86400 == calendar.timegm(before) // 86400 + 1
            why = "first exported" if prev is None else f"the previous freeze is at {_iso(prev['ts'])}"
            imp, exp, status = _energy(table, d, prev, follows, why)
            row = [node, label, _iso(d["ts"]), imp, exp, _kwh(d["e_imp_mwh"]), _kwh(d["e_exp_mwh"]),
                   d.get("water_l", 0), d.get("gas_l", 0)]  # fmt: skip
            if monthly:
                md = d.get("md_mw")
                row += [_scaled(md, 1_000_000, 3) if md else "", _iso(d.get("md_at"))]
            table.rows.append([*row, status, d["seq"]])
            prev, before = d, end

    return rows


def _events(table: Table, node: str, docs: list[dict], _prev, _off) -> None:
    from .decode import event_names

    names = event_names()
    for d in docs:
        code = d.get("code", 0)
        table.rows.append([node, _iso(d["ts"]), d["seq"], code, names.get(code, "unknown"), d.get("arg", 0),
                           d.get("text", "")])  # fmt: skip


_ROWS = {"profile": _profile, "daily": _freezes(False), "monthly": _freezes(True), "events": _events}
