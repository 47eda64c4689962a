"""`umeter broker-config`: a Mosquitto password file and ACL so each node publishes and
subscribes only under its own topics."""

from __future__ import annotations

import click

from .. import ui
from ..fleet import BrokerUser, write_broker_config
from ..inventory import Fleet, load_inventory


@click.command("broker-config")
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for passwd, acl, mosquitto.conf.",
)
@click.option(
    "--inventory", type=click.Path(dir_okay=False, exists=True), help="Nodes from this inventory [the fleet database]."
)
@click.option("--prefix", default="umeter", show_default=True, help="Topic prefix (when not given by the inventory).")
@click.option("--host-user", multiple=True, help="Also a host user with access to the whole prefix (repeatable).")
@click.option(
    "--mosquitto-passwd/--no-mosquitto-passwd",
    "use_tool",
    default=None,
    help="Hash with mosquitto_passwd [if installed].",
)
def command(
    out_dir: str, inventory: str | None, prefix: str, host_user: tuple[str, ...], use_tool: bool | None
) -> None:
    """Write Mosquitto credentials and ACL for the fleet (passwords from the keystore, never printed)."""
    if inventory:
        users = [BrokerUser(d.name, d.mqtt.get("prefix", prefix)) for d in load_inventory(inventory)]
    else:
        users = [BrokerUser(n["node_id"], prefix) for n in Fleet().nodes()]
    users += [BrokerUser(h, prefix, host=True) for h in host_user]
    files = write_broker_config(users, out_dir, use_mosquitto_passwd=use_tool)
    ui.out.print(f"Wrote {files['passwd']} ({len(users)} users), {files['acl']} and {files['conf']}.", markup=False)
    ui.info("Include the conf in mosquitto.conf; host-user passwords are in the keystore under host:<name>.")
