"""Host MQTT clients (paho-mqtt, callback API v2), made and connected one way.

The telemetry subscriber of `umeter sim`, the SQLite consumer, campaigns and the fleet
simulator all talk to a broker from the host; this module gives them the same client set-up
and the same one-line error when the broker cannot be reached.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from .errors import TransportError


def make_client(
    name: str,
    *,
    client_id: str | None = None,
    tls_ca: str | Path | None = None,
    bulk: bool = False,
    clean_session: bool = True,
    manual_ack: bool = False,
):
    """A paho client named `<name>-<random>` unless `client_id` is given (clean session unless
    told otherwise).

    `bulk` lifts paho's in-flight and queue limits for publishers of many messages
    (campaigns, the fleet simulator); `tls_ca` makes the connection TLS against that CA;
    `manual_ack`: QoS 1 messages are acknowledged by `client.ack(mid, qos)`, not on receipt.
    """
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"{name}-{uuid.uuid4().hex[:8]}",
        clean_session=clean_session,
        manual_ack=manual_ack,
    )
    if tls_ca:
        c.tls_set(ca_certs=str(tls_ca))
    if bulk:
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
    return c


def connect(client, host: str, port: int, *, keepalive: int = 30, hint: str = "is the broker running?") -> None:
    """Connects (the caller starts the network loop); TransportError naming the broker if it fails."""
    try:
        client.connect(host, port, keepalive=keepalive)
    except OSError as e:
        raise TransportError(
            f"cannot reach the broker at mqtt://{host}:{port} ({e.strerror or e})", hint=hint
        ) from None


def refusal(rc) -> str:
    """CONNACK reason -> words (MQTT 3.1.1 codes 4 and 5 are what Mosquitto's ACL gives)."""
    v = getattr(rc, "value", rc)
    if v in (5, 135):
        return "not authorised"
    if v in (4, 134):
        return "bad user name or password"
    return str(rc).lower()
