"""On-board checks of the board backends (issue 14, item 4): written to run when a board is
plugged in (`pytest tests/hil --board PORT --board-type NAME`), skipped with the reason on
the virtual board or another board type.  Each provisions the firmware, runs a script on
the board through the raw REPL and asserts on the JSON its last line prints.

What they prove that the unix-port stand-ins cannot:
  - where the viper kernels' machine code lands: in the gc heap on rp2 (as much as the
    budget adds for it, umeter.budget.NATIVE_KB), in IRAM on an esp32.
  - the provisioned node, run for a minute on the board, holds at most what the budget says
    it needs there (umeter.budget.board_need: the sim board's figure + margin + machine code +
    the board's own HAL), by its own low-water mark (what `umeter command NODE status` reports).
  - RP2040 ADC + DMA ring (pico_w) and MCP3208 on PIO + DMA (pico_w_mcp3208): sampling for
    UMETER_HIL_SOAK_S seconds (600 by default) under forced LittleFS erases -- no crash, the
    canaries around every block intact, each input's DC level in its own column for the
    whole run, and sets delivered + lost per ticks_us within +-50 ppm of rate_actual.
  - ESP32 timer ticks (esp32_devkitc): sets lost during GC, flash writes and a TLS
    reconnect are counted (never silent), and the real per-slot skew.
  - a RAK3172 on the board's modem pins: configure() twice without a reboot loop, join,
    confirmed and unconfirmed uplinks, a forced duty-cycle restriction, a modem reset while
    the reader runs (UMETER_HIL_LORA="deveui:appeui:appkey[:band]" for a network that knows
    the device).
  - the relay: latched off, it stays off through a reboot -- no glitch on the pin (the rig
    samples the relay line during the reboot).
  - the file system: the block size and at least the blocks of the flash the soak wears
    (norflash.GEOMETRY), and an open file's LittleFS cache within the budget's FS_KB.
Environment: UMETER_HIL_ADC_DC="l0,l1,..." the DC counts the jig puts on each channel (else
the columns are only checked for staying put); UMETER_HIL_TLS_HOST for the TLS reconnect.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from umeter.build import build, load_board
from umeter.inventory import Device, Fleet
from umeter.keystore import Keystore
from umeter.provision import provision

SOAK_S = int(os.environ.get("UMETER_HIL_SOAK_S", "600"))


def _need_board(hil_target, *names):
    if hil_target.board_type not in names:
        pytest.skip(f"for board type {'/'.join(names)}, not {hil_target.board_type} (--board-type)")


@pytest.fixture(scope="module")
def provisioned(hil_target, tmp_path_factory):
    """The firmware and board definition on the board under test (once per module)."""
    from umeter_hil.plugin import MARKERS

    if hil_target.virtual:
        pytest.skip(MARKERS["hardware"])  # (module scope: before the per-test marker check)
    tmp = tmp_path_factory.mktemp("hil-hw")
    image = build(hil_target.board_type, tmp / "build").out
    dev = Device(name="hil-hw", board=hil_target.board_type, site="hil", port=hil_target.port)
    rep = provision([dev], build_dirs={hil_target.board_type: image}, keystore=Keystore(tmp / "ks.json"),
                    fleet=Fleet(tmp / "fleet.sqlite"), reset=False)[0]  # fmt: skip
    assert rep.status == "ok", rep.error
    return load_board(hil_target.board_type)


def run_on_board(port: str, code: str, timeout: float, soft_reset: bool = False) -> dict:
    """Run `code` on the board (raw REPL, up to `timeout` s; after a soft reset: a fresh heap,
    main.py not run); the JSON of its RESULT line."""
    from umeter.transport import Board

    with Board(port, timeout=timeout).open(soft_reset=soft_reset) as b:
        out = b.exec(code).decode(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, out[-2000:]
    return json.loads(lines[-1][7:])


# -- sampling under stress ---------------------------------------------------------------------
SOAK = r"""
import asyncio, gc, json, os, time
board = json.load(open('/board.json'))
KIND = %(kind)r
if KIND == 'rp2':
    from meternode.hal.rp2040 import RP2Sampler
    s = RP2Sampler(board)
