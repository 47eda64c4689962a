"""`umeter sim`: virtual nodes on the unix port publishing to a broker, shown live."""

from __future__ import annotations

import signal
import time

import click

from .. import ui
from ..errors import DeviceError
from ..sim import NodeView, SimRun


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _main_element(t: dict) -> dict:
    els = t.get("elements") or [{}]
    return els[0]


def render_line(v: NodeView) -> str:
    """One plain line per node (pipes, CI)."""
    t = v.telemetry
    if t is None:
        return f"{v.node_id} {v.scenario.name:<6} {v.state}: no telemetry yet"
    e = _main_element(t)
    return (
        f"{v.node_id} {v.scenario.name:<6} V={_fmt(t.get('v'), '.1f')} V f={_fmt(t.get('f'), '.2f')} Hz "
        f"I={_fmt(e.get('i'), '.2f')} A P={_fmt(t.get('p'), '+.0f')} W "
        f"import={_fmt(t.get('e_imp_wh'), '.2f')} Wh export={_fmt(t.get('e_exp_wh'), '.2f')} Wh seq={t.get('seq')}"
    )


def render_table(views: list[NodeView], broker: str, started: float):
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
        ("import Wh", "right"),
        ("export Wh", "right"),
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
            _fmt(m.get("e_imp_wh"), ".2f"),
            _fmt(m.get("e_exp_wh"), ".2f"),
            str(v.messages),
            style=style,
        )
    return t


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
def command(nodes: int, broker: str | None, duration: float | None, interval: float, board: str, keep: bool) -> None:
    """Run virtual meter nodes on the MicroPython unix port and watch their telemetry.

    Each node runs the real firmware (sim front end: a house importing, a house with solar
    exporting, a small shop) and publishes over MQTT to an embedded broker, or to --broker.
    On a terminal the table refreshes live; elsewhere one line per node per interval.
    """
    run = SimRun(nodes=nodes, broker_url=broker, telemetry_s=interval, board=board, keep=keep)
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        run.start()
        where = broker or f"embedded broker mqtt://{run.host}:{run.port}"
        ui.info(f"Started {nodes} virtual nodes ({board} board) on {where}; Ctrl-C stops them.")
        if keep:
            ui.info(f"Node flash directories: {run.workdir}")
        _watch(run, where, started, duration, interval)
    except KeyboardInterrupt:
        ui.info("Stopping virtual nodes…")
    finally:
        run.stop()
    views = run.snapshot()
    got = sum(1 for v in views if v.telemetry)
    ui.info(f"Stopped {nodes} nodes after {time.monotonic() - started:.1f} s; telemetry from {got} of {nodes}.")


def _watch(run: SimRun, where: str, started: float, duration: float | None, interval: float) -> None:
    deadline = None if duration is None else started + duration
    tty = ui.is_tty()
    if tty:
        from rich.live import Live

        with Live(render_table(run.snapshot(), where, started), console=ui.out, refresh_per_second=4) as live:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.25)
                _check_alive(run)
                live.update(render_table(run.snapshot(), where, started))
        return
    next_print = time.monotonic() + max(1.0, interval)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.1)
        _check_alive(run)
        if time.monotonic() >= next_print:
            next_print += max(1.0, interval)
            for v in run.snapshot():
                ui.out.print(render_line(v), markup=False, highlight=False)


def _check_alive(run: SimRun) -> None:
    dead = run.dead_nodes()
    if dead:
        n = dead[0]
        raise DeviceError(
            f"virtual node {n.node_id} exited with code {n.exited()}:\n{n.log_tail()}",
            hint="run with --keep to inspect its flash directory",
        )
