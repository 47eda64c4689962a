"""`umeter monitor`: watch nodes' uplinks on a broker and keep them in SQLite or PostgreSQL
(duplicates removed), alone or as one member of a consumer group; `--status` shows the health
a database's consumers and nodes report."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import click

from .. import ui
from ..consumer import Consumer
from ..errors import ConfigError
from ..store import describe, open_store


def _broker(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else f"mqtt://{url}")
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(f"bad broker address {url!r}", hint="use host:port or mqtt://host:port")
    return u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883)


def line(node: str, doc: dict) -> str:
    """One readable line per stored record."""
    kind = doc.get("kind", "?")
    if kind == "event":
        what = f"{doc.get('event')} arg={doc.get('arg')} {doc.get('text', '')}".rstrip()
    elif kind == "profile":
        what = (
            f"import={doc.get('e_imp_mwh', 0) / 1e6:.3f} kWh export={doc.get('e_exp_mwh', 0) / 1e6:.3f} kWh "
            f"V={doc.get('v_avg_dv', 0) / 10:.1f} P={doc.get('p_avg_dw', 0) / 10:+.0f} W"
        )
    else:
        what = " ".join(f"{k}={v}" for k, v in doc.items() if k not in ("node", "kind", "seq", "ts", "held"))
    return f"{node} #{doc.get('seq')} {kind} ts={doc.get('ts')} {what}"


def health_line(h: dict, nodes: list[dict] | None = None) -> str:
    """The consumer's health in one line (stderr)."""
    parts = [
        h["connection"],
        f"{h['records_per_s']:.0f} rec/s",
        f"stored {h['stored']}",
        f"dup {h['duplicates']}",
        f"rejects {h['rejects']}",
        f"db {h['db_state']}",
    ]
    if h.get("pending"):
        parts.append(f"pending {h['pending']}")
    if nodes:
        newest = min(n["age_s"] for n in nodes)
        quiet = nodes[0]
        parts.append(
            f"{len(nodes)} nodes (last message {newest:.1f} s ago; quietest {quiet['node']} {quiet['age_s']:.0f} s)"
        )
    return "health: " + " · ".join(parts)


def _password(user: str | None) -> str | None:
    if user is None:
        return None
    env = os.environ.get("UMETER_MQTT_PASSWORD")
    if env:
        return env
    from ..keystore import Keystore

    ks = Keystore()
    s = ks.get(f"host:{user}")
    if s is None:
        raise ConfigError(
            f"no password for broker user {user!r} in the keystore {ks.path}",
            hint=f"run `umeter broker-config -o DIR --host-user {user}` (it creates one), or set UMETER_MQTT_PASSWORD",
        )
    return s["mqtt_password"]


def _write_health(path: Path, h: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(h) + "\n")
    os.replace(tmp, path)


def _status(db: str, as_json: bool) -> None:
    store = open_store(db)
    try:
        now = time.time()
        nodes = store.nodes()
        for n in nodes:
            n["age_s"] = round(now - n.pop("last_seen"), 1)
        doc = {
            "db": describe(db),
            "counters": store.counters(),
            "members": [dict(m, age_s=round(now - m.pop("beat"), 1)) for m in store.members()],
            "nodes": nodes,
            "rejects": [
                dict(r, head=r["head"][:64].hex(), received=round(r["received"], 3)) for r in store.rejects(limit=20)
            ],
        }
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(doc))
        return
    c = doc["counters"]
    click.echo(
        f"{doc['db']}: {c['records']} records, {c['duplicates']} duplicates dropped, {c['lost']} lost at the nodes, "
        f"{c['rejects']} rejected, {c['resend_requests']} resend requests"
    )
    for m in doc["members"]:
        h = m["health"]
        click.echo(
            f"consumer {m['id']} (group {m['group'] or '-'}), last beat {m['age_s']:.0f} s ago: {health_line(h)}"
        )
    for n in doc["nodes"]:
        gap = f" gap at {n['next_seq']}" if n["gap"] else ""
        nxt = f" next seq {n['next_seq']}" if n["next_seq"] is not None else ""
        click.echo(f"node {n['node']}: last {n['last_leaf']} {n['age_s']:.1f} s ago;{nxt}{gap} lost {n['lost']}")
    for r in doc["rejects"]:
        click.echo(f"reject {r['node']} {r['topic']}: {r['reason']}")


