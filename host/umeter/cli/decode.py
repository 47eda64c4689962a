"""`umeter decode`: uplink payloads by hand, for field work."""

from __future__ import annotations

import json

import click

from .. import decode as lib


@click.group("decode")
def command() -> None:
    """Decode node uplink payloads (LoRaWAN frames, MQTT messages) or emit the JS codec."""


@command.command("lora")
@click.argument("frames", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
def lora(frames: tuple[str, ...], as_json: bool) -> None:
    """Decode LoRaWAN uplink FRAMES given as hex (e.g. from the network server's console)."""
    for f in frames:
        d = lib.decode_lora(f)
        if as_json:
            click.echo(json.dumps(d))
        else:
            head = f"{d['kind']} seq={d['seq']} ts={d['ts']}"
            rest = " ".join(f"{k}={v}" for k, v in d.items() if k not in ("kind", "seq", "ts"))
            click.echo(f"{head} {rest}")


@command.command("mqtt")
@click.argument("topic")
@click.argument("payload")
def mqtt(topic: str, payload: str) -> None:
    """Decode one MQTT message (TOPIC and PAYLOAD as seen on the broker) into JSON."""
    click.echo(json.dumps(lib.decode_mqtt(topic, payload.encode())))


@command.command("js")
def js() -> None:
    """Print the ChirpStack v4 / TTN v3 JavaScript payload codec for the LoRa frames."""
    click.echo(lib.js_decoder(), nl=False)
