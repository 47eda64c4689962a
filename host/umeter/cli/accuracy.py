"""`umeter accuracy`: IEC 62053 test points through the firmware on the unix port."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import accuracy as acc
from .. import ui, unixport
from ..errors import ConfigError, DeviceError
from ..paths import check_output


def load_board(name: str) -> dict:
    """A board by name (boards/NAME.json) or by path to a JSON file."""
    p = Path(name)
    if not (p.suffix == ".json" and p.exists()):
        p = unixport.boards_dir() / f"{name}.json"
    if not p.exists():
        names = sorted(x.stem for x in unixport.boards_dir().glob("*.json"))
        raise ConfigError(f"unknown board {name!r}", hint="boards: " + ", ".join(names))
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})", hint="fix the board definition") from None


def _fmt_err(r: acc.Result) -> str:
    return "—" if r.error_pct is None else f"{r.error_pct:+.3f}"


def _fmt_lim(r: acc.Result) -> str:
    return "—" if r.point.limit is None else f"±{r.point.limit:g} %"


HEAD = "{:11s} {:18s} {:>6s} {:>11s} {:>11s} {:4s} {:>8s} {:>7s}  {}".format(
    "point", "group", "% In", "expected", "measured", "unit", "error %", "limit", "result"
)


def row(r: acc.Result) -> str:
    """One table row: expected and measured in W (var for reactive points), error and limit in %."""
    unit = "var" if r.point.quantity == "reactive" else "W"
    mark = "ok" if r.passed else "FAIL"
    return (
        f"{r.point.id:11s} {r.point.group:18s} {r.point.i_pct:6g} {r.expected:11.3f} {r.measured:11.3f} {unit:4s}"
        f" {_fmt_err(r):>8s} {_fmt_lim(r):>7s}  {mark} {r.note}"
    ).rstrip()


PLOT_FORMATS = (".png", ".svg", ".pdf")


@click.command("accuracy")
@click.option("--board", default="pico_w", show_default=True, help="Board definition (name or .json path).")
@click.option("--enob", type=float, default=8.7, show_default=True, help="Effective bits of the simulated ADC.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the simulated noise.")
@click.option("--quick", is_flag=True, help="A short set of 13 points instead of all.")
@click.option("--point", "only", multiple=True, help="Run only this point id (repeatable; see --list).")
@click.option("--list", "list_", is_flag=True, help="List the test points and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (conditions, every point, failures).")
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Write the type-test report plot (.png, .svg, .pdf)."
)
@click.option(
    "--rate-error",
    "rate_error",
    type=float,
    default=0.0,
    show_default=True,
    metavar="PPM",
    help="Run the simulated sampler this many ppm off its nominal rate (the meter measures the real one).",
)
@click.option(
    "--timebase",
    type=click.Choice(["measured", "fixed"]),
    default="measured",
    show_default=True,
    help="The meter's timebase: measured from the sampler's timestamps, or the nominal rate taken on trust.",
)
def command(board, enob, seed, quick, only, list_, as_json, plot_path, rate_error, timebase) -> None:
    """Run the IEC 62053-22 (0.2S) / 62053-23 (class 2) test points on the simulated front end.

    Rows print as the points finish. Exits 1 when a point is outside its class limit.
    """
    if list_:
        for p in acc.points(quick):
            lim = "registers / none" if p.limit is None else f"±{p.limit:g} %"
            click.echo(f"{p.id:11s} {p.quantity:8s} {p.i_pct:6g} % In  {p.group:18s} {lim}")
        return
    if plot_path:
        check_output(plot_path, "--plot", PLOT_FORMATS)  # before any point runs, not after 16 s
    b = load_board(board)
    bar = None
    if as_json and ui.err.is_terminal and ui.state.verbose >= 0:
        from rich.progress import Progress

        bar = Progress(console=ui.err, transient=True)
        task = bar.add_task("accuracy points", total=None)
        bar.start()
    elif not as_json:
        click.echo(HEAD)

    def progress(done: int, total: int, r: acc.Result) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total, description=f"{r.point.id}")
        elif not as_json:
            click.echo(row(r))  # the table grows as the run goes: progress on a 16-s run

    try:
        rep = acc.run(
            b,
            enob=enob,
            seed=seed,
            quick=quick,
            only=list(only) or None,
            rate_error_ppm=rate_error,
            timebase=timebase,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
    else:
        worst = max((abs(r.error_pct) / r.point.limit for r in rep.results if r.point.limit), default=0.0)
        n = len(rep.results)
        ui.info(
            f"{ui.plural(n, 'point')} on board {rep.board} (sim, ENOB {enob:g}, seed {seed}): "
            f"{n - len(rep.failures())} within limits; worst error {100 * worst:.0f} % of its limit."
        )
        if rate_error or timebase != "measured":
            ui.info(
                f"Sampler {rep.rate_true:.3f} S/s for a nominal {rep.rate_nominal:g} ({rate_error:+g} ppm); the meter "
                f"{'measured' if timebase == 'measured' else 'took'} {rep.rate_measured:.3f} "
                f"({rep.rate_measured_ppm:+.1f} ppm from the true rate)."
            )
    if plot_path:
        acc.plot(rep, plot_path)
        ui.info(f"Wrote the type-test simulation report to {plot_path}.")
    if not rep.passed:
        ids = ", ".join(r.point.id for r in rep.failures())
        where = 'the "failures" list of the JSON' if as_json else "the FAIL rows above"
        raise DeviceError(f"{len(rep.failures())} point(s) outside the class limit: {ids}", hint=f"see {where}")
