"""`umeter sim`: virtual nodes on the unix port publishing to a broker, shown live."""

from __future__ import annotations

import collections
import json
import signal
import time
from pathlib import Path

import click

from .. import simbus, ui
from ..errors import ConfigError, DeviceError
from ..sim import NodeView, SimRun, parse_scenarios


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def compact(x: float | None, sign: bool = False) -> str:
    """Three significant digits with an SI prefix: 2965.8 -> '2.97k', 7.126 -> '7.13', -2127 -> '-2.13k'."""
    if x is None:
        return "—"
    a = abs(x)
    prefix = ""
    for scale, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale * 0.9995:
            x, a, prefix = x / scale, a / scale, p
            break
    digits = 0 if a >= 99.95 else 1 if a >= 9.995 else 2
    return format(x, f"{'+' if sign else ''}.{digits}f") + prefix


def _main_element(t: dict) -> dict:
    els = t.get("elements") or [{}]
    return els[0]


def _relay(v: NodeView) -> str | None:
    r = v.relay()
    return None if r is None else ("on" if r else "OFF")


def _tariff(v: NodeView, names: list[str] | None) -> str | None:
    i = v.tariff()
    if i is None:
        return None
    return f"{i} {names[i]}" if names and 0 <= i < len(names) else str(i)


def render_line(v: NodeView, tariffs: list[str] | None = None, db: bool = False) -> str:
    """One plain line per node (pipes, CI): the table's fields as key=value, and the node's
    last failure when nothing was received since."""
    t = v.telemetry
    err = f"; last error: {v.error}" if v.failing() else ""
    restarts = f" (restarted {v.restarts}×)" if v.restarts else ""
    if t is None:
        return f"{v.node_id} {v.scenario.name:<6} {v.state}{restarts}: no telemetry yet{err}"
    e = _main_element(t)
    line = (
        f"{v.node_id} {v.scenario.name:<6} V={_fmt(t.get('v'), '.1f')} V f={_fmt(t.get('f'), '.2f')} Hz "
        f"I={_fmt(e.get('i'), '.2f')} A P={_fmt(t.get('p'), '+.0f')} W "
        f"PF={_fmt(e.get('pf'), '.3f')} Q={_fmt(e.get('q'), '+.0f')} var "
        f"import={_fmt(t.get('e_imp_wh'), '.2f')} Wh export={_fmt(t.get('e_exp_wh'), '.2f')} Wh"
    )
    tar = v.tariff()
    if tar is not None:
        line += f" tariff={tar}"
        if tariffs and 0 <= tar < len(tariffs):
            line += f"({tariffs[tar]})"
    relay = _relay(v)
    if relay is not None:
        line += f" relay={relay}"
    if v.policy_event:
        line += f" event={v.policy_event.get('event')}"
    if db:
        line += f" records={v.records}"
    if v.restarts:
        line += f" restarts={v.restarts}"
    if v.meters:
        line += f" meters={_meters_cell(v)}"
    line += f" seq={t.get('seq')}"
    return line + (f" error={v.error!r}" if err else "")


def _grid(v: NodeView, key: str) -> float | None:
    """A value of the grid CT (the first element) from the node's telemetry."""
    return _main_element(v.telemetry).get(key) if v.telemetry else None


def _state(v: NodeView, now: float) -> str:
    if v.failing():
        return "ERROR"
    if v.telemetry is None:
        return v.state if v.state != "online" else "no data"
    return v.state + (f" {now - v.received:.0f}s" if now - v.received > 3 else "")


