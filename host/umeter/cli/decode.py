"""`umeter decode`: uplink payloads and meter-bus frames by hand, for field work."""

from __future__ import annotations

import json
import sys

import click

from .. import bus as buslib
from .. import decode as lib


@click.group("decode")
def command() -> None:
    """Decode node uplink payloads (LoRaWAN frames, MQTT messages), meter-bus frames
    (645, 188, mbus, modbus), or emit the JS codec."""


@command.command("lora")
@click.argument("frames", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per frame.")
def lora(frames: tuple[str, ...], as_json: bool) -> None:
    """Decode LoRaWAN uplink FRAMES given as hex (e.g. from the network server's console).

    Values print in V, Hz, W, A, Wh and l; --json keeps the frame's integer fields (v_dv is
    decivolts, f_chz centihertz, p_dw deciwatts, i_*_cA centiamps)."""
    for f in frames:
        d = lib.decode_lora(f)
        if as_json:
            click.echo(json.dumps(d))
        else:
            head = f"{d['kind']} seq={d['seq']} ts={d['ts']}"
            rest = " ".join(f"{k}={v}" for k, v in lib.physical(d) if k not in ("kind", "seq", "ts"))
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


def _meter_frame(protocol: str):
    names = {
        "645": "DL/T 645-2007/1997",
        "188": "CJ/T 188-2004",
        "mbus": "M-Bus (EN 13757-2/-3)",
        "modbus": "Modbus RTU",
    }

    @click.argument("hex_frame", nargs=-1, required=True, metavar="HEX")
    @click.option("--json", "as_json", is_flag=True, help="The fields and readings as one JSON object.")
    def cmd(hex_frame: tuple[str, ...], as_json: bool) -> None:
        text = " ".join(hex_frame)
        if text.strip() == "-":
            text = sys.stdin.read()
        d = buslib.decode_frame(protocol, text)
        if as_json:
            click.echo(json.dumps(d, ensure_ascii=False))
        else:
            click.echo(buslib.render(d))

    cmd.__doc__ = (
        f"Decode one {names[protocol]} frame given as HEX (spaces allowed; - reads stdin): its "
        "fields and readings in engineering units. A truncated frame or a bad checksum exits 1."
    )
    return command.command(protocol)(cmd)


for _p in ("645", "188", "mbus", "modbus"):
    _meter_frame(_p)
