# Timer-paced samplers (ESP32 ADC1, MCP3208 on a timer) against the timer-IRQ stand-in
# (hil/umeter_hil/board_shim/softirq.py): MicroPython's 8-deep scheduler queue refuses soft
# ticks while the VM stalls, queued ones run back to back, rp2 timers tick on an integer
# microsecond period.
import asyncio

from board_standins import board, build, check_blocks

from mptest import assert_no_alloc, eq, heap

_PINS = (36, 39, 34, 35)  # esp32_devkitc ADC1 pins, in channel order
_DC = (400, 1400, 2400, 3400)


def _world(port="esp32", read_us=30):
    import softirq

    return softirq.World(port=port, read_us=read_us)


def _slot_source(w, key, dc):
    # Channel `key(ch)`'s level + the index of the timer slot the read belongs to.
    def src(ch, t):
        tm = w.timers[0] if w.timers else None
        if tm is None:
            return dc[key(ch)]
        return dc[key(ch)] + ((t - tm.first + tm.period // 2) // tm.period) % 256

    return src


def _esp32(w, b=None):
    def make():
        from meternode.hal import esp32

        return esp32.ESP32Sampler(b or board("esp32_devkitc"))

    return build(w, make)


async def _collect(w, s, ms, out, stall_every=0, stall_us=0):
    for k in range(ms // 10):
        if stall_every and k % stall_every == stall_every - 1:
            w.stall_us(stall_us)
        else:
            w.run_us(10000)
        while True:
            try:
                buf = await asyncio.wait_for_ms(s.next_block(), 1)
            except asyncio.TimeoutError:
                break
            out.append((list(buf), getattr(s, "stamp_us", 0), getattr(s, "lost", 0)))


@heap("1m")
async def test_esp32_ticks_lost_in_vm_stalls_are_counted_and_no_set_is_read_twice():
    w = _world()
    w.source = _slot_source(w, _PINS.index, _DC)
    s = _esp32(w)
    build(w, s.start)
    blocks = []
    await _collect(w, s, 300, blocks)
    w.stall_us(20000)  # a GC / flash erase: 40 ticks due, 8 queued, 32 refused
    await _collect(w, s, 300, blocks)
    await _collect(w, s, 600, blocks, stall_every=7, stall_us=6000)  # TLS-like stalls
    sets, lost = check_blocks(blocks, 4, getattr(s, "rate_actual", s.rate), _DC, 256, 50)
    eq(w.refused > 40, True, "the scheduler refused ticks: %d" % w.refused)
    eq(s.dups > 0, True, "queued ticks ran back to back and read nothing twice")
    eq(lost >= w.refused, True, "every refused tick is a lost set (%d lost, %d refused)" % (lost, w.refused))
    eq(s.hard, False, "esp32 timers are soft")
    eq(s.skew_us, 30.0, "per-slot delay measured in the read path")


@heap("1m")
async def test_rp2_timer_runs_on_an_integer_microsecond_period_and_says_so():
    # 2400 sets/s cannot be paced exactly by a microsecond timer: the sampler takes 417 us,
    # reports 2398.08/s, and the sets per ticks_us prove it (the meter measures this rate).
    w = _world(port="rp2", read_us=12)
    b = board("pico_w_mcp3208")
    b["adc"]["engine"] = "timer"
    inputs = b["adc"]["inputs"]
    w.source = _slot_source(w, lambda ch: inputs.index(ch), [200 + 600 * k for k in range(6)])

    def make():
        from meternode.hal import mcp3208

        return mcp3208.make_sampler(b)

    s = build(w, make)
    eq(s.period_us, 417, "period")
    eq(abs(s.rate_actual - 1e6 / 417) < 1e-3, True, "rate_actual %r" % s.rate_actual)
    eq(s.note is not None and "417 us" in s.note, True, repr(s.note))
    build(w, s.start)
    eq(s.hard, True, "rp2: Timer(hard=True)")
    blocks = []
    await _collect(w, s, 1500, blocks)
    check_blocks(blocks, 6, s.rate_actual, [200 + 600 * k for k in range(6)], 256, 50)
    try:
        check_blocks(blocks, 6, 2400.0, [200 + 600 * k for k in range(6)], 256, 50)
    except AssertionError:
        pass
    else:
        raise AssertionError("the nominal 2400/s should not match what the timer paces")
    eq(abs(s.skew_us - 12.0) < 0.01, True, "measured skew %r" % s.skew_us)


@heap("1m")
def test_esp32_calibration_is_tried_at_start_and_a_failure_falls_back_to_raw_counts():
    w = _world()
    w.uv_error = OSError("no eFuse calibration")
    w.source = lambda ch, t: 1234
    s = _esp32(w)
    eq(s._uv, False, "uncalibrated")
    eq("calibration" in (s.note or ""), True, repr(s.note))
    buf = s.ring.bufs[0]
    s._read_set(buf, 0)
    eq(list(buf[:4]), [1234] * 4, "read_u16() >> 4")


@heap("1m")
def test_esp32_tick_allocates_nothing_and_scales_microvolts_exactly():
    # read_uv() * 4096 reaches 1.3e10: a boxed int (allocation) on a 32-bit board, 8000 a
    # second.  The sampler's (uv << 8) // (vref >> 4) stays below 2**30.
    w = _world()
    codes = [0, 1, 2047, 2048, 4094, 4095]
    w.source = lambda ch, t: codes[(t // 500) % len(codes)]
    s = _esp32(w)
    build(w, s.start)
    p = 1000000 // s.rate

    def ticks(n):
        for _ in range(n):
            w._set(w.t + p)
            s._on_tick(None)

    assert_no_alloc(ticks, 800)  # across the 2**30 wrap of ticks_us
    seen = set()
    for v in s.ring.bufs[0]:
        seen.add(v)
    eq(seen <= set(codes) and 4095 in seen and 0 in seen, True, "exact counts %r" % sorted(seen))
    eq((4000000 << 8) < (1 << 30), True, "the clamp keeps the intermediate a small int")


@heap("1m")
async def test_esp32_pulse_pins_are_sampled_in_the_tick_not_through_the_scheduler():
    # A bouncing reed contact on a soft pin IRQ shares the 8-deep queue with the tick: a
    # short stall with bounces refuses ticks.  Polled in the tick, it costs no queue slot.
    import softirq

    from meternode.hal import pulsein
    from meternode.pulses import PulseMeter

    results = {}
    for backend in ("irq", "esp32"):
        w = _world()
        w.source = lambda ch, t: 2048
        w.pins[25] = softirq.Train(t0=100000, period_us=100000, width_us=50000, count=8, bounce=4)
        pulsein.POLLED[:] = []

        def make():
            from meternode.hal import esp32

            s = esp32.ESP32Sampler(board("esp32_devkitc"))
            inp = pulsein.make({"pin": 25, "pull": "up"}, "irq", 0, platform="linux" if backend == "irq" else "esp32")
            return s, inp

        s, inp = build(w, make)
        pm = PulseMeter({"name": "water", "per_unit": 1000, "debounce_ms": 20})
        build(w, s.start)
        w.run_us(100000 - w.t)
        for k in range(16):  # a 1.8 ms VM stall over every bouncing edge: 3.6 ticks due
            w.stall_us(1800)
            w.run_us(50000 - 1800)
            inp.drain(pm, 0)
            pm.poll(w.t // 1000)
        w.run_us(100000)
        inp.drain(pm, 0)
        pm.poll(w.t // 1000)
        results[backend] = (w.refused, pm.count, type(inp).__name__)
    eq(results["irq"][0] > 0, True, "soft pin IRQs took the ticks' queue slots: %r" % (results,))
    eq(results["esp32"], (0, 8, "PolledPulseInput"), "polled in the tick: no refused tick, every pulse")


@heap("1m")
async def test_mcp3208_timer_engine_reads_channels_in_board_order():
    w = _world(port="esp32", read_us=25)
    b = board("pico_w_mcp3208")
    b["mcu"] = "esp32"  # no PIO: the timer engine
    b["adc"]["rate"] = 1000
    inputs = b["adc"]["inputs"]
    dc = [100 + 650 * k for k in range(6)]
    w.source = _slot_source(w, lambda ch: inputs.index(ch), dc)

    def make():
        from meternode.hal import mcp3208

        return mcp3208.make_sampler(b)

    s = build(w, make)
    eq(type(s).__name__, "MCP3208Sampler", "timer engine off rp2")
    build(w, s.start)
    blocks = []
    await _collect(w, s, 600, blocks)
    check_blocks(blocks, 6, s.rate_actual, dc, 256, 50)
    eq(abs(s.skew_us - 25.0) < 0.01, True, "skew measured: %r" % s.skew_us)


@heap("256k")
def test_a_counter_pulse_backend_is_refused_on_a_port_without_machine_counter():
    from meternode.config import ConfigError
    from meternode.hal import pulsein

    w = _world(port="rp2")  # rp2 has no machine.Counter
    e = build(w, lambda: _raises(ConfigError, pulsein.make, {"pin": 14}, "counter", 0, "rp2"))
    eq("board.pulses[0].backend = counter" in str(e) and "rp2" in str(e), True, str(e))
    e = build(w, lambda: _raises(ConfigError, pulsein.make, {"pin": 14}, "pcnt", 1, "rp2"))
    eq(str(e).startswith("board.pulses[1].backend must be one of irq/poll/counter"), True, str(e))


def _raises(exc, fn, *a):
    try:
        fn(*a)
    except exc as e:
        return e
    raise AssertionError("%s did not raise" % exc.__name__)


def test_a_board_with_a_modem_gives_its_hal_the_uart_and_a_reset_that_releases_the_line():
    import sys

    from meternode.hal import modem

    made = []

    class _Pin:
        OUT = 1
        IN = 0

        def __init__(self, n, mode=-1, value=None):
            self.n = n
            made.append(("pin", n, mode, value))

        def init(self, mode):
            made.append(("init", self.n, mode))

    class _Machine:
        Pin = _Pin

        @staticmethod
        def UART(n, baudrate=None, tx=None, rx=None, rxbuf=None):  # noqa: N802
            made.append(("uart", n, baudrate, tx.n, rx.n))
            return "uart%d" % n

    class _Hal:
        pass

    old = sys.modules.get("machine")
    sys.modules["machine"] = _Machine
    try:
        h = _Hal()
        modem.attach(h, board("pico_w"))
        eq(h.lora_uart({}), "uart0", "the stream")
        eq(h.modem_reset(reset_ms=1), True, "reset pulsed")
    finally:
        if old is None:
            del sys.modules["machine"]
        else:
            sys.modules["machine"] = old
    made = [m for m in made if m[2] != -1]  # (the tx/rx Pin objects handed to UART)
    eq(made, [("uart", 0, 115200, 12, 13), ("pin", 11, 1, 0), ("init", 11, 0)], "UART0 on GP12/13; RST low, released")


def test_the_wifi_country_is_set_before_the_radio_and_checked():
    from meternode.config import ConfigError
    from meternode.hal.netstat import set_country

    class _Net:
        got = []

        @classmethod
        def country(cls, cc):
            cls.got.append(cc)

    set_country(_Net, "DE")
    eq(_Net.got, ["DE"], "network.country")
    e = _raises(ConfigError, set_country, _Net, "de")
    eq(str(e).startswith("config.wifi.country must be two capitals"), True, str(e))
