"""`umeter command`: one authenticated command to one node, and its answer."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import ui
from ..command import OPS, parse_args, send


def _human(op: str, node: str, r: dict) -> str:
    if op == "status":
        h = r.get("heap", {})
        kb = "free {:.1f} KB (lowest since boot {:.1f} KB) of {:.1f} KB".format(
            h.get("free", 0) / 1024, h.get("low", 0) / 1024, (h.get("free", 0) + h.get("alloc", 0)) / 1024
        )
        lines = [
            f"node {node}: v{r.get('version')}, up {r.get('up_s', 0)} s, last reset: {r.get('reset')}"
            + (" (safe configuration)" if r.get("safe") else ""),
            f"heap: {kb}",
            "tasks: "
            + (
                ", ".join(
                    f"{name} {rs} restart(s)" + (f" ({err})" if err else "")
                    for name, (rs, _stalls, err) in sorted(r.get("tasks", {}).items())
                )
                or "-"
            ),
            "meter: {gaps} gaps, {lost_sets} sets lost, {overruns} overruns".format(**r.get("meter", {})),
        ]
        c = r.get("clock")
        if c:
            lines.append(_clock_line(c))
        u = r.get("uplink")
        if u:
            lg, ob = u.get("log", {}), u.get("outbox") or {}
            lines.append(
                f"uplink: log {lg.get('records')} records (seq {lg.get('first_seq')}..{lg.get('last_seq')}), "
                f"backlog {ob.get('backlog', '-')}, link {'up' if (u.get('link') or {}).get('up') else 'down'}"
            )
            lo = u.get("lora")
            if lo:
                lines.append(_lora_line(lo))
        return "\n".join(lines)
    return f"node {node}: {op} done: {json.dumps(r, sort_keys=True)}"


def _lora_line(lo: dict) -> str:
    """status's LoRaWAN: the session, the frames the network took, today's airtime against its
    budget, what went wrong."""
    line = (
        f"lora: {'joined' if lo.get('joined') else 'not joined'}, acked to seq {lo.get('acked')}, "
        f"{lo.get('sent', 0)} sent, {lo.get('nacks', 0)} unacknowledged, "
        f"airtime {lo.get('airtime_ms', 0)} of {lo.get('budget_ms', 0)} ms today"
    )
    bad = {k: lo.get(k, 0) for k in ("failures", "busy", "noise", "reboots", "unreadable") if lo.get(k)}
    if bad:
        line += " (" + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")"
    if lo.get("error"):
        line += f", last error: {lo['error']}"
    return line


def _clock_line(c: dict) -> str:
    """status's clock: the node's time (UTC), its offset from the host's now, its billing time
    and its last sync from the network (NTP on a Wi-Fi node, DeviceTimeReq on a LoRaWAN one) or
    why that failed."""
    import time

    from ..when import tz_name

    ep = c.get("epoch", 0)
    off = c.get("utc_offset_min", 0)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ep))
    line = f"clock: {when} ({ep - time.time():+.0f} s from this host), billing time {tz_name(off)}"
    for src in ("ntp", "lorawan"):  # the network sources that set it (firmware link/nettime.py)
        sync = c.get(src)
        if sync:
            at = sync.get("at")
            line += f", {src}: last sync {ep - at} s ago" if at else f", {src}: never synced"
            if sync.get("error"):
                line += f" (last try: {sync['error']})"
    return line


@click.command("command", context_settings={"ignore_unknown_options": False})
@click.argument("node")
@click.argument("op", type=click.Choice(list(OPS)))
@click.argument("args", nargs=-1)
@click.option("--broker", default="127.0.0.1:1883", show_default=True, help="Broker URL or host:port.")
@click.option("--prefix", default="umeter", show_default=True, help="Topic prefix of the nodes.")
@click.option("--key", "key_hex", help="The node's cmd_key (hex); default: the keystore's.")
@click.option(
    "--keystore", type=click.Path(dir_okay=False, path_type=Path), help="Keystore file (default: $UMETER_HOME's)."
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the answer.")
@click.option("--expires", "expires_s", type=int, default=3600, show_default=True, help="Seconds the command is valid.")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a TLS broker.")
@click.option("--user", help="Broker user (password: $UMETER_MQTT_PASSWORD or the keystore's host:<user>).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer's result as JSON.")
def command(node, op, args, broker, prefix, key_hex, keystore, timeout, expires_s, ca, user, as_json) -> None:
    """Send NODE one authenticated command OP and print its answer.

    \b
    OP and its arguments:
      status                 the node's health: heap, task restarts, meter gaps, uplink
      read_now               the meter now, as telemetry
      set KEY VALUE          telemetry_s, profile_s, mqtt.backlog_rate, mqtt.keepalive
      rollback KEY           the value before the last set
      relay on|off           the node's relay (off latches against the policy)
      time EPOCH|now         set the node's clock (UNIX seconds)
      reboot                 a planned reboot (registers checkpointed)
      valve METER open|close a gateway meter's valve (CJ/T 188)

    The command is signed with the node's key from the keystore it was provisioned from and
    takes the next counter kept there; a refusal or a failed action exits 1 with the node's why.
    """
    from ..command import node_key
    from ..keystore import Keystore
    from .monitor import _password

    a = parse_args(op, list(args))
    ks = Keystore(keystore)
    key = node_key(node, key_hex, ks)
    r = send(
        broker,
        node,
        op,
        a,
        prefix=prefix,
        key=key,
        keystore=ks,
        expires_s=expires_s,
        timeout=timeout,
        user=user,
        password=_password(user),
        tls_ca=ca,
    )
    if as_json:
        click.echo(json.dumps(r))
    else:
        ui.out.print(_human(op, node, r), markup=False)