# The table's columns, most important first: on a narrow terminal the last ones are left out
# (`columns_for`), and the rest keep their natural width, so no value is ever cut short.
# (header, justify, cell(view, tariff names, now) -> str, needs: "" always | "policy" | "db")
_COLUMNS = (
    ("node", "left", lambda v, n, now: v.node_id, ""),
    ("state", "left", lambda v, n, now: _state(v, now), ""),
    ("meters", "right", lambda v, n, now: _meters_cell(v), "bus"),
    ("P W", "right", lambda v, n, now: compact((v.telemetry or {}).get("p"), sign=True), ""),
    ("imp Wh", "right", lambda v, n, now: compact((v.telemetry or {}).get("e_imp_wh")), ""),
    ("exp Wh", "right", lambda v, n, now: compact((v.telemetry or {}).get("e_exp_wh")), ""),
    ("V", "right", lambda v, n, now: _fmt((v.telemetry or {}).get("v"), ".1f"), ""),
    ("relay", "left", lambda v, n, now: _relay(v) or "—", "policy"),
    ("tariff", "left", lambda v, n, now: _tariff(v, n) or "—", "policy"),
    ("Hz", "right", lambda v, n, now: _fmt((v.telemetry or {}).get("f"), ".2f"), ""),
    ("I A", "right", lambda v, n, now: compact(_grid(v, "i")), ""),
    ("event", "left", lambda v, n, now: _event(v), "policy"),
    ("rec", "right", lambda v, n, now: str(v.records), "db"),
    ("PF", "right", lambda v, n, now: _fmt(_grid(v, "pf"), ".2f"), ""),
    ("Q var", "right", lambda v, n, now: compact(_grid(v, "q"), sign=True), ""),
    ("scenario", "left", lambda v, n, now: v.scenario.name, ""),
    ("msgs", "right", lambda v, n, now: str(v.messages), ""),
)
_GAP = 2  # blank columns between two table columns


def columns_for(width: int, cells: list[list[str]], headers: list[str]) -> list[int]:
    """Indexes of the columns that fit `width`, taken in priority order; at least the first two."""
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    keep: list[int] = []
    used = -_GAP
    for i, w in enumerate(widths):
        if len(keep) >= 2 and used + _GAP + w > width:
            continue  # a lower-priority column that is narrow enough may still fit
        keep.append(i)
        used += _GAP + w
    return sorted(keep)


def render_table(
    views: list[NodeView],
    broker: str,
    started: float,
    tariffs: list[str] | None = None,
    db: bool = False,
    width: int = 80,
    logs: list[str] | None = None,
    meter_rows: int = 24,
):
    """The live view: one row per node in `width` columns, then each failing node's last
    error, then (with --bus) a row per meter (at most `meter_rows`, those not answering
    first) and why each failing one fails, then (with --logs) the newest console lines."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.monotonic()
    bus = any(v.meters for v in views)
    have = {"": True, "policy": tariffs is not None, "db": db, "bus": bus}
    cols = [c for c in _COLUMNS if have[c[3]]]
    cells = [[c[2](v, tariffs, now) for c in cols] for v in views]
    keep = columns_for(width, cells, [c[0] for c in cols])
    title = f"umeter sim · {len(views)} nodes · {broker} · {now - started:.0f} s"
    t = Table(
        title=title if len(title) <= width else title[: width - 1] + "…",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),  # with the blank divider: _GAP columns between two
        collapse_padding=False,
    )
    for i in keep:
        t.add_column(cols[i][0], justify=cols[i][1], no_wrap=True)
    for v, row in zip(views, cells, strict=True):
        p = (v.telemetry or {}).get("p")
        style = "red" if v.failing() or _relay(v) == "OFF" else ("green" if (p or 0) < 0 else None)
        t.add_row(*(row[i] for i in keep), style=style)
    parts: list = [t]
    for v in views:
        if v.failing():
            ago = f" ({now - v.error_at:.0f} s ago)" if now - v.error_at >= 1 else ""
            again = f", restarted {v.restarts}×" if v.restarts else ""
            parts.append(Text(f"{v.node_id}: {v.error}{ago}{again}", style="red", overflow="fold"))
    if bus:
        parts += _meter_table(views, width, now, meter_rows)
    if logs:
        parts.append(Text("console (newest last):", style="dim"))
        parts += [Text(ln, no_wrap=True, overflow="ellipsis") for ln in logs]
    return Group(*parts)


def _event(v: NodeView) -> str:
    e = v.policy_event
    if not e:
        return "—"
    ago = time.time() - e.get("t", 0)
    return f"{e.get('event')} {ago:.0f}s" if ago >= 1 else str(e.get("event"))


# -- --bus: the meters each node's gateway reads ---------------------------------------------------
def _meters_cell(v: NodeView) -> str:
    """'5/5': meters answering of those configured; 'off' when the node's gateway did not start."""
    if v.gateway_on is False:
        return "off"
    ok = sum(1 for m in v.meters.values() if m.state(v.gateway_on) == "ok")
    return f"{ok}/{len(v.meters)}"


def _age(m: simbus.MeterView, now: float) -> str:
    return f"{now - m.at:.0f}s" if m.received else "—"


