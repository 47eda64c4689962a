"""`umeter fleet ls|show|ports|forget|health`: the fleet database (never shows secrets), and the
nodes' health asked over MQTT."""

from __future__ import annotations

import json
import time

import click
from rich.table import Table

from .. import ui
from ..errors import ConfigError, DeviceError
from ..fleet import ports
from ..inventory import Fleet
from ..keystore import Keystore


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@click.group("fleet")
def command() -> None:
    """The fleet inventory: provisioned nodes keyed by their board's unique id."""


@command.command("ls")
@click.option("--json", "as_json", is_flag=True)
def ls(as_json: bool) -> None:
    """List provisioned nodes."""
    nodes = Fleet().nodes()
    if as_json:
        click.echo(json.dumps(nodes, indent=1))
        return
    t = Table(show_edge=False)
    from ..when import tz_name

    for col in ("node", "site", "board", "unique id", "version", "status", "provisioned", "billing time"):
        t.add_column(col, no_wrap=True)
    for n in nodes:
        off = n.get("utc_offset_min")
        t.add_row(
            n["node_id"], n["site"], n["board"], n["uid"], n["version"] or "-", n["status"], _when(n["provisioned_at"]),
            "-" if off is None else tz_name(off),
        )  # fmt: skip
    _table_console().print(t)
    ui.info(f"{len(nodes)} node(s) in {Fleet().path}")


@command.command("show")
@click.argument("node")
@click.option("--json", "as_json", is_flag=True)
def show(node: str, as_json: bool) -> None:
    """One node by name or unique id (its keys stay in the keystore)."""
    n = Fleet().get(node)
    if n is None:
        raise ConfigError(f"no node {node!r} in the fleet", hint="see `umeter fleet ls`")
    n["keys"] = "in keystore" if Keystore().get(n["node_id"]) else "none"
    if as_json:
        click.echo(json.dumps(n, indent=1))
        return
    for k in (
        "node_id",
        "uid",
        "site",
        "board",
        "port",
        "serial",
        "version",
        "manifest_sha256",
        "files",
        "status",
        "keys",
    ):
        ui.out.print(f"{k:>16}  {n[k] if n[k] is not None else '-'}", markup=False)
    ui.out.print(f"{'first_seen':>16}  {_when(n['first_seen'])}", markup=False)
    ui.out.print(f"{'provisioned_at':>16}  {_when(n['provisioned_at'])}", markup=False)


@command.command("ports")
@click.option("--json", "as_json", is_flag=True)
def ports_cmd(as_json: bool) -> None:
    """Serial ports and their USB serial numbers (for `serial = ...` in an inventory)."""
    ps = ports()
    if as_json:
        click.echo(json.dumps(ps, indent=1))
        return
    for p in ps:
        ui.out.print(f"{p['port']:<20} {p['serial']:<20} {p['vid_pid']:<10} {p['description']}", markup=False)
    ui.info(f"{len(ps)} serial port(s)")


@command.command("forget")
@click.argument("node")
def forget(node: str) -> None:
    """Remove a node from the fleet database (its board may then be bound to another name)."""
    if not Fleet().forget(node):
        raise ConfigError(f"no node {node!r} in the fleet", hint="see `umeter fleet ls`")
    ui.info(f"Forgot {node}.")


def _table_console():
    """Tables at their natural width when stdout is not a terminal (rich would assume 80)."""
    import sys

    from rich.console import Console

    return ui.out if ui.is_tty() else Console(file=sys.stdout, width=240, no_color=True, highlight=False)