@click.command("monitor")
@click.option("--broker", "broker", default="127.0.0.1:1883", show_default=True, help="host:port of the broker.")
@click.option(
    "--db",
    default="umeter.sqlite",
    show_default=True,
    help="Where records go: an SQLite file, or postgresql://USER@HOST/DB (the scale-out store).",
)
@click.option("--prefix", default="umeter", show_default=True, help="Topic prefix of the nodes.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS broker.")
@click.option(
    "--group",
    metavar="NAME",
    help="Be one member of consumer group NAME (MQTT shared subscription $share/NAME/…); run one monitor per "
    "member, all with the same --db.",
)
@click.option(
    "--client-id",
    metavar="ID",
    help="Stable MQTT client id: the broker keeps this consumer's session while it is away [the --user; "
    "<group>-<hostname> with --group; else random, no kept session].",
)
@click.option(
    "--user",
    metavar="NAME",
    help="Broker user (a host user of `umeter broker-config --host-user NAME`); its password comes from "
    "$UMETER_MQTT_PASSWORD or the keystore.",
)
@click.option(
    "--gap-wait",
    type=float,
    default=None,
    help="Seconds a gap may stay open before the node is asked to resend [2; 30 with --group].",
)
@click.option("--seconds", type=float, default=0, help="Stop after this long (0: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help='One JSON record per line (health lines as {"health": …}).')
@click.option("--records/--no-records", "print_records", default=True, help="Print each stored record [yes].")
@click.option(
    "--health-every", type=float, default=10.0, show_default=True, help="Health line every N seconds (0: never)."
)
@click.option(
    "--health-file", type=click.Path(dir_okay=False, path_type=Path), help="Keep the health JSON in this file."
)
@click.option(
    "--leave",
    is_flag=True,
    help="On exit, leave the group for good: unsubscribe and store this member's queued share first (else the "
    "broker keeps queueing it a share until it comes back).",
)
@click.option(
    "--status", is_flag=True, help="Do not consume: print the database's consumers, nodes and rejects, then exit."
)
def command(
    broker: str,
    db: str,
    prefix: str,
    ca: str | None,
    group: str | None,
    client_id: str | None,
    user: str | None,
    gap_wait: float | None,
    seconds: float,
    as_json: bool,
    print_records: bool,
    health_every: float,
    health_file: Path | None,
    leave: bool,
    status: bool,
) -> None:
    """Store every record nodes publish (profile, events) once, and print it.

    Malformed messages go to the database's `rejects` table and the monitor goes on; a health
    line (connection, records/s, rejects, database, last message per node) comes every
    --health-every seconds. With PostgreSQL, several monitors with the same --group share the
    load (docs/scale.md).
    """
    if status:
        _status(db, as_json)
        return
    host, port = _broker(broker)

    def show(node: str, doc: dict) -> None:
        click.echo(json.dumps(doc) if as_json else line(node, doc))

    c = Consumer(
        db,
        host,
        port,
        prefix,
        on_record=show if print_records else None,
        tls_ca=ca,
        group=group,
        client_id=client_id,
        username=user,
        password=_password(user),
        gap_wait=gap_wait,
    )
    try:
        c.start()
    except BaseException:
        c.close()
        raise
    # A service manager stops us with SIGTERM: store and acknowledge what arrived, as on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    share = f"$share/{group}/" if group else ""
    ui.info(f"Listening on {host}:{port} for {share}{prefix}/+/… into {describe(db)} as {c.client_id}")
    t0 = time.monotonic()
    next_health = t0 + health_every if health_every > 0 else float("inf")
    next_file = t0
    try:
        while not seconds or time.monotonic() - t0 < seconds:
            time.sleep(0.2)
            now = time.monotonic()
            if health_file is not None and now >= next_file:
                next_file = now + 2.0
                _write_health(health_file, c.health())
            if now >= next_health:
                next_health = now + health_every
                h = c.health()
                try:
                    nodes = c.node_health()
                except Exception:  # the database is down: the line says so already
                    nodes = []
                if as_json:
                    click.echo(json.dumps({"health": dict(h, nodes=len(nodes), quietest=nodes[:5])}))
                else:
                    ui.info(health_line(h, nodes))
    except KeyboardInterrupt:
        pass
    finally:
        if leave:
            ui.info(f"Leaving group {group or '-'}: storing what the broker still holds for {c.client_id}…")
            c.leave()
        c.stop()
        h = c.health()
        if health_file is not None:
            _write_health(health_file, h)
        try:
            n = c.counters()
        finally:
            c.close()
    ui.info(
        f"Stored {n['records']} records ({n['duplicates']} duplicates dropped, {n['lost']} lost at the nodes, "
        f"{n['rejects']} rejected) in {describe(db)}."
    )
