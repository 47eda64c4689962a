"""`umeter sim`: virtual nodes on the unix port publishing to a broker, shown live."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import click

from .. import ui
from ..errors import ConfigError, DeviceError
from ..sim import NodeView, SimRun, parse_scenarios


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


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
    """One plain line per node (pipes, CI): the table's fields as key=value."""
    t = v.telemetry
    if t is None:
        return f"{v.node_id} {v.scenario.name:<6} {v.state}: no telemetry yet"
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
    return line + f" seq={t.get('seq')}"


def render_table(
    views: list[NodeView], broker: str, started: float, tariffs: list[str] | None = None, db: bool = False
):
    from rich.table import Table

    t = Table(
        title=f"umeter sim — {len(views)} virtual nodes on {broker} — {time.monotonic() - started:4.0f} s",
        title_justify="left",
    )
    for col, just in (
        ("node", "left"),
        ("scenario", "left"),
        ("state", "left"),
        ("V", "right"),
        ("f Hz", "right"),
        ("I A", "right"),
        ("P W", "right"),
        ("PF", "right"),
        ("Q var", "right"),
        ("import Wh", "right"),
        ("export Wh", "right"),
        ("tariff", "left"),
        ("relay", "left"),
        *((("policy event", "left"),) if tariffs else ()),
        *((("records", "right"),) if db else ()),
        ("msgs", "right"),
    ):
        t.add_column(col, justify=just)
    now = time.monotonic()
    for v in views:
        m = v.telemetry or {}
        e = _main_element(m) if m else {}
        p = m.get("p")
        style = "green" if (p or 0) < 0 else None
        age = f" ({now - v.received:.0f}s ago)" if v.telemetry and now - v.received > 3 else ""
        t.add_row(
            v.node_id,
            v.scenario.name,
            v.state + age,
            _fmt(m.get("v"), ".1f"),
            _fmt(m.get("f"), ".2f"),
            _fmt(e.get("i"), ".2f"),
            _fmt(p, "+.0f"),
            _fmt(e.get("pf"), ".3f"),
            _fmt(e.get("q"), "+.0f"),
            _fmt(m.get("e_imp_wh"), ".2f"),
            _fmt(m.get("e_exp_wh"), ".2f"),
            _tariff(v, tariffs) or "—",
            _relay(v) or "—",
            *((_event(v),) if tariffs else ()),
            *((str(v.records),) if db else ()),
            str(v.messages),
            style="red" if _relay(v) == "OFF" else style,
        )
    return t


def _event(v: NodeView) -> str:
    e = v.policy_event
    if not e:
        return "—"
    ago = time.time() - e.get("t", 0)
    return f"{e.get('event')} ({ago:.0f}s ago)" if ago >= 1 else str(e.get("event"))


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
    help="Stop after S seconds and exit 0 (for scripts and CI).",
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
    as_json: bool,
) -> None:
    """Run virtual meter nodes on the MicroPython unix port and watch their telemetry.

    Each node runs the real firmware (sim front end: a house importing, a house with solar
    exporting, a small shop) and publishes over MQTT to an embedded broker, or to --broker.
    On a terminal the table refreshes live; elsewhere one line per node per interval.
    See docs/sim.md.
    """
    compact, identity = _policy(policy_file, fleet)
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
    )
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        run.start()
        where = broker or f"embedded broker mqtt://{run.host}:{run.port}"
        ui.info(f"Started {nodes} virtual nodes ({board} board) on {where}; Ctrl-C stops them.")
        for note in run.notes:
            ui.info(note)
        if compact is not None:
            ui.info(
                f"Policy {compact['n']!r} on every node ({len(compact['t'])} tariffs, {len(compact['d'])} DR rules); "
                "the grid frequency dips to 49.6 Hz from 8 s to 11 s."
            )
        if keep or db is not None:
            ui.info(f"Node flash directories: {run.workdir}")
        _watch(run, where, started, duration, interval, as_json)
    except KeyboardInterrupt:
        ui.info("Stopping virtual nodes…")
    except BaseException:
        run.close()  # stops every node, the broker and the consumer
        raise
    finally:
        run.stop()
    try:
        views = run.snapshot()
        got = sum(1 for v in views if v.telemetry)
        ui.info(f"Stopped {nodes} nodes after {time.monotonic() - started:.1f} s; telemetry from {got} of {nodes}.")
        if as_json:
            summary = {"nodes": nodes, "seconds": round(time.monotonic() - started, 1), "telemetry_from": got}
            if run.consumer is not None:
                summary["db"] = run.db_summary()
            ui.out.print(json.dumps(summary), markup=False, highlight=False, soft_wrap=True)
        elif run.consumer is not None:
            s = run.db_summary()
            per = ", ".join(f"{n} {k}" for n, k in s["records"].items())
            ui.info(
                f"Stored {sum(s['records'].values())} records in {s['db']} ({per}); "
                f"{s['duplicates']} duplicates dropped; {s['total']} records in the file."
            )
    finally:
        run.close()


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


def json_line(v: NodeView) -> str:
    """One node as one JSON object (--json): its view and its latest telemetry as sent."""
    return json.dumps(
        {
            "node": v.node_id,
            "scenario": v.scenario.name,
            "state": v.state,
            "messages": v.messages,
            "tariff": v.tariff(),
            "relay": v.relay(),
            "policy_event": v.policy_event,
            "records": v.records,
            "telemetry": v.telemetry,
        },
        separators=(",", ":"),
    )


def _watch(
    run: SimRun, where: str, started: float, duration: float | None, interval: float, as_json: bool = False
) -> None:
    deadline = None if duration is None else started + duration
    tty = ui.is_tty() and not as_json
    tariffs = run.policy["t"] if run.policy else None
    db = run.consumer is not None
    if tty:
        from rich.live import Live

        def table():
            return render_table(run.snapshot(), where, started, tariffs, db)

        with Live(table(), console=ui.out, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.25)
                _check_alive(run)
                live.update(table())
        return
    next_print = time.monotonic() + max(1.0, interval)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.1)
        _check_alive(run)
        if time.monotonic() >= next_print:
            next_print += max(1.0, interval)
            for v in run.snapshot():
                line = json_line(v) if as_json else render_line(v, tariffs, db)
                ui.out.print(line, markup=False, highlight=False, soft_wrap=True)


def _check_alive(run: SimRun) -> None:
    dead = run.dead_nodes()
    if dead:
        n = dead[0]
        raise DeviceError(
            f"virtual node {n.node_id} exited with code {n.exited()}:\n{n.log_tail()}",
            hint="run with --keep to inspect its flash directory",
        )