@command.command("health")
@click.option("--broker", default="127.0.0.1:1883", show_default=True, help="Broker URL or host:port.")
@click.option("--prefix", default="umeter", show_default=True, help="Topic prefix of the nodes.")
@click.option("--site", "sites", multiple=True, help="Only the inventory's nodes at this site (repeatable).")
@click.option("--node", "only", multiple=True, help="Only this node (repeatable).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answers.")
@click.option(
    "--low-kb", type=float, default=8.0, show_default=True, help="A heap low-water mark under this is a problem."
)
@click.option(
    "--max-skew-s",
    type=float,
    default=60.0,
    show_default=True,
    help="A node clock further than this from the host's is a problem (its freezes and demand periods).",
)
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS broker.")
@click.option("--user", help="Broker user (password: $UMETER_MQTT_PASSWORD or the keystore's host:<user>).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: each node's answer or problem.")
def health(broker, prefix, sites, only, timeout, low_kb, max_skew_s, ca, user, as_json) -> None:
    """Ask every node of the fleet (or --site, --node) for its `status` at once: heap and its
    low-water mark, task restarts, uplink, clock. Exits 1 naming the nodes that did not answer,
    refused, whose heap fell under --low-kb or whose clock is off by more than --max-skew-s."""
    from ..command import Commander
    from .monitor import _password

    fleet = Fleet()
    nodes = [n for n in fleet.nodes() if (not sites or n["site"] in sites) and (not only or n["node_id"] in only)]
    if not nodes:
        raise ConfigError(
            "no node in the fleet inventory matches" if fleet.nodes() else "the fleet inventory is empty",
            hint="see `umeter fleet ls`; nodes join it when `umeter provision` provisions them",
        )
    ks = Keystore()
    out: dict[str, dict] = {}
    with Commander(broker, prefix=prefix, keystore=ks, user=user, password=_password(user), tls_ca=ca) as c:
        sent = time.time()
        ids = {}
        for n in nodes:
            nid = n["node_id"]
            if not (ks.get(nid) or {}).get("cmd_key"):
                out[nid] = {"problem": "no command key in the keystore"}
                continue
            ids[c.send(nid, "status", expires_s=max(60, int(timeout) * 2))] = nid
        answers = c.wait(ids, timeout)
        got = time.time()
    for mid, nid in ids.items():
        a = answers.get(mid)
        if a is None:
            out[nid] = {"problem": f"no answer in {timeout:g} s"}
        elif not a.get("ok"):
            out[nid] = {"problem": f"{a.get('status', 'failed')}: {a.get('why', '?')}"}
        else:
            out[nid] = judge(a.get("result", {}), low_kb, max_skew_s, sent, got)
            off = (a.get("result", {}).get("clock") or {}).get("utc_offset_min")
            if isinstance(off, int) and not isinstance(off, bool):
                fleet.set_offset(nid, off)  # the node's own word, for `umeter export`
    bad = sorted(n for n, d in out.items() if "problem" in d)
    if as_json:
        click.echo(json.dumps({"nodes": out, "problems": bad}))
    else:
        t = Table(show_edge=False)
        cols = ("node", "site", "version", "up", "heap free", "lowest", "restarts", "link", "backlog", "clock")
        for col in (*cols, "problem"):
            t.add_column(col, no_wrap=True)
        site = {n["node_id"]: n["site"] for n in nodes}
        for nid in sorted(out):
            d = out[nid]
            r = d.get("status") or {}
            h = r.get("heap", {})
            u = r.get("uplink") or {}
            t.add_row(
                nid,
                site.get(nid, "-"),
                str(r.get("version", "-")),
                f"{r['up_s']} s" if "up_s" in r else "-",
                f"{h['free'] / 1024:.1f} KB" if h else "-",
                f"{h['low'] / 1024:.1f} KB" if h else "-",
                str(r.get("restarts", "-")),
                ("up" if (u.get("link") or {}).get("up") else "down") if u else "-",
                str((u.get("outbox") or {}).get("backlog", "-")) if u else "-",
                _clock(r.get("clock"), d.get("clock_skew_s")),
                d.get("problem", ""),
            )
        _table_console().print(t)
    if bad:
        raise DeviceError(f"{len(bad)} of {len(out)} node(s) need a look: {', '.join(bad)}", hint="see the table")
    if not as_json:
        ui.info(f"{len(out)} node(s) answered, none under {low_kb:g} KB, every clock within {max_skew_s:g} s")


def judge(r: dict, low_kb: float, max_skew_s: float, sent: float, got: float) -> dict:
    """One node's `status` answer -> {"status", "clock_skew_s" (when it says its clock),
    "problem" (when it has one)}; `sent`..`got` the host's time around the exchange."""
    out: dict = {"status": r}
    why = []
    low = r.get("heap", {}).get("low", 0)
    if low < low_kb * 1024:
        why.append(f"heap low-water mark {low / 1024:.1f} KB, under {low_kb:g} KB")
    # the node read its clock between the send and the last answer (firmware before
    # December 2026 does not say)
    clock = r.get("clock") or {}
    skew = _skew(clock.get("epoch"), sent, got)
    if skew is not None:
        out["clock_skew_s"] = skew
        if abs(skew) > max_skew_s:
            # why the network's time did not set it (firmware link/nettime.py: NTP, LoRaWAN)
            errs = [f"{src}: {e}" for src in ("ntp", "lorawan") if (e := (clock.get(src) or {}).get("error"))]
            said = f" ({'; '.join(errs)})" if errs else ""
            why.append(f"clock off by {skew:+.0f} s, more than {max_skew_s:g} s{said}")
    if why:
        out["problem"] = "; ".join(why)
    return out


def _skew(epoch, sent: float, got: float) -> float | None:
    """How far a node's clock, read while it answered, is outside the host's send..answer
    window: 0 inside it (None: no clock in the answer)."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return None
    if epoch < sent - 1:
        return round(epoch - sent)
    if epoch > got + 1:
        return round(epoch - got)
    return 0


def _clock(c: dict | None, skew: float | None) -> str:
    """The clock column: its skew and its billing time (UTC+hh:mm)."""
    if not c or skew is None:
        return "-"
    from ..when import tz_name

    return f"{skew:+.0f} s {tz_name(c.get('utc_offset_min', 0))}"