# (header, justify, cell(meter view, node view, now) -> str), most important first
_METER_COLUMNS = (
    ("node", "left", lambda m, v, now: v.node_id),
    ("meter", "left", lambda m, v, now: m.meter_id),
    ("state", "left", lambda m, v, now: m.state(v.gateway_on)),
    ("reading", "right", lambda m, v, now: m.headline()[0]),
    ("now", "right", lambda m, v, now: m.headline()[1]),
    ("age", "right", lambda m, v, now: _age(m, now)),
    ("kind", "left", lambda m, v, now: m.kind),
)


def _meter_table(views: list[NodeView], width: int, now: float, max_rows: int) -> list:
    """A row per meter (node, id, state, its last reading's total and power/flow, age, kind)
    in `width` columns, at most `max_rows` (the meters not answering first), and a line per
    failing meter and per node whose gateway is off saying why."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = [(m, v) for v in views for m in v.meters.values()]
    shown = rows
    if len(rows) > max_rows:
        bad = [r for r in rows if r[0].state(r[1].gateway_on) != "ok"][:max_rows]
        good = [r for r in rows if r[0].state(r[1].gateway_on) == "ok"][: max_rows - len(bad)]
        keep = {id(r[0]) for r in bad + good}
        shown = [r for r in rows if id(r[0]) in keep]
    cells = [[c[2](m, v, now) for c in _METER_COLUMNS] for m, v in shown]
    keep_cols = columns_for(width, cells, [c[0] for c in _METER_COLUMNS])
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), collapse_padding=False)
    for i in keep_cols:
        t.add_column(_METER_COLUMNS[i][0], justify=_METER_COLUMNS[i][1], no_wrap=True)
    for (m, v), row in zip(shown, cells, strict=True):
        state = m.state(v.gateway_on)
        style = "red" if state in ("failing", "off") else ("dim" if state == "waiting" else None)
        t.add_row(*(row[i] for i in keep_cols), style=style)
    parts: list = [t]
    if len(shown) < len(rows):
        parts.append(Text(f"… and {len(rows) - len(shown)} more meters answering (--json lists every one)",
                          style="dim"))
    for v in views:
        if v.gateway_on is False or (v.gateway_error and v.gateway_on):
            parts.append(Text(f"{v.node_id}: {v.gateway_error}", style="red", overflow="fold"))
        for m in v.meters.values():
            if m.state(v.gateway_on) == "failing":
                parts.append(Text(_failing_text(v, m, now), style="red", overflow="fold"))
    return parts


def _failing_text(v: NodeView, m: simbus.MeterView, now: float) -> str:
    """'node-01 mbus-12345601: no answer in 500 ms (2 tries) for 12 s; its last reading (4321.009 kWh,
    20 s old) stays, marked stale'."""
    why = m.why or "stopped answering"
    since = f" for {now - m.silent_at:.0f} s" if m.silent_at else ""
    if m.received:
        kept = f"; its last reading ({m.headline()[0]}, {now - m.at:.0f} s old) stays, marked stale"
    else:
        kept = "; no reading from it yet"
    return f"{v.node_id} {m.meter_id}: {why}{since}{kept}"


def meter_line(v: NodeView, m: simbus.MeterView, now: float | None = None) -> str:
    """One plain line about one meter (pipes, CI): printed when its reading or state changes."""
    now = time.monotonic() if now is None else now
    state = m.state(v.gateway_on)
    if state == "failing":
        return f"{v.node_id} meter {_failing_text(v, m, now)[len(v.node_id) + 1:]}"
    if state != "ok":
        return f"{v.node_id} meter {m.meter_id} {state}" + (f": {v.gateway_error}" if state == "off" else "")
    vals = " ".join(f"{x['quantity']}={x['value']}{' ' + x['unit'] if x['unit'] else ''}" for x in m.values)
    return f"{v.node_id} meter {m.meter_id} ok {vals} seq={m.seq}"


