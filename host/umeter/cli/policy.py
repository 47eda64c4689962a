"""`umeter policy`: validate, diff, sign and push policies; keys; campaign status; a fleet simulator."""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from .. import ui
from ..campaign import CampaignDB, CampaignSpec, MqttTransport, Report, parse_pct, run
from ..errors import ConfigError, PolicyError
from ..policy import compact_bytes, diff, load_any, policy_bundle
from ..signing import Keystore, fleet_identity, make_target, read_envelope
from ..when import parse_duration, parse_when


def target_options(f):
    f = click.option("--all", "all_nodes", is_flag=True, help="Target the whole fleet.")(f)
    f = click.option("--group", "groups", multiple=True, help="Target a group (repeatable).")(f)
    f = click.option("--node", "nodes", multiple=True, help="Target a node id (repeatable).")(f)
    return f


def sign_options(f):
    f = click.option("--keystore", type=click.Path(path_type=Path), help="Key directory ($UMETER_KEYSTORE).")(f)
    f = click.option("--campaign", help="Campaign id recorded in the manifest.")(f)
    f = click.option("--expires", default="7d", show_default=True, help="Validity, e.g. 12h or 30d.")(f)
    f = click.option("--version", "version", type=int, required=True, help="Bundle version (strictly increasing).")(f)
    f = click.option("--fleet", required=True, help="Fleet name (selects the key).")(f)
    return f


def push_options(f=None, *, timeout: float = 60.0):
    if f is None:
        return lambda g: push_options(g, timeout=timeout)
    f = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(f)
    f = click.option("--db", type=click.Path(path_type=Path), help="Campaign database ($UMETER_FLEET_DB).")(f)
    f = click.option("--id", "cid", help="Campaign id (default: new).")(f)
    f = click.option("--timeout", default=timeout, show_default=True, help="Seconds to wait for a stage's results.")(f)
    f = click.option("--halt-on-failures", "halt", default="2%", show_default=True, help="Failure share that halts.")(f)
    f = click.option("--batch", default=100, show_default=True, help="Nodes per batch after the canary.")(f)
    f = click.option("--canary", default="5%", show_default=True, help="Share of nodes in the first stage.")(f)
    f = click.option("--prefix", default="umeter", show_default=True, help="MQTT topic prefix.")(f)
    f = click.option("--broker", required=True, help="Broker URL, e.g. mqtt://127.0.0.1:1883.")(f)
    f = click.option("--fleet-nodes", is_flag=True, help="Push to every node in the fleet inventory.")(f)
    f = click.option("--site", "sites", multiple=True, help="Push to the inventory's nodes at this site (repeatable).")(
        f
    )
    f = click.option(
        "--nodes-file", type=click.Path(exists=True, path_type=Path), help="Node ids to push to, one per line."
    )(f)
    f = click.option("--node", "nodes", multiple=True, help="Node id to push to (repeatable).")(f)
    return f


