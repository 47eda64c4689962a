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


def configs(prefix, node_id, info=None, ha_prefix="homeassistant"):
    # Returns [(topic, payload bytes)] to publish retained.  `info` may carry "version" and
    # "model"; "sensors" (a list of object ids) chooses what is announced.
    info = info or {}
    only = info.get("sensors") or DEFAULT
    state = "%s/%s/telemetry" % (prefix, node_id)
    avail = "%s/%s/state" % (prefix, node_id)
    dev = {
        "identifiers": ["umeter_" + node_id],
        "name": "umeter " + node_id,
        "manufacturer": "umeter",
        "model": info.get("model", "meter node"),
        "sw_version": info.get("version", ""),
    }
    out = []
    for oid, name, key, unit, dclass, sclass, scale in _SENSORS:
        if oid not in only:
            continue
        tpl = "{{ value_json.%s }}" % key if scale == 1 else "{{ (value_json.%s * %s) | round(3) }}" % (key, scale)
        c = {
            "name": name,
            "unique_id": "umeter_%s_%s" % (node_id, oid),
            "object_id": "umeter_%s_%s" % (node_id, oid),
            "state_topic": state,
            "value_template": tpl,
            "availability_topic": avail,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device_class": dclass,
            "state_class": sclass,
            "device": dev,
        }
        if unit is not None:
            c["unit_of_measurement"] = unit
        out.append(("%s/sensor/%s/%s/config" % (ha_prefix, node_id, oid), json.dumps(c)))
    return out


def meter_configs(prefix, node_id, meter_id, quantities, ha_prefix="homeassistant"):
    # One retained config per quantity of a downstream meter (gateway/), as its own Home
    # Assistant device behind the node: state on <prefix>/<node>/meter/<meter-id>, keyed by
    # quantity name.  quantities: [(name, unit, device_class, state_class)].
    state = "%s/%s/meter/%s" % (prefix, node_id, meter_id)
    obj = "%s_%s" % (node_id, meter_id)
    dev = {
        "identifiers": ["umeter_" + obj],
        "name": "%s via %s" % (meter_id, node_id),
        "manufacturer": "umeter gateway",
        "model": meter_id.split("-")[0],
        "via_device": "umeter_" + node_id,
    }
    out = []
    for name, unit, dclass, sclass in quantities:
        c = {
            "name": name.replace("_", " "),
            "unique_id": "umeter_%s_%s" % (obj, name),
            "object_id": "umeter_%s_%s" % (obj, name),
            "state_topic": state,
            "value_template": "{{ value_json.%s }}" % name,
            "availability_topic": "%s/%s/state" % (prefix, node_id),
            "payload_available": "online",
            "payload_not_available": "offline",
            "state_class": sclass,
            "device": dev,
        }
        if dclass:
            c["device_class"] = dclass
        if unit:
            c["unit_of_measurement"] = unit
        out.append(("%s/sensor/%s/%s/config" % (ha_prefix, obj, name), json.dumps(c)))
    return out