@click.command("sim")
@click.option("--nodes", "-n", default=3, show_default=True, type=click.IntRange(1, 64), help="Virtual nodes to start.")
@click.option(
    "--broker", default=None, metavar="mqtt://HOST:PORT", help="Use this MQTT broker instead of the embedded one."
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Stop S seconds after the nodes started; exit 1 if a node sent no telemetry, else 0 (for scripts and CI).",
)
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Telemetry interval of each node, seconds.",
)
@click.option("--board", default="sim", show_default=True, help="Board definition of the virtual nodes.")
@click.option("--keep", is_flag=True, help="Keep the nodes' flash directories (their console.log) afterwards.")
@click.option(
    "--scenario",
    "scenarios",
    default=None,
    metavar="NAME[,NAME…]",
    help="Scenarios of the nodes in turn: house, solar, shop (default: house,solar,shop).",
)
@click.option(
    "--policy",
    "policy_file",
    default=None,
    metavar="FILE",
    help="Policy every node runs (.toml source, compact .json or a signed bundle): tariffs, limits, demand response.",
)
@click.option(
    "--fleet",
    default=None,
    metavar="NAME",
    help="With --policy: give the nodes this keystore fleet's identity, so `umeter policy push` reaches them.",
)
@click.option(
    "--db",
    default=None,
    metavar="FILE|URL",
    help="Store every record the nodes send in this SQLite file or postgresql:// database (once each); "
    "node flash is kept beside the file.",
)
@click.option(
    "--heap", default=None, metavar="SIZE", help="Heap of every node, e.g. 192k [the board's; more with --policy]."
)
@click.option(
    "--bus",
    "bus",
    is_flag=False,
    flag_value="all",
    default=None,
    metavar="PROTOCOLS",
    help="Simulated meters on each node's buses, read by its gateway: dlt645 (an electricity meter), cjt188 "
    "(water and gas), mbus (heat), modbus (PZEM-004T); --bus alone: all four.",
)
@click.option(
    "--commands",
    is_flag=True,
    help="Give every node a command key from the keystore, so `umeter command NODE status` reaches it.",
)
@click.option("--logs", is_flag=True, help="Show the nodes' consoles too (stderr, or a pane under the table).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node per interval, and a JSON summary.")
def command(
    nodes: int,
    broker: str | None,
    duration: float | None,
    interval: float,
    board: str,
    keep: bool,
    scenarios: str | None,
    policy_file: str | None,
    fleet: str | None,
    db: str | None,
    heap: str | None,
    bus: str | None,
    commands: bool,
    logs: bool,
    as_json: bool,
) -> None:
    """Run virtual meter nodes on the MicroPython unix port and watch their telemetry.

    Each node runs the real firmware (sim front end: a house importing, a house with solar
    exporting, a small shop) and publishes over MQTT to an embedded broker, or to --broker.
    On a terminal the table refreshes live; elsewhere one line per node per interval.
    See docs/sim.md.
    """
    compact, identity = _policy(policy_file, fleet)
    protocols = simbus.parse_protocols(bus) if bus is not None else None
    if heap is not None:
        from ..unixport import parse_heap

        parse_heap(heap)
    tty = ui.is_tty() and not as_json
    pane: collections.deque[str] = collections.deque(maxlen=8)

    def console_line(node: str, line: str) -> None:
        if tty:
            pane.append(f"{node}│ {line}")
        else:
            ui.err.print(f"{node}│ {line}", markup=False, highlight=False, soft_wrap=True)

    run = SimRun(
        nodes=nodes,
        broker_url=broker,
        telemetry_s=interval,
        board=board,
        keep=keep,
        scenarios=parse_scenarios(scenarios) if scenarios is not None else None,
        policy=compact,
        fleet=identity,
        db=db,
        heap=heap,
        bus=protocols,
        on_console=console_line if logs else None,
        commands=commands,
    )
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        run.start()
        # --duration is the nodes' time: counted from when they were started, not from before
        # start() built the .mpy firmware and the broker (~1 s on a free machine, over 4 s on a
        # loaded one, which left a `--duration 4` node no time to send its first telemetry)
        started = time.monotonic()
        where = broker or f"embedded broker mqtt://{run.host}:{run.port}"
        ui.info(f"Started {ui.plural(nodes, 'virtual node')} ({board} board) on {where}; Ctrl-C stops them.")
        for note in run.notes:
            ui.info(note)
        if compact is not None:
            ui.info(
                f"Policy {compact['n']!r} on every node ({len(compact['t'])} tariffs, {len(compact['d'])} DR rules); "
                "the grid frequency dips to 49.6 Hz from 8 s to 11 s."
            )
        if protocols:
            what = "; ".join(simbus.WHAT[p] for p in protocols)
            ui.info(
                f"Meter buses on every node: {what}; each meter read every {simbus.INTERVAL_S:g} s "
                "by the node's gateway."
            )
        if commands:
            url = broker or f"mqtt://{run.host}:{run.port}"
            ui.info(
                f"Commands: `umeter command node-01 status --broker {url}` (in another terminal; "
                "the nodes' keys are in the keystore)."
            )
            if compact is not None:
                ui.info(f"A real-time price to the nodes: `umeter policy price 0.5 --node node-01 --broker {url}`.")
        if keep or db is not None:
            ui.info(f"Node flash directories: {run.workdir}")
        if tty and not logs:
            ui.info("A node's console: umeter logs NODE (in another terminal), or run with --logs.")
        shown = broker or f"mqtt://{run.host}:{run.port}"
        _watch(run, shown, started, duration, interval, as_json, pane if logs else None)
    except KeyboardInterrupt:
        ui.info("Stopping virtual nodes…")
    except BaseException:
        run.close()  # stops every node, the broker and the consumer
        raise
    finally:
        run.stop()
    try:
        views = run.snapshot()
        silent = [v for v in views if not v.telemetry]
        seconds = time.monotonic() - started
        got = nodes - len(silent)
        ui.info(f"Stopped {ui.plural(nodes, 'node')} after {seconds:.1f} s; telemetry from {got} of {nodes}.")
        if as_json:
            summary = {
                "nodes": nodes,
                "seconds": round(seconds, 1),
                "telemetry_from": got,
                "no_telemetry": [v.node_id for v in silent],
                "errors": {v.node_id: v.error for v in views if v.error},
                "restarts": {v.node_id: v.restarts for v in views if v.restarts},
            }
            if run.consumer is not None:
                summary["db"] = run.db_summary()
            if protocols:
                summary["gateway"] = gateway_summary(run, views)
            ui.out.print(json.dumps(summary), markup=False, highlight=False, soft_wrap=True)
        elif run.consumer is not None:
            s = run.db_summary()
            per = ", ".join(f"{n} {k}" for n, k in s["records"].items())
            ui.info(
                f"Stored {sum(s['records'].values())} records in {s['db']} ({per}); "
                f"{s['duplicates']} duplicates dropped; {s['total']} records in the file."
            )
        if silent and duration is not None:
            why = "; ".join(f"{v.node_id}: {v.error or v.state}" for v in silent)
            raise DeviceError(
                f"no telemetry from {len(silent)} of {ui.plural(nodes, 'node')} in {seconds:.0f} s ({why})",
                hint="see their consoles with --logs (or --keep: console.log in each node's directory)",
            )
        if protocols:
            unread = [(v, m) for v in views for m in v.meters.values() if not m.received]
            total = sum(len(v.meters) for v in views)
            if not as_json:
                got = sum(m.received for v in views for m in v.meters.values())
                ui.info(f"Meter readings received: {got} from {total - len(unread)} of {total} meters.")
            if unread and duration is not None:
                raise _unread_error(views, unread, total, seconds)
    finally:
        run.close()


