# Home Assistant MQTT discovery: one retained config per sensor under
# homeassistant/sensor/<node>/<object>/config, reading the node's telemetry JSON, so a Home
# Assistant user sees the node without configuration.  Energy is kWh `total_increasing`.
import json

from micropython import const

# object id, name, telemetry JSON key, unit, device_class, state_class, scale to the unit
_SENSORS = const(
    (
        ("energy_import", "Energy import", "e_imp_wh", "kWh", "energy", "total_increasing", 0.001),
        ("energy_export", "Energy export", "e_exp_wh", "kWh", "energy", "total_increasing", 0.001),
        ("power", "Power", "p", "W", "power", "measurement", 1),
        ("voltage", "Voltage", "v", "V", "voltage", "measurement", 1),
        ("current", "Current", "i", "A", "current", "measurement", 1),
        ("power_factor", "Power factor", "pf", None, "power_factor", "measurement", 1),
        ("frequency", "Frequency", "f", "Hz", "frequency", "measurement", 1),
        ("water", "Water", "water_l", "L", "water", "total_increasing", 1),
        ("gas", "Gas", "gas_m3", "m³", "gas", "total_increasing", 1),
    )
)


# What the electricity telemetry carries today; water/gas/current/pf are announced when the
# node says it has them (info["sensors"]).
DEFAULT = ("energy_import", "energy_export", "power", "voltage", "frequency")


# One sensor's config, JSON written as text: a dict display would intern each of its short
# keys for ever in every node that announces itself (docs/memory.md); the fields a user can
# set (node id, model, version) go in through json.dumps.
_CONFIG = const(
    '{"name": "%s", "unique_id": "umeter_%s_%s", "object_id": "umeter_%s_%s", "state_topic": %s,'
    ' "value_template": "%s", "availability_topic": %s, "payload_available": "online",'
    ' "payload_not_available": "offline", "device_class": "%s", "state_class": "%s"%s, "device": %s}'
)


async def announce(link, c):
    # MqttLink's announcement at each connect: the configs published retained, one at a
    # time, so the heap holds one config's text at once (a MemoryError goes to the link,
    # which comes up without them: the next connect tries again).
    for t, p in configs(link.prefix, link.node_id, link.describe()):
        await c.publish(t, p, qos=1, retain=True)


def configs(prefix, node_id, info=None, ha_prefix="homeassistant"):
    # Yields (topic, payload str) to publish retained.  `info` may carry "version" and
    # "model"; "sensors" (a list of object ids) chooses what is announced.
    info = info or {}
    only = info.get("sensors") or DEFAULT
    state = json.dumps("%s/%s/telemetry" % (prefix, node_id))
    avail = json.dumps("%s/%s/state" % (prefix, node_id))
    dev = '{"identifiers": [%s], "name": %s, "manufacturer": "umeter", "model": %s, "sw_version": %s}' % (
        json.dumps("umeter_" + node_id),
        json.dumps("umeter " + node_id),
        json.dumps(info.get("model", "meter node")),
        json.dumps(info.get("version", "")),
    )
    nid = json.dumps(node_id)[1:-1]  # as it goes inside a JSON string
    for oid, name, key, unit, dclass, sclass, scale in _SENSORS:
        if oid not in only:
            continue
        tpl = "{{ value_json.%s }}" % key if scale == 1 else "{{ (value_json.%s * %s) | round(3) }}" % (key, scale)
        u = "" if unit is None else ', "unit_of_measurement": %s' % json.dumps(unit)
        c = _CONFIG % (name, nid, oid, nid, oid, state, tpl, avail, dclass, sclass, u, dev)
        yield "%s/sensor/%s/%s/config" % (ha_prefix, node_id, oid), c
