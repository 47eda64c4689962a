# What the HAL needs only on a board, or only for a board feature (hal/__init__.py's makers
# delegate here): the board backends, pulse inputs, the Wi-Fi station interface and the
# brown-out input, the GPIO relay.  Loaded only when one of them is asked for -- a module's names are
# interned for ever once it loads, so a sim node without pulses or Wi-Fi never pays for
# these.
_BACKENDS = ("sim", "rp2", "esp32", "mcp3208")


def make(board, config):
    # The board's backend (board["hal"]); the sim HAL is made by halinit.make itself.
    kind = board["hal"]
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


def make_pulse_inputs(board, config, clock=None):
    # One pulse input per board "pulses" entry: sim trains from config["sim"]["pulses"]
    # on the sim HAL (on `clock`'s ticks), else a pin IRQ ring, or machine.Counter when
    # the entry says "backend": "counter" (ESP32, electronic S0 outputs).
    specs = board["pulses"]
    if board["hal"] == "sim":
        from meternode.hal.sim_pulses import SimPulseTrain

        trains = config.get("sim", {}).get("pulses", [])
        t0 = clock.ticks_ms() if clock is not None else 0
        return [
            SimPulseTrain(trains[k] if k < len(trains) else {}, "sim.pulses[%d]" % k, t0) for k in range(len(specs))
        ]
    from meternode.hal import pulsein

    return [pulsein.make(s, s.get("backend", "irq"), k) for k, s in enumerate(specs)]


def make_wlan(board, config):
    # network.WLAN(STA_IF) for config["wifi"] (halinit.make_wlan has checked there is one), with
    # the regulatory domain set first; None where there is no `network` module.
    try:
        import network
    except ImportError:
        return None
    if "country" in config["wifi"]:  # the regulatory domain, before the radio starts
        from meternode.hal.netstat import set_country

        set_country(network, config["wifi"]["country"])
    return network.WLAN(network.STA_IF)


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


def make_brownout(board):
    return Brownout(board["brownout"])


class PinRelay:
    # A relay (or contactor driver) on a GPIO output, RP2040 and ESP32 alike.  `pin` may be
    # given (tests); otherwise machine.Pin(spec["pin"], OUT) is made on the first set(), with
    # that first level -- so the pin goes from its reset state (an input) straight to the
    # state the relay must have.  With defer=False the board's default is set at once;
    # attach() defers, and RelayControl sets the state a persisted remote disconnect asks
    # for: the load is never closed for a moment at boot.  (Between reset and that first
    # set the pin is an input: the driver's own pull resistor must hold the relay in its
    # safe state -- docs/boards.md.)
    def __init__(self, spec, pin=None, defer=False):
        from meternode.hal.halinit import check_relay

        check_relay(spec)
        self._low = spec.get("active_low", False)
        self._n = spec["pin"]
        self.default = spec.get("default", True)
        self._pin = pin
        self.on = None  # not driven yet
        if not defer:
            self.set(self.default)

    def _level(self, on):
        return 0 if on == self._low else 1

    def set(self, on):
        on = bool(on)
        if self._pin is None:
            import machine

            self._pin = machine.Pin(self._n, machine.Pin.OUT, value=self._level(on))
        else:
            self._pin.value(self._level(on))
        self.on = on