def _nodes(nodes: tuple[str, ...], nodes_file: Path | None, sites=(), fleet_nodes=False, db=None) -> list[str]:
    from ..campaign import inventory_nodes

    out = list(nodes)
    if nodes_file:
        out += [ln.strip() for ln in nodes_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if sites or fleet_nodes:
        out += [n for n in inventory_nodes(db, list(sites) or None) if n not in out]
    if not out:
        raise ConfigError(
            "no nodes to push to", hint="give --node ID, --nodes-file FILE, --site SITE or --fleet-nodes (inventory)"
        )
    return out


def print_report(rep: Report, as_json: bool, db: CampaignDB) -> None:
    if as_json:
        from dataclasses import asdict

        d = asdict(rep)
        d["nodes_detail"] = db.results(rep.id)
        ui.out.print_json(json.dumps(d))
    else:
        ui.out.print(rep.line(), markup=False)
        for why, n in sorted(rep.reasons.items(), key=lambda x: -x[1]):
            ui.out.print(f"  {n} × {why}", markup=False)
    if rep.state == "halted":
        raise PolicyError(
            f"campaign {rep.id} halted: {rep.failed + rep.timeout} failures",
            hint=f"inspect with `umeter policy status {rep.id}`, resume with `umeter policy resume {rep.id} --force`",
        )
    bad = rep.failed + rep.timeout
    if bad:  # finished (e.g. resumed with --force) but not everywhere: a script must see it
        raise PolicyError(
            f"campaign {rep.id} {rep.state} with {bad} of {ui.plural(rep.nodes, 'node')} failed or timed out",
            hint=f"see which and why: `umeter policy status {rep.id}`",
        )


def push_bundle(
    kind: str,
    bundle_path: Path,
    nodes,
    nodes_file,
    broker,
    prefix,
    canary,
    batch,
    halt,
    timeout,
    cid,
    db_path,
    as_json,
    sites=(),
    fleet_nodes=False,
):
    bundle = bundle_path.read_bytes()
    man, _, _ = read_envelope(bundle)
    spec = CampaignSpec(
        kind,
        _nodes(nodes, nodes_file, sites, fleet_nodes, db_path),
        canary_pct=parse_pct(canary),
        batch=batch,
        halt_pct=parse_pct(halt),
        stage_timeout_s=timeout,
        prefix=prefix,
    )
    if cid:
        spec.id = cid
    elif man.get("campaign"):
        spec.id = man["campaign"]
    db = CampaignDB(db_path)
    db.create(spec, bundle)
    ui.info(f"campaign {spec.id}: {kind} v{man['version']} to {len(spec.nodes)} nodes (state in {db.path})")
    _run(db, spec.id, broker, prefix, as_json, force=False)


def _run(db: CampaignDB, cid: str, broker: str, prefix: str, as_json: bool, force: bool) -> None:
    with MqttTransport(broker, prefix) as t:
        try:
            rep = run(db, cid, t, progress=ui.info, force=force)
        except KeyboardInterrupt:
            db.set_state(cid, "paused")
            raise ConfigError(f"campaign {cid} paused", hint=f"resume with `umeter policy resume {cid}`") from None
    print_report(rep, as_json, db)


@click.group("policy")
def command() -> None:
    """Policies: validate, diff, sign and push them in staged campaigns; real-time prices and DR events."""


@command.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the compact policy as JSON.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the compact policy (one file only).")
def validate_cmd(files: tuple[Path, ...], as_json: bool, output: Path | None) -> None:
    """Check policy files (TOML source, compact JSON or bundle) with the node's own schema."""
    for f in files:
        c = load_any(f)
        if as_json:
            ui.out.print_json(json.dumps(c))
        else:
            n = len(compact_bytes(c))
            ui.out.print(
                f"{f}: ok — {c['n']!r}, {len(c['t'])} tariffs, {len(c['s'])} seasons, {len(c['l'])} limits, "
                f"{len(c['d'])} DR rules; {n} bytes on the node",
                markup=False,
            )
    if output:
        if len(files) != 1:
            raise ConfigError("-o takes one input file", hint="validate the others separately")
        output.write_bytes(compact_bytes(load_any(files[0])))


@command.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def diff_cmd(old: Path, new: Path, as_json: bool) -> None:
    """What changes between two policies (sources, compact files or bundles)."""
    d = diff(load_any(old), load_any(new))
    if as_json:
        ui.out.print_json(json.dumps([{"key": k, "old": a, "new": b} for k, a, b in d]))
        return
    if not d:
        ui.out.print("no difference", markup=False)
    for k, a, b in d:
        ui.out.print(f"{k}: {a if a is not None else '—'}  ->  {b if b is not None else '—'}", markup=False)


@command.command("keygen")
@click.argument("fleet")
@click.option("--keystore", type=click.Path(path_type=Path))
@click.option("--group", "groups", multiple=True, help="Groups for the printed node identity.")
def keygen_cmd(fleet: str, keystore: Path | None, groups: tuple[str, ...]) -> None:
    """Create the fleet's Ed25519 signing key (mode 0600) and print the nodes' `fleet` config."""
    ks = Keystore(keystore)
    key = ks.create(fleet)
    ui.info(f"Wrote {ks.key_path(fleet)} (mode 0600). Back it up: it signs for every node.")
    ui.out.print_json(json.dumps(fleet_identity(key, fleet, list(groups))))


@command.command("identity")
@click.argument("fleet")
@click.option("--keystore", type=click.Path(path_type=Path))
@click.option("--group", "groups", multiple=True)
def identity_cmd(fleet: str, keystore: Path | None, groups: tuple[str, ...]) -> None:
    """Print the `fleet` block of a node's config.json (public key only)."""
    ui.out.print_json(json.dumps(fleet_identity(Keystore(keystore).load(fleet), fleet, list(groups))))


@command.command("sign")
@click.argument("source", type=click.Path(path_type=Path))
@sign_options
@target_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Bundle file to write.")
@click.option(
    "--move-billing-time",
    "move",
    is_flag=True,
    help="Nodes billing in another time move to the policy's utc_offset_min (their freezes and demand "
    "periods with it); without it they refuse the policy.",
)
def sign_cmd(source, fleet, version, expires, campaign, keystore, nodes, groups, all_nodes, output, move) -> None:
    """Compile and sign a policy for nodes, groups or the whole fleet.

    A node refuses a policy whose utc_offset_min is not the time it bills in (its tariff hours
    and its freezes would disagree). --move-billing-time signs one that moves them there: each
    node bills in the policy's time from when it applies it (the day in progress ends at the
    new midnight: longer moved west, shorter moved east) and at every start after.
    """
    c = load_any(source)
    key = Keystore(keystore).load(fleet)
    env = policy_bundle(
        key,
        fleet,
        version,
        c,
        make_target(list(nodes), list(groups), all_nodes),
        expires_s=parse_duration(expires),
        campaign=campaign,
        billing_tz=c["tz"] if move else None,
    )
    output.write_bytes(env)
    ui.out.print(f"Signed policy {c['n']!r} v{version} for fleet {fleet} -> {output} ({len(env)} bytes).", markup=False)
    if move:
        from ..when import tz_name

        ui.info(f"nodes that apply it bill in {tz_name(c['tz'])} from then on (--move-billing-time)")


@command.command("push")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@push_options
def push_cmd(
    bundle, nodes, nodes_file, sites, fleet_nodes, broker, prefix, canary, batch, halt, timeout, cid, db, as_json
):
    """Push a signed policy bundle in stages: canary, then batches; halt on failures."""
    push_bundle("policy", bundle, nodes, nodes_file, broker, prefix, canary, batch, halt, timeout, cid, db, as_json,
                sites, fleet_nodes)  # fmt: skip


@command.command("resume")
@click.argument("cid")
@click.option("--broker", required=True)
@click.option("--db", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Resume a halted campaign (and stop halting it).")
@click.option("--json", "as_json", is_flag=True)
def resume_cmd(cid: str, broker: str, db: Path | None, force: bool, as_json: bool) -> None:
    """Resume a paused or halted campaign (policy or firmware) from its saved state."""
    d = CampaignDB(db)
    spec, _, _, _ = d.get(cid)
    _run(d, cid, broker, spec.prefix, as_json, force)


@command.command("status")
@click.argument("cid", required=False)
@click.option("--db", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def status_cmd(cid: str | None, db: Path | None, as_json: bool) -> None:
    """List campaigns, or one campaign's per-node results."""
    d = CampaignDB(db)
    rows = d.results(cid) if cid else d.list()
    if cid:
        d.get(cid)
    if as_json:
        ui.out.print_json(json.dumps(rows))
        return
    for r in rows:
        if cid:
            ui.out.print(
                f"{r['node']} stage {r['stage']}: {r['state']} {r['status'] or ''} {r['why'] or ''}".rstrip(),
                markup=False,
            )
        else:
            ui.out.print(f"{r['id']} {r['kind']} v{r['version']} {r['state']}", markup=False)


@command.command("simulate")
@click.option("--broker", required=True)
@click.option("--nodes", "n", default=1000, show_default=True, help="Simulated nodes.")
@click.option("--fleet", required=True)
@click.option("--group", "groups", multiple=True)
@click.option("--keystore", type=click.Path(path_type=Path))
@click.option("--faulty", default=0.0, help="Share of nodes (0..1) whose new firmware fails its health check.")
@click.option("--list", "list_file", type=click.Path(path_type=Path), help="Write the node ids to this file.")
def simulate_cmd(broker, n, fleet, groups, keystore, faulty, list_file) -> None:
    """Run N simulated node control planes (the firmware's policy/OTA code) until Ctrl-C."""
    from ..fleetsim import FleetSim

    ident = fleet_identity(Keystore(keystore).load(fleet), fleet, list(groups))
    ids = [f"sim-{i:05d}" for i in range(1, n + 1)]
    bad = set(ids[:: max(1, round(1 / faulty))]) if faulty > 0 else set()
    with (
        tempfile.TemporaryDirectory(prefix="umeter-fleetsim-") as root,
        FleetSim(n, broker, ident, root, faulty=bad) as sim,
    ):
        if list_file:
            list_file.write_text("\n".join(sim.node_ids) + "\n")
        ui.info(f"{n} simulated nodes on {broker} ({len(bad)} with failing firmware); Ctrl-C to stop")
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        try:
            while True:
                time.sleep(5)
                ui.info(f"received {sim.received}, answered {sim.sent}: {dict(sim.statuses)}")
        except KeyboardInterrupt:
            pass


def frame_options(f):
    """`umeter policy price | event | cancel`: the nodes, and MQTT or a LoRaWAN downlink queue."""
    f = click.option("--json", "as_json", is_flag=True, help="Print the answers (or downlinks) as JSON.")(f)
    f = click.option("--fport", type=int, default=10, show_default=True, help="LoRaWAN port (lora.policy_fport).")(f)
    f = click.option(
        "--lora", is_flag=True, help="Print the frames for a LoRaWAN network server's downlink queue; send nothing."
    )(f)
    f = click.option("--user", help="Broker user (password: $UMETER_MQTT_PASSWORD or the keystore's host:<user>).")(f)
    f = click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS broker.")(f)
    f = click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for answers.")(f)
    f = click.option(
        "--keystore", type=click.Path(dir_okay=False, path_type=Path), help="Keystore file (default: $UMETER_HOME's)."
    )(f)
    f = click.option("--key", "key_hex", help="The node's cmd_key (hex); default: the keystore's.")(f)
    f = click.option("--prefix", default="umeter", show_default=True, help="MQTT topic prefix.")(f)
    f = click.option("--broker", default="127.0.0.1:1883", show_default=True, help="Broker URL or host:port.")(f)
    f = click.option("--fleet-nodes", is_flag=True, help="Every node in the fleet inventory.")(f)
    f = click.option("--site", "sites", multiple=True, help="The inventory's nodes at this site (repeatable).")(f)
    f = click.option("--nodes-file", type=click.Path(exists=True, path_type=Path), help="Node ids, one per line.")(f)
    f = click.option("--node", "nodes", multiple=True, help="Node id (repeatable).")(f)
    return f


def _frames(change, nodes, nodes_file, sites, fleet_nodes, broker, prefix, key_hex, keystore, timeout, ca, user,
            lora, fport, as_json) -> None:  # fmt: skip
    from .. import dr
    from ..keystore import Keystore as NodeKeys
    from .monitor import _password

    targets = _nodes(nodes, nodes_file, sites, fleet_nodes)
    if key_hex and len(targets) > 1:
        raise ConfigError("--key is one node's key, and there are several nodes", hint="leave it to the keystore")
    ks = NodeKeys(keystore)
    if lora:
        out = dr.downlinks(targets, change, keystore=ks, key_hex=key_hex, fport=fport)
        if as_json:
            keys = ("node", "fport", "counter", "hex", "base64")
            click.echo(json.dumps([{k: getattr(d, k) for k in keys} for d in out]))
        else:
            ui.info(f"{change.describe()}: queue these as downlinks on port {fport}")
            for d in out:
                ui.out.print(f"{d.node} counter {d.counter}: {d.hex} (base64 {d.base64})", markup=False)
        return
    ui.info(f"{change.describe()} to {ui.plural(len(targets), 'node')}")
    answers = dr.send(
        broker, targets, change, prefix=prefix, keystore=ks, key_hex=key_hex, timeout=timeout,
        user=user, password=_password(user), tls_ca=ca, progress=ui.info,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(answers))
    else:
        for n, a in answers.items():
            if a is not None and dr.verdict(a, change, timeout) is None:
                ui.out.print(f"{n}: {dr.took(a, change)}", markup=False)
    dr.check(answers, change, timeout)


@command.command("price")
@click.argument("price", type=float)
@click.option("--valid", default="1h", show_default=True, help="How long it is in force, whole minutes: 30m, 2h.")
@frame_options
def price_cmd(price, valid, **kw) -> None:
    """Push a real-time PRICE (currency per kWh) to nodes in a LoRa-sized frame.

    \b
    The node's policy uses it instead of its tariff's price while it is valid (capped at the
    policy's realtime_max_s); a `price_above` DR rule sheds on it. Over MQTT each node answers;
    with --lora the frames are printed for the network server's downlink queue.
    """
    from .. import dr

    _frames(dr.price(price, parse_duration(valid)), **kw)


@command.command("event")
@click.option("--start", default="now", show_default=True, help="now, +15m, UNIX seconds or an ISO time.")
@click.option("--duration", required=True, help="How long it sheds, up to 18h: 30m, 2h.")
@click.option("--rule", type=int, help="Only the policy's dr rule at this index (default: every `event` rule).")
@frame_options
def event_cmd(start, duration, rule, **kw) -> None:
    """Push a demand-response event to nodes in a LoRa-sized frame.

    The policy's DR rules with trigger `event` shed from --start for --duration. A node takes
    an event that starts at most a day ahead and ended at most an hour ago.
    """
    from .. import dr

    _frames(dr.event(parse_when(start), parse_duration(duration), rule), **kw)


@command.command("cancel")
@frame_options
def cancel_cmd(**kw) -> None:
    """End every pushed demand-response event on nodes now."""
    from .. import dr

    _frames(dr.cancel(), **kw)