def _unread_error(views: list[NodeView], unread: list, total: int, seconds: float) -> DeviceError:
    """--bus --duration: meters that sent no reading, each node's reason once (its gateway off),
    else each meter's (why it fell silent, or still waiting)."""
    off = [v for v in views if v.gateway_on is False]
    why = [f"{v.node_id}: {v.gateway_error or 'gateway off'}" for v in off]
    why += [f"{v.node_id} {m.meter_id}: {m.why or m.state(v.gateway_on)}" for v, m in unread if v not in off]
    text = "; ".join(why[:4]) + ("; …" if len(why) > 4 else "")
    if off:
        hint = "give the nodes more heap (leave --heap out: umeter sim sizes it for the gateway)"
    else:
        hint = "see the nodes' consoles with --logs; a longer --duration gives slow meters time"
    return DeviceError(f"no reading from {len(unread)} of {total} meters in {seconds:.0f} s ({text})", hint=hint)


def _policy(path: str | None, fleet: str | None) -> tuple[dict | None, dict | None]:
    """The compact policy from --policy and the `fleet` identity from --fleet (keystore)."""
    if path is None:
        if fleet is not None:
            raise ConfigError("--fleet needs --policy", hint="give the policy the nodes run, e.g. --policy FILE.toml")
        return None, None
    from ..policy import load_any

    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"policy file {path!r} not found",
            hint=f"give a .toml policy; an example: {Path(__file__).parent.parent / 'examples' / 'demo_policy.toml'}",
        )
    compact = load_any(p)
    identity = None
    if fleet is not None:
        from ..signing import Keystore, fleet_identity

        identity = fleet_identity(Keystore().load(fleet), fleet)
    return compact, identity