else:
    from meternode.hal.mcp3208 import make_sampler
    s = make_sampler(board)
nch = s.nch
n = s.ring.n
res = {'rate_actual': s.rate_actual, 'skew_us': s.skew_us, 'blocks': 0, 'canary_faults': 0, 'erases': 0,
       'col_min': [9999] * nch, 'col_max': [-1] * nch, 'windows': [], 'note': s.note}
acc = [0] * nch
cnt = 0

async def main():
    global cnt
    s.start()
    t0 = time.ticks_ms()
    t_erase = t0
    first = None
    prev = None
    dt_us = 0
    sets = 0
    while time.ticks_diff(time.ticks_ms(), t0) < %(seconds)d * 1000:
        buf = await s.next_block()
        res['blocks'] += 1
        if not s.ring.canaries_ok():
            res['canary_faults'] += 1
        for c in range(nch):
            tot = 0
            for i in range(c, n, nch):
                tot += buf[i]
            acc[c] += tot // s.block_sets
        cnt += 1
        if cnt == 25:  # one window of 25 blocks: each column's mean level
            m = [a // cnt for a in acc]
            res['windows'].append(m)
            for c in range(nch):
                res['col_min'][c] = min(res['col_min'][c], m[c])
                res['col_max'][c] = max(res['col_max'][c], m[c])
                acc[c] = 0
            cnt = 0
        if first is None:
            first = s.lost
        else:
            dt_us += time.ticks_diff(s.stamp_us, prev)
            sets += s.block_sets
        prev = s.stamp_us
        if time.ticks_diff(time.ticks_ms(), t_erase) > 1500:  # force LittleFS erases (IRQs off)
            t_erase = time.ticks_ms()
            with open('/hil_erase.bin', 'wb') as f:
                for _ in range(4):
                    f.write(b'\x5a' * 4096)
            os.remove('/hil_erase.bin')
            res['erases'] += 1
    s.stop()
    res['sets'] = sets
    res['lost'] = s.lost - first
    res['dt_us'] = dt_us
    res['overruns'] = s.overruns
    res['windows'] = res['windows'][:4] + res['windows'][-4:]

asyncio.run(main())
print('RESULT ' + json.dumps(res))
"""


def _soak(hil_target, kind):
    r = run_on_board(hil_target.port, SOAK % {"kind": kind, "seconds": SOAK_S}, timeout=SOAK_S + 120)
    assert r["canary_faults"] == 0, "a block's canaries were overwritten: the DMA wrote outside it"
    assert r["erases"] >= SOAK_S // 2, r["erases"]
    measured = (r["sets"] + r["lost"]) * 1e6 / r["dt_us"]
    ppm = (measured / r["rate_actual"] - 1) * 1e6
    assert abs(ppm) <= 50, f"{measured:.4f} sets/s vs rate_actual {r['rate_actual']:.4f}: {ppm:.1f} ppm"
    dc = os.environ.get("UMETER_HIL_ADC_DC")
    spread = [hi - lo for lo, hi in zip(r["col_min"], r["col_max"], strict=True)]
    if dc:
        want = [int(x) for x in dc.split(",")]
        for k, m in enumerate(r["windows"]):
            assert all(abs(a - b) <= 40 for a, b in zip(m, want, strict=True)), f"window {k}: {m} vs {want}"
    assert max(spread) <= 40, f"a column's level moved by {spread} counts: rotated columns?"
    return r


@pytest.mark.hardware
@pytest.mark.real_analog
def test_rp2040_dma_sampling_survives_flash_erases(provisioned, hil_target):  # pragma: no cover - HIL only
    _need_board(hil_target, "pico_w")
    r = _soak(hil_target, "rp2")
    assert r["overruns"] <= r["erases"], r


@pytest.mark.hardware
@pytest.mark.real_analog
def test_mcp3208_pio_sampling_survives_flash_erases(provisioned, hil_target):  # pragma: no cover - HIL only
    _need_board(hil_target, "pico_w_mcp3208")
    r = _soak(hil_target, "mcp3208")
    assert r["overruns"] <= r["erases"], r
    assert abs(r["skew_us"] - provisioned["adc"]["skew_us"]) < 0.5, "slot skew: 42 PIO cycles"


ESP32_STRESS = r"""
import asyncio, gc, json, os, time
board = json.load(open('/board.json'))
from meternode.hal.esp32 import ESP32Sampler
s = ESP32Sampler(board)
res = {'skew_us': s.skew_us, 'rate_actual': s.rate_actual, 'phases': {}}
TLS = %(tls)r

async def phase(name, ms, work):
    lost0 = s.lost
    sets = 0
    dt = 0
    prev = None
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        await work()
        buf = await s.next_block()
        if prev is not None:
            dt += time.ticks_diff(s.stamp_us, prev)
            sets += s.block_sets
        prev = s.stamp_us
    res['phases'][name] = {'sets': sets, 'lost': s.lost - lost0, 'dt_us': dt, 'dups': s.dups,
                           'late_max_us': s.late_max_us}

async def idle():
    await asyncio.sleep_ms(0)

async def churn():
    x = [bytearray(512) for _ in range(60)]
    gc.collect()
    await asyncio.sleep_ms(0)

async def flash():
    with open('/hil_w.bin', 'wb') as f:
        f.write(b'\xa5' * 8192)
    os.remove('/hil_w.bin')
    await asyncio.sleep_ms(0)

async def tls():
    if not TLS:
        return
    import socket, ssl
    ai = socket.getaddrinfo(TLS, 443)[0][-1]
    sk = socket.socket()
    sk.connect(ai)
    ss = ssl.wrap_socket(sk, server_hostname=TLS)
    ss.close()
    await asyncio.sleep_ms(200)

async def main():
    s.start()
    await phase('idle', 5000, idle)
    await phase('gc', 10000, churn)
    await phase('flash', 10000, flash)
    await phase('tls', 15000, tls)
    s.stop()

asyncio.run(main())
print('RESULT ' + json.dumps(res))
"""


@pytest.mark.hardware
@pytest.mark.real_analog
def test_esp32_tick_loss_under_gc_flash_and_tls_is_counted_and_the_slot_skew_measured(
    provisioned, hil_target
):  # pragma: no cover - HIL only
    _need_board(hil_target, "esp32_devkitc")
    tls = os.environ.get("UMETER_HIL_TLS_HOST", "")
    r = run_on_board(hil_target.port, ESP32_STRESS % {"tls": tls}, timeout=120)
    for name, p in r["phases"].items():
        if name == "tls" and not tls:
            continue
        measured = (p["sets"] + p["lost"]) * 1e6 / p["dt_us"]
        ppm = (measured / r["rate_actual"] - 1) * 1e6
        assert abs(ppm) <= 500, f"{name}: {ppm:.0f} ppm -- sets went missing without being counted ({p})"
    declared = provisioned["adc"]["skew_us"]
    assert 5 <= r["skew_us"] <= 150, r["skew_us"]
    print(f"ESP32 slot skew measured {r['skew_us']:.1f} us (board definition says {declared}); phases {r['phases']}")


# -- the modem ------------------------------------------------------------------------------------
LORA = r"""
import asyncio, json, time
board = json.load(open('/board.json'))
from meternode.hal import modem
from meternode.hal.clock import BoardClock
from meternode.link import nettime
from meternode.link.lorawan import LoRaModem, ModemError
port = modem.ModemPort(board['lora'])
u = port.uart()
m = LoRaModem(asyncio.StreamReader(u), asyncio.StreamWriter(u, {}))
KEYS = %(keys)r
res = {}

async def step(name, coro):
    try:
        res[name] = await coro
    except ModemError as e:
        res[name] = 'ModemError: %%s' %% e

async def main():
    m.start()
    await step('configure1', m.configure(*KEYS))
    res['sets1'] = m.sets
    await step('configure2', m.configure(*KEYS))
    res['sets2'] = m.sets - res['sets1']
    res['reboots_after_configure'] = m.reboots
    await step('join', m.join(5, 30000, 5000))
    await step('confirmed', m.send(2, b'\x01\x02', confirmed=True))
    await step('unconfirmed', m.send(2, b'\x03', confirmed=False))
    class L:  # what nettime.lorawan reads of a LoRaLink
        pass
    ll = L()
    ll.modem, ll.port, ll.clock, ll.event = m, 2, BoardClock(), None
    ll.nettime = [None, None, None, 600, 86400, 10 * 366 * 86400]
    await step('timereq', nettime.lorawan(ll, b'\x06', False))  # the network's DeviceTimeAns
    res['nettime'] = ll.nettime[:2]
    res['clock'] = ll.clock.time()
    t0 = time.ticks_ms()
    for k in range(6):  # back to back at DR0: the module's duty-cycle limiter refuses
        await step('burst%%d' %% k, m.send(2, bytes(40), confirmed=False))
    res['burst_ms'] = time.ticks_diff(time.ticks_ms(), t0)
    res['busy'] = m.busy
    port.reset()  # a modem reset while the reader runs
    await asyncio.sleep_ms(3000)
    res['reboots'] = m.reboots
    res['joined_after_reset'] = m.joined
    await step('rejoin', m.join(5, 30000, 5000))
    await step('after', m.send(2, b'\x04', confirmed=True))
    res['noise'] = m.noise
    res['reader_alive'] = not m.task.done()

asyncio.run(main())
print('RESULT ' + json.dumps(res))
"""


@pytest.mark.hardware
def test_rak3172_configure_join_uplinks_duty_cycle_and_reset(provisioned, hil_target):  # pragma: no cover
    keys = os.environ.get("UMETER_HIL_LORA")
    if not keys:
        pytest.skip("set UMETER_HIL_LORA=deveui:appeui:appkey[:band] for a RAK3172 a network knows")
    if not provisioned.get("lora"):
        pytest.skip(f"board {hil_target.board_type} has no modem pins")
    parts = keys.split(":")
    args = [*parts[:3], parts[3] if len(parts) > 3 else "EU868"]
    r = run_on_board(hil_target.port, LORA % {"keys": args}, timeout=900)
    assert r["configure1"] is None and r["configure2"] is None, r
    assert r["sets2"] == 0 and r["reboots_after_configure"] <= 1, "no reboot loop, nothing rewritten"
    assert r["join"] is True and r["confirmed"] is True and r["unconfirmed"] is True, r
    # the board's RTC from the network's DeviceTimeAns (link/nettime.py), when the network
    # answers DeviceTimeReq (TTN and ChirpStack do)
    assert r["timereq"] is True and r["nettime"][1] is None and abs(r["clock"] - time.time()) <= 3, r
    assert all(r[f"burst{k}"] is True for k in range(6)), "duty-cycle refusals are waited out"
    assert r["busy"] >= 1, "the burst did meet the duty-cycle limiter"
    assert r["reboots"] >= 1 and r["joined_after_reset"] is False, "the reset was seen by the reader"
    assert r["rejoin"] is True and r["after"] is True and r["reader_alive"], r


# -- the machine code's heap -------------------------------------------------------------------
# What importing the viper kernels costs the gc heap on the board, and an esp32's IRAM: the
# budget (umeter.budget.NATIVE_KB, docs/memory.md) says an rp2 keeps their machine code in its
# gc heap and an esp32 copies it into IRAM, which no unix-port figure can show.
NATIVE = r"""
import gc, json, sys
try:
    import esp32
    def iram():
        return sum(h[1] for h in esp32.idf_heap_info(esp32.HEAP_EXEC))
except (ImportError, AttributeError):
    def iram():
        return 0
name = 'meternode.metrology.kernels'
sys.modules.pop(name, None)  # a node main.py started before the interrupt may have loaded it
gc.collect()
a, x = gc.mem_free(), iram()
__import__(name)
gc.collect()
print('RESULT ' + json.dumps({'gc_heap': a - gc.mem_free(), 'iram': x - iram()}))
"""


@pytest.mark.hardware
def test_the_kernels_machine_code_lands_where_the_budget_says(provisioned, hil_target, tmp_path):  # pragma: no cover
    from umeter import budget, mpyfile

    arch = provisioned["arch"]
    kernels = build(hil_target.board_type, tmp_path / "b").out / "lib" / "meternode" / "metrology" / "kernels.mpy"
    m = mpyfile.read(kernels)
    r = run_on_board(hil_target.port, NATIVE, timeout=60)
    module = 2560  # the module's own object, globals, function objects and names (1.7 KB on the 32-bit unix port)
    if arch in mpyfile.IN_GC_HEAP:
        assert m.gc_heap_bytes() <= r["gc_heap"] <= m.gc_heap_bytes() + module, r
        assert r["gc_heap"] <= budget.NATIVE_KB[arch] * 1024 + module, r
    else:
        assert r["gc_heap"] <= module, f"{arch}: the machine code should not stay in the gc heap: {r}"
        if arch.startswith("xtensa"):
            assert r["iram"] >= m.machine_code(), f"the esp32 commits machine code to IRAM: {r}"


# -- the running node's heap, against the budget ----------------------------------------------------
# The budget (umeter.budget: what the sim board's node holds + the margin + the machine code
# an rp2 keeps in its gc heap + what the board's own HAL holds beyond the sim board's) is
# measured on the unix ports; here the provisioned node runs on the board as main.py would run
# it, and its own low-water mark (the least free heap after a report's collection: what
# `umeter command NODE status` reports) says what it really held.
HELD = r"""
import asyncio, gc, json
gc.collect()
base = gc.mem_alloc()  # (a soft reset before: a fresh heap, no name of the package interned)
from meternode.config import load_json
from meternode.node import Node
cfg = load_json('/config.json')
cfg.setdefault('supervisor', {})['heap_check_s'] = 0  # a reading at every report of the run
n = Node(load_json('/board.json'), cfg)
load_json = cfg = None
async def run():
    t = asyncio.create_task(n.run())
    await asyncio.sleep(%(seconds)d)
    t.cancel()
    await asyncio.sleep_ms(100)
asyncio.run(run())
gc.collect()
print('RESULT ' + json.dumps({'base': base, 'low': n.heap_low, 'total': gc.mem_free() + gc.mem_alloc(), 'seq': n.seq}))
"""


@pytest.mark.hardware
def test_the_provisioned_node_runs_within_its_budget_on_the_board(provisioned, hil_target):  # pragma: no cover
    from umeter import budget
    from umeter.transport import Board

    with Board(hil_target.port, timeout=30) as b:
        config = json.loads(b.exec("print(open('/config.json').read())").decode())
        installed = json.loads(b.exec("print(open('/manifest.json').read())").decode())
    load = budget.installed_load(installed)
    k = budget.kind(config)
    # the build's arch, as provisioned: a sim board's is the interpreter's (x86 on a 32-bit port)
    need = budget.board_need(k, arch=installed["arch"], load=load, board=hil_target.board_type)
    r = run_on_board(hil_target.port, HELD % {"seconds": 60}, timeout=120, soft_reset=True)
    held = r["total"] - r["low"] - r["base"]  # the most it held at a report, transients included
    print(f"{hil_target.board_type} {k} ({load}): held {held / 1024:.1f} KB at most, lowest free"
          f" {r['low'] / 1024:.1f} KB, budget's need {need / 1024:.0f} KB"
          f" of a {r['total'] / 1024:.0f}-KB heap")  # fmt: skip
    assert r["seq"] >= 3, f"the node reported {r['seq']} times in 60 s: {r}"
    assert held <= need, f"the node held {held} B, over the budget's {need} B for {k} from {load} on this board: {r}"
    assert r["low"] >= 8 * 1024, f"under 8 KB free at a report: {r}"


# -- the file system -------------------------------------------------------------------------------
# The soak measures the flash's wear on an emulation of each board's file system
# (umeter_hil/board_shim/norflash.py, docs/metrology.md "Wear budget") and the budget adds
# what the node's open files hold in LittleFS (umeter.budget.FS_KB): the board's own.
FS = r"""
import gc, json, os
v = os.statvfs('/')
gc.collect()
a = gc.mem_alloc()
f = open('/hil-fs.tmp', 'wb')
f.write(b'x' * 100)
f.flush()
gc.collect()
b = gc.mem_alloc()
f.close()
os.remove('/hil-fs.tmp')
print('RESULT ' + json.dumps({'bsize': v[0], 'blocks': v[2], 'free': v[3], 'open_file': b - a}))
"""
FS_GEOMETRY = {"pico_w": "pico_w", "pico_w_mcp3208": "pico_w", "esp32_devkitc": "esp32"}


@pytest.mark.hardware
def test_the_boards_file_system_is_the_one_the_soak_wears(provisioned, hil_target):  # pragma: no cover
    from umeter import budget
    from umeter_hil.board_shim import norflash

    size, _ = norflash.GEOMETRY[FS_GEOMETRY[hil_target.board_type]]
    r = run_on_board(hil_target.port, FS, timeout=30)
    print(f"{hil_target.board_type}: {r['blocks']} blocks of {r['bsize']} B, {r['blocks'] - r['free']} used"
          f" after provisioning, an open file holds {r['open_file']} B")  # fmt: skip
    assert r["bsize"] == norflash.BLOCK, r
    # as many blocks as the soak's flash or more: its wear figure is then a floor for the board's
    assert r["blocks"] >= size // norflash.BLOCK, r
    assert r["open_file"] <= budget.FS_KB[4][hil_target.board_type] * 1024 // 2, r


# -- the messages file ----------------------------------------------------------------------------
# `umeter build` moves the package's messages to lib/meternode/msgs.txt (docs/memory.md); the
# board's package finds it beside its own __init__ (/lib, an OTA slot's lib/ or /rom/lib) and
# keeps the last one read. What a first read costs on the board's filesystem, and a repeat.
MSGS = r"""
import json, time, meternode
out = []
for a, b in %(ranges)r:
    t0 = time.ticks_us()
    first = meternode.msg(a, b)
    t1 = time.ticks_us()
    again = meternode.msg(a, b)
    t2 = time.ticks_us()
    out.append([str(first), again is first, time.ticks_diff(t1, t0), time.ticks_diff(t2, t1)])
print('RESULT ' + json.dumps({'file': meternode.__file__, 'reads': out}))
"""


def _msg_ranges(data: bytes) -> list[tuple[int, int]]:
    # three ranges of the file on ASCII boundaries: its start, its middle, its end
    def ascii_at(i: int) -> int:
        while data[i] >= 0x80:
            i += 1
        return i

    n = len(data)
    return [(0, ascii_at(24)), (ascii_at(n // 2), ascii_at(n // 2 + 30)), (ascii_at(n - 40), n)]


@pytest.mark.hardware
def test_messages_are_read_from_the_boards_file(provisioned, hil_target, tmp_path):  # pragma: no cover
    from umeter.msgfold import BOOK_FILE

    data = (build(hil_target.board_type, tmp_path / "b").out / "lib" / "meternode" / BOOK_FILE).read_bytes()
    ranges = _msg_ranges(data)
    r = run_on_board(hil_target.port, MSGS % {"ranges": ranges}, timeout=30)
    print("msgs.txt on the board:", r)  # the first read's and the repeat's µs, for docs/memory.md
    for (a, b), (text, same, _first_us, _again_us) in zip(ranges, r["reads"], strict=True):
        assert text == data[a:b].decode(), (a, b, r)
        assert same, "a repeated message comes from the memo, not the file"


# -- the relay ------------------------------------------------------------------------------------
@pytest.mark.hardware
@pytest.mark.rig
def test_relay_latched_off_stays_off_through_a_reboot(provisioned, board, rig, hil_target):  # pragma: no cover
    if not provisioned.get("relay"):
        pytest.skip(f"board {hil_target.board_type} has no relay")
    import serial

    store = json.loads(board.exec("print(open('/config.json').read())")).get("store", {}).get("path", "store")
    board.exec(f"open({store + '.relay'!r}, 'w').write('1 0')")  # an operator's remote disconnect
    seen = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            seen.append(rig.relay())
            time.sleep(0.0005)

    th = threading.Thread(target=sample)
    th.start()
    try:
        with serial.serial_for_url(board.port, timeout=0.2) as s:
            s.write(b"\r\x03\r\x01import machine; machine.reset()\x04")
        time.sleep(8)  # the node boots, restores the latch and runs
    finally:
        stop.set()
        th.join()
    assert seen and not any(seen), f"the relay line went high {sum(seen)} times of {len(seen)} samples"


# -- the clock from NTP -------------------------------------------------------------------------
NTP = r"""
import asyncio, json, network, time
from meternode.hal.clock import BoardClock
from meternode.link import sntp
w = network.WLAN(network.STA_IF)
w.active(True)
if not w.isconnected():
    w.connect(%(ssid)r, %(password)r)
    t0 = time.ticks_ms()
    while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 20000:
        time.sleep_ms(200)
c = BoardClock()
before = c.time()
step = asyncio.run(sntp.sync(c, %(host)r, 123, 5000, 10 * 366 * 86400))
print("RESULT " + json.dumps({"before": before, "after": c.time(), "step": step}))
"""


@pytest.mark.hardware
def test_the_boards_rtc_is_set_from_ntp_over_wifi(provisioned, hil_target):  # pragma: no cover - HIL only
    # The board's own RTC (hal/clock.py BoardClock: machine.RTC) set by link/sntp.py over its
    # Wi-Fi: UMETER_HIL_WIFI_SSID / _PASSWORD, UMETER_HIL_NTP (default pool.ntp.org).
    ssid = os.environ.get("UMETER_HIL_WIFI_SSID")
    if not ssid or "wifi" not in provisioned.get("capabilities", ()):
        pytest.skip("needs UMETER_HIL_WIFI_SSID (and _PASSWORD) for the board's Wi-Fi")
    code = NTP % {"ssid": ssid, "password": os.environ.get("UMETER_HIL_WIFI_PASSWORD", ""),
                  "host": os.environ.get("UMETER_HIL_NTP", "pool.ntp.org")}  # fmt: skip
    r = run_on_board(hil_target.port, code, timeout=60, soft_reset=True)
    print("the board's clock from NTP:", r)
    assert abs(r["after"] - time.time()) <= 3, r


@pytest.mark.virtual_only
def test_the_on_board_scripts_compile_on_micropython(tmp_path):
    # They run only with a board attached; here at least MicroPython parses them.
    import subprocess

    from umeter import unixport

    scripts = {
        "soak": SOAK % {"kind": "rp2", "seconds": 1},
        "esp32": ESP32_STRESS % {"tls": ""},
        "lora": LORA % {"keys": ["0" * 16, "0" * 16, "0" * 32, "EU868"]},
        "native": NATIVE,
        "msgs": MSGS % {"ranges": [(0, 24)]},
        "held": HELD % {"seconds": 60},
        "ntp": NTP % {"ssid": "s", "password": "p", "host": "pool.ntp.org"},
        "fs": FS,
    }
    for name, code in scripts.items():
        (tmp_path / f"{name}.py").write_text(code)
        check = f"compile(open({str(tmp_path / (name + '.py'))!r}).read(), {name!r}, 'exec')\nprint('ok')"
        (tmp_path / f"c_{name}.py").write_text(check)
        p = subprocess.run(unixport.command(tmp_path / f"c_{name}.py"), capture_output=True, text=True, timeout=30)
        assert p.stdout.strip() == "ok", name + ": " + p.stdout + p.stderr
