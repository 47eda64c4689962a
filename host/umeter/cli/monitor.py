"""`umeter monitor`: watch nodes' uplinks on a broker and keep them in SQLite (duplicates removed)."""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import click

from .. import ui
from ..consumer import Consumer
from ..errors import ConfigError


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


@click.command("monitor")
@click.option("--broker", "broker", default="127.0.0.1:1883", show_default=True, help="host:port of the broker.")
@click.option("--db", default="umeter.sqlite", show_default=True, help="SQLite file the records go to.")
@click.option("--prefix", default="umeter", show_default=True, help="Topic prefix of the nodes.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS broker.")
@click.option("--seconds", type=float, default=0, help="Stop after this long (0: until Ctrl-C).")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def command(broker: str, db: str, prefix: str, ca: str | None, seconds: float, as_json: bool) -> None:
    """Store every record nodes publish (profile, events) once, in order, and print it."""
    host, port = _broker(broker)

    def show(node: str, doc: dict) -> None:
        click.echo(json.dumps(doc) if as_json else line(node, doc))

    c = Consumer(db, host, port, prefix, on_record=show, tls_ca=ca)
    c.start()
    ui.info(f"Listening on {host}:{port} for {prefix}/+/… into {db}")
    t0 = time.monotonic()
    try:
        while not seconds or time.monotonic() - t0 < seconds:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        n = c.counters()
        c.close()
    ui.info(
        f"Stored {n['records']} records ({n['duplicates']} duplicates dropped, {n['lost']} lost at the nodes) in {db}."
    )
