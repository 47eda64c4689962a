# Starting the gateway (Node._gateway, docs/gateway.md): the free-heap gate, then the service.
# Loaded only by a node whose config has "gateway", and forgotten once it has started: a node
# without a gateway never interns these names, one with it does not keep this code.
import sys

from meternode import run
from meternode.node import log

# Free heap the gateway needs at its gate (the record log is up by then), measured by
# benchmarks/gateway.py (docs/gateway.md, "Memory"): the lowest free heap there with which the
# whole node runs with the gateway -- every meter read, MQTT up, no MemoryError -- bisected
# (2 KB steps) for 1 DL/T 645 meter, 8 of them, and 8 meters of 4 protocols.  By word size and
# loading (.mpy or frozen, source): (1 meter, each more meter, each more protocol) in bytes:
# 1 meter as measured plus one bisection step (runs pass and fail within a step of each
# other), a meter = (8 DL/T 645 - 1) / 7 (on the 32-bit .mpy run that came out below what a
# meter holds, 516 B, which is used), a protocol = the rest of the 8-meter need / 3.
_GATEWAY_NEED = {
    (64, False): (117984 + 2048, 1316, 15351),
    (64, True): (119488 + 2048, 1097, 11243),
    (32, False): (82080 + 2048, 875, 9212),
    (32, True): (83632 + 2048, 516, 9020),
}


def start(node):
    # The gateway service (its tasks go to the supervisor, tasks.py), or None: too little free
    # heap for it, or a bad gateway configuration -- logged, and metering goes on.
    node.uplink()  # the record log first: readings are stored records
    import gc

    try:
        uart_free(node.board, node.config)
    except Exception as e:
        log("gateway not started: %s" % e)
        return None
    try:
        # need() loads nodeinit for a moment (how the package was loaded): called before the
        # collection and the free-heap reading below, so that module is not counted as used
        want = need(node.config)
    except Exception as e:  # e.g. MemoryError compiling it from source: metering goes on
        log("gateway not started: %r" % (e,))
        return None
    gc.collect()
    free = gc.mem_free() if hasattr(gc, "mem_free") else 1 << 30
    if free < want:
        # decided before any import: a failed one would leave its interned names behind
        log("gateway off: %d bytes free, it needs %d (raise the heap, or ship .mpy / frozen)" % (free, want))
        return None
    try:
        from meternode.gateway.service import GatewayService

        node.gateway = GatewayService(node, log)
        gc.collect()
        log("gateway on: %d bytes free before, %d after" % (free, gc.mem_free()))
        return node.gateway
    except Exception as e:
        log("gateway not started: %r" % (e,))
        return None


def uart_free(board, config):
    # A board may offer its LoRa modem and a meter bus on the same UART (a Pico W has two):
    # they are alternatives, refused together with the reason (the gateway does not start;
    # LoRa, started with the uplink before it, keeps the UART).  Here, not in the LoRa code:
    # only a node with both meets it, and a LoRa node without a gateway interns none of this.
    n = (board.get("lora") or {}).get("uart")
    if n is None or not config.get("lora"):
        return
    g = config.get("gateway") or {}
    used = [m.get("bus") for m in g.get("meters", []) if isinstance(m, dict)]
    used.append((g.get("slave") or {}).get("bus"))
    for name, b in (board.get("buses") or {}).items():
        if name in used and isinstance(b, dict) and b.get("uart") == n:
            from meternode import ConfigError

            raise ConfigError(
                "config.lora and config.gateway bus %r both need UART%d of board %s: use one" % (name, n, board["name"])
            )


def need(config):
    # Free heap the gateway of `config` needs at the gate (_GATEWAY_NEED): a node that loads
    # its modules compiled (.mpy files, or frozen: __file__ "meternode/...") needs less than
    # one compiling source; the slave counts as one more protocol.
    g = config.get("gateway") or {}
    meters = [m for m in g.get("meters") or () if isinstance(m, dict)]
    protos = []
    for m in meters:
        if m.get("protocol") not in protos:
            protos.append(m.get("protocol"))
    if g.get("slave"):
        protos.append("slave")
    compiled = run("meternode.nodeinit", "_loaded") > 0  # nodeinit is loaded as this module is
    one, meter, proto = _GATEWAY_NEED[(64 if sys.maxsize > 0x7FFFFFFF else 32, compiled)]
    return one + proto * (len(protos) - 1 if protos else 0) + meter * (len(meters) - 1 if meters else 0)
