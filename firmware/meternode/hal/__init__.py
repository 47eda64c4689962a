# Hardware abstraction.  Only modules in this package import machine, rp2, esp32 or network.
# make(board, config) returns the backend named by board["hal"]: an object with
#   .clock    ticks_ms(), time() (epoch seconds), async sleep_ms(ms)
#   .sampler  nch, rate, block_sets, bits, overruns, start(), stop(),
#             async next_block() -> array('H') of nch * block_sets interleaved samples
#             (set k = [ch0, ch1, ...]); valid until the following call.
# Backends: sim (sim.py, the unix port), rp2 (rp2040.py: ADC round robin + DMA ping-pong),
# esp32 (esp32.py: timer-paced ADC1), mcp3208 (mcp3208.py: external SPI ADC on either MCU).
# Pulse inputs: pulsein.py (IRQ ring, machine.Counter), sim_pulses.py (sim trains).
#   .relay    the board's load relay (board "relay": {"pin", "active_low", "default"}) or None:
#             set(on) and `on` (True = load connected).  The sim HAL makes its own (it cuts
#             the simulated load); on boards relay.attach() (called by the node) adds a
#             relay.PinRelay.  Kept out of make(): every sim test compiles this module.
# The node's functions never drive .relay directly: relay.relay_control() gives the one
# RelayControl that arbitrates between the operator's commands and the policy engine.

_BACKENDS = ("sim", "rp2", "esp32", "mcp3208")


def make_pulse_inputs(board, config):
    # One pulse input per board "pulses" entry: sim trains from config["sim"]["pulses"]
    # on the sim HAL, else a pin IRQ ring, or machine.Counter when the entry says
    # "backend": "counter" (ESP32, electronic S0 outputs).
    specs = board.get("pulses", [])
    if not specs:
        return []
    if board["hal"] == "sim":
        from meternode.hal.sim_pulses import SimPulseTrain

        trains = config.get("sim", {}).get("pulses", [])
        return [SimPulseTrain(trains[k] if k < len(trains) else {}, "sim.pulses[%d]" % k) for k in range(len(specs))]
    from meternode.hal import pulsein

    return [pulsein.make(s, s.get("backend", "irq"), k) for k, s in enumerate(specs)]


class Brownout:
    # The board's brown-out warning input (board "brownout": {"pin", "edge"}): an IRQ sets
    # a flag; the node saves its checkpoint at once when it is set.
    def __init__(self, spec):
        import machine

        self.tripped = False
        self._isr = self._irq
        pin = machine.Pin(spec["pin"], machine.Pin.IN)
        edge = machine.Pin.IRQ_FALLING if spec.get("edge", "falling") == "falling" else machine.Pin.IRQ_RISING
        pin.irq(self._isr, edge)

    def _irq(self, pin):
        self.tripped = True


def make_wlan(board, config):
    # The station interface the node keeps connected (link/wifi.py) when config["wifi"] names
    # a network; None on the unix port (host networking) or where there is no `network`.
    if not config.get("wifi") or board["hal"] == "sim" and not board.get("wifi"):
        return None
    try:
        import network
    except ImportError:
        return None
    return network.WLAN(network.STA_IF)


def make_brownout(board):
    spec = board.get("brownout")
    if not spec or board["hal"] == "sim":
        return None
    return Brownout(spec)


def make(board, config):
    kind = board["hal"]
    if kind == "sim":
        from meternode.hal import sim

        return sim.SimHal(board, config.get("sim", {}))
    if kind == "rp2":
        from meternode.hal import rp2040

        return rp2040.RP2Hal(board, config)
    if kind == "esp32":
        from meternode.hal import esp32

        return esp32.ESP32Hal(board, config)
    if kind == "mcp3208":
        from meternode.hal import mcp3208

        return mcp3208.MCP3208Hal(board, config)
    raise ValueError("board.hal %r has no backend in this build (have: %s)" % (kind, ", ".join(_BACKENDS)))