def gateway_json(v: NodeView, sim: dict[str, dict] | None = None, now: float | None = None) -> dict:
    """A node's gateway as its node reports it (--bus): on (null until known), error, and a
    meter each (umeter.simbus.MeterView.to_json), with `sim`: the simulated meter's side."""
    meters = []
    for m in v.meters.values():
        d = m.to_json(v.gateway_on, now)
        if sim is not None and m.meter_id in sim:
            d["sim"] = sim[m.meter_id]
        meters.append(d)
    states = [m["state"] for m in meters]
    return {
        "on": v.gateway_on,
        "error": v.gateway_error,
        "answering": states.count("ok"),
        "failing": [m["meter"] for m in meters if m["state"] == "failing"],
        "meters": meters,
    }


def gateway_summary(run: SimRun, views: list[NodeView]) -> dict:
    """--json summary with --bus: per node its gateway (gateway_json) with each simulated meter's
    last answers (`sim.answered`), so a script can hold the readings against them."""
    out = {}
    for v in views:
        nb = run.buses.get(v.node_id)
        out[v.node_id] = gateway_json(v, nb.sim_state(answered=True) if nb is not None else None)
    return out


def json_line(v: NodeView, sim: dict[str, dict] | None = None) -> str:
    """One node as one JSON object (--json): its view, its latest telemetry as sent, and its
    last failure (`error`, null when none) with `failing` true while nothing came after it;
    with --bus its `gateway` (gateway_json)."""
    doc = {
            "node": v.node_id,
            "scenario": v.scenario.name,
            "state": v.state,
            "messages": v.messages,
            "tariff": v.tariff(),
            "relay": v.relay(),
            "policy_event": v.policy_event,
            "records": v.records,
            "error": v.error,
            "failing": v.failing(),
            "restarts": v.restarts,
            "telemetry": v.telemetry,
    }
    if v.meters:
        doc["gateway"] = gateway_json(v, sim)
    return json.dumps(doc, separators=(",", ":"))


def _watch(
    run: SimRun,
    where: str,
    started: float,
    duration: float | None,
    interval: float,
    as_json: bool = False,
    pane: collections.deque[str] | None = None,
) -> None:
    deadline = None if duration is None else started + duration
    tty = ui.is_tty() and not as_json
    noted = len(run.notes)  # the notes start() made are printed; later ones (a heap raised) as they come
    tariffs = run.policy["t"] if run.policy else None
    db = run.consumer is not None
    if tty:
        from rich.live import Live

        def table():
            logs = list(pane) if pane is not None else None
            rows = max(5, ui.out.height - run.nodes - 12 - (len(logs) + 1 if logs else 0))
            return render_table(run.snapshot(), where, started, tariffs, db, ui.out.width, logs, rows)

        with Live(table(), console=ui.out, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.25)
                for note in run.notes[noted:]:
                    live.console.print(note, markup=False, highlight=False)
                noted = len(run.notes)
                live.update(table())
        return
    next_print = time.monotonic() + max(1.0, interval)
    said: dict[tuple[str, str], tuple] = {}  # (node, meter) -> (seq, state) last printed
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.1)
        for note in run.notes[noted:]:
            ui.info(note)
        noted = len(run.notes)
        if time.monotonic() >= next_print:
            next_print += max(1.0, interval)
            for v in run.snapshot():
                if as_json:
                    nb = run.buses.get(v.node_id)
                    line = json_line(v, nb.sim_state() if nb is not None else None)
                else:
                    line = render_line(v, tariffs, db)
                ui.out.print(line, markup=False, highlight=False, soft_wrap=True)
                if as_json:
                    continue
                if v.gateway_on is False:  # one line for the node, not one per meter
                    if said.get((v.node_id, "")) != (v.gateway_error,):
                        said[(v.node_id, "")] = (v.gateway_error,)
                        ui.out.print(f"{v.node_id} {v.gateway_error}", markup=False, highlight=False, soft_wrap=True)
                    continue
                for m in v.meters.values():  # a line per meter when its reading or state changes
                    key, now = (m.seq, m.state(v.gateway_on)), (v.node_id, m.meter_id)
                    if said.get(now) != key:
                        said[now] = key
                        ui.out.print(meter_line(v, m), markup=False, highlight=False, soft_wrap=True)
