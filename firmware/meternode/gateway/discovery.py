# Home Assistant MQTT discovery for the meters behind a gateway node (link/discovery.py does
# the node's own sensors): each meter is its own device, via the node.  Loaded only by the
# gateway, so a node without one does not hold these names.
import json


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
