# The device side of benchmarks/endurance.py: one boot of the real node (meternode.node.Node,
# its supervisor, uplink service, checkpoints) on the MicroPython unix port, with the sim
# board in fast mode (simulated time, no sleeping).  What this script adds is the soak's
# stand-in for the world around the node, nothing inside it:
#
# - the ADC: the scenario's load profile, level by level.  Each level's block holds whole
#   mains cycles (50 Hz at 1 kS/s: 20 sets a cycle), so the sim HAL synthesises it once and
#   plays it back; the block's exact integer sums (LEVEL lines) let the host integrate the
#   energy the samples carry, set by set.  With `coast` (a fraction), that part of every
#   5-minute slot is fast-forwarded by the sim HAL (SimSampler.coast: counters, clocks and
#   phase run on, the meter registers the steady stretch at its measured power) and the
#   rest is sampled set by set;
# - the power: at `cut_s` the brown-out input trips (the node checkpoints at once), the ADC
#   stops and the host kills the process at a random instant (POWERCUT line);
# - a nearly full flash: inside the `full` windows the node has only a little free space
#   (what was free when the window opened, a few KB: other data took the rest); a write
#   that does not fit fails with ENOSPC, removing or truncating a file gives space back
#   (`open` and `os` stand-ins);
# - the flash: with `flash`, the node's files live on a real LittleFS on the board's NOR
#   flash (umeter_hil/board_shim/norflash.py: its geometry, LittleFS's settings as the board's
#   MicroPython mounts it, every erase counted) in the image file flash.img here, so a power
#   cut leaves it as it leaves a board's; formatted at the first boot with the board's build
#   on it (static data, as provisioning leaves it), this boot's config copied on at each;
# - STATUS lines every `status_s` of simulated time: clocks, counters, registers, heap (and
#   the file system's free blocks, the files opened to write by name).
#
# Run by the host as: micropython -X heapsize=N endurance_node.py <root>; reads <root>/soak.json.
import asyncio
import builtins
import gc
import json
import os
import sys

root = sys.argv[1]
os.chdir(root)
root = os.getcwd()
with open("soak.json") as f:
    soak = json.load(f)


def _copy(src, dst):
    # a file, or a directory and everything under it, from the host's side to the flash
    if os.stat(src)[0] & 0x4000:
        try:
            os.mkdir(dst)
        except OSError:
            pass
        for e in os.ilistdir(src):
            _copy(src + "/" + e[0], dst + "/" + e[0])
        return
    with open(src, "rb") as a, open(dst, "wb") as b:
        while True:
            chunk = a.read(2048)
            if not chunk:
                break
            b.write(chunk)


_fl = soak.get("flash")  # the board's flash (see above), or the host's file system
if _fl:
    sys.path.insert(0, _fl["shim"])
    import norflash

    sys.path.pop(0)
    _dev, _made = norflash.mount(root + "/flash.img", _fl["board"])
    if _made:
        _copy(_fl["build"], "/flash")
    for _n in ("board.json", "config.json"):
        _copy(root + "/" + _n, "/flash/" + _n)
    if _made:
        _dev.reset_wear()  # the wear of the node's own writes, from its first boot
    os.chdir("/flash")

_open = builtins.open
_os = os
_full = soak.get("full", [])  # [[from_s, to_s, free bytes], ...] of simulated time
_clock = [None]
_flash = {"used": 0, "cap": None, "nospc": 0, "window": None}


def _size(path):
    try:
        return _os.stat(path)[6]
    except OSError:
        return 0


def _du(path):
    t = 0
    for e in _os.ilistdir(path):
        p = path + "/" + e[0]
        t += _du(p) if e[1] == 0x4000 else _size(p)
    return t


def _cap():
    # The flash's free space: unlimited, except inside a `full` window, where it is what
    # was free when the window opened (other data took the rest); deleting frees space.
    c = _clock[0]  # the node's sampler, once it exists
    if c is None:
        return None
    t = c._el_s + soak["t0_s"]
    for w in _full:
        if w[0] <= t < w[1]:
            if _flash["window"] is not w:
                _flash["window"] = w
                _flash["cap"] = _flash["used"] + w[2]
            return _flash["cap"]
    _flash["window"] = None
    return None


def _take(n):
    cap = _cap()
    if cap is not None and _flash["used"] + n > cap:
        _flash["nospc"] += 1
        raise OSError(28)  # ENOSPC
    _flash["used"] += n


class _File:
    # A file on the nearly full flash: a write needs free space.
    def __init__(self, f):
        self._f = f

    def write(self, b):
        _take(len(b))
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


_writes = {}  # files opened to write, by name without its digits (ckpt0/1: "ckpt"): the wear's sources


def _soak_open(path, mode="r", *a):
    if "w" in mode:
        _flash["used"] -= _size(path)  # truncated
    f = _open(path, mode, *a)
    if mode in ("r", "rb"):
        return f
    k = "".join(c for c in path.rsplit("/", 1)[-1] if not c.isdigit())
    _writes[k] = _writes.get(k, 0) + 1
    return _File(f)


class _Os:
    # `os` as the node sees it: remove and rename give the space back.
    def __init__(self):
        for k in dir(_os):
            if not k.startswith("__") and k not in ("remove", "rename"):
                setattr(self, k, getattr(_os, k))

    def remove(self, path):
        n = _size(path)
        _os.remove(path)
        _flash["used"] -= n

    def rename(self, a, b):
        n = _size(b)
        _os.rename(a, b)
        _flash["used"] -= n


_flash["used"] = _du(".")
builtins.open = _soak_open
sys.modules["os"] = _Os()

from meternode import node as _node  # noqa: E402
from meternode.config import load_json  # noqa: E402
from meternode.hal.sim import SimClock, SimSampler  # noqa: E402


class _Brownout:
    tripped = False


n = _node.Node(load_json("board.json"), load_json("config.json"))
n.brownout = _Brownout()
_move = soak.get("move")  # [run second, minutes east of UTC]: the billing time moved then


def _moved(r):
    # What a policy signed with --move-billing-time does when it is applied (policy/rare.py),
    # at run second `r` of the soak, and at every start after it (the policy on flash).
    if _move and r >= _move[0]:
        from meternode import ticks

        ticks.LOCAL_S = _move[1] * 60


_moved(soak["t0_s"])
s = n.hal.sampler
n_meter = n.meter
clock = n.hal.clock
_clock[0] = s
board = load_json("board.json")  # the whole definition (node.board keeps what the node reads)
rate = s.rate
bs = s.block_sets
nch = s.nch
levels = soak["levels"]  # [[rms A, angle deg], ...]
sched = soak["schedule"]  # [[second of day, level], ...] sorted, first at 0
cut_s = soak.get("cut_s")  # power cut at this simulated second of the boot, or None
end_s = soak["end_s"]  # the boot's last simulated second (the run's end, or the cut)
t0_s = soak["t0_s"]  # this boot's start, in seconds since the run's start
_sums = {}  # levels whose block sums were printed
_counts = {}  # level -> blocks delivered in this boot
_buf = s._bufs[0]  # the playback block (the sim sampler's own buffer)
_cur = [-1]  # the level in _buf
# The synthesiser: the sim board's own sampler, on a clock of its own, writing into _buf
_syn = SimSampler(board, n.config["sim"], SimClock(0))
_syn._bufs = None  # its blocks are not needed: it fills _buf
gc.collect()


def _block(k):
    # The level's block: whole cycles, phase 0 at every block start, so the sim sampler
    # synthesises it once per level change.
    if _cur[0] == k:
        return _buf
    rms, angle = levels[k]
    _syn.set_current(1, float(rms), float(angle))
    _syn._ph = 0
    _syn.fill(_buf)
    _cur[0] = k
    if k not in _sums:
        sv = si = svi = 0
        for j in range(bs):
            v = _buf[j * nch]
            i = _buf[j * nch + 1]
            sv += v
            si += i
            svi += v * i
        _sums[k] = 1
        print("LEVEL %d %d %d %d %d" % (k, bs, sv, si, svi))
    return _buf


def _level(t):
    # The load level at simulated second t of the run (the schedule repeats daily).
    d = t % 86400
    k = sched[0][1]
    for at, lv in sched:
        if at <= d:
            k = lv
        else:
            break
    return k


_dead = asyncio.Event()  # never set: the ADC after a power cut


_SLOT = 300  # s: each slot of the run is sampled set by set, then coasted (soak "coast")
_real = _SLOT - int(_SLOT * soak.get("coast", 0.0))


def _next_change(t):
    # the next second of the run at which the load level changes
    d = t % 86400
    for at, _ in sched:
        if at > d:
            return t - d + at
    return t - d + 86400


_steady = [0, -1]  # real blocks in a row at one level, and that level


def _coast(t):
    # Inside a slot's coasted part: fast-forward the steady signal to the slot's end (never
    # across a level change, the cut or the end): the sampler's clock, phase and counters
    # run on and the meter registers the stretch at its measured power (SimSampler.coast).
    # Only once the meter has measured this level (a few real blocks since the boot or the
    # last change): what it registers is what it measured last.
    r = t0_s + t
    pos = r % _SLOT
    if pos < _real or _steady[0] < 3 or _steady[1] != _level(r):
        return 0
    e = r - pos + _SLOT
    e = min(e, _next_change(r), t0_s + end_s)
    if cut_s is not None:
        e = min(e, t0_s + cut_s - 1)
    secs = e - r
    if secs <= 0:
        return 0
    k = _level(r)
    s.coast(n_meter, secs)
    _counts[k] = _counts.get(k, 0) + secs  # 1-s blocks
    return secs


async def _next_block():
    t = s._el_s  # simulated seconds of this boot so far (blocks of exactly 1 s)
    if _real < _SLOT and _coast(t):
        t = s._el_s
    if cut_s is not None and t >= cut_s:
        n.brownout.tripped = False
        print("POWERCUT %d" % t)
        await _dead.wait()
    if t >= end_s:
        await _dead.wait()
    await asyncio.sleep_ms(0)
    k = _level(t0_s + t)
    b = _block(k)
    _counts[k] = _counts.get(k, 0) + 1
    if _steady[1] == k:
        _steady[0] += 1
    else:
        _steady[0] = 1
        _steady[1] = k
    s._advance(bs)  # the sim sampler's clock, stamp and counters, as fill() moves them
    if cut_s is not None and t + 1 >= cut_s:
        n.brownout.tripped = True  # the node checkpoints after feeding this block
    return b


s.next_block = _next_block


def _regs():
    r = n.meter.registers
    k = r.n * 8  # the total block (registers.py): IMP, EXP
    return [r.r[k], r.rem[k], r.r[k + 1], r.rem[k + 1]]


def _status(kind, heap=False):
    u = n.uplink_service
    sup = n.supervisor
    d = {
        "t": t0_s + s._el_s,
        "sets": s.sets,
        "meter_sets": n.meter.sets,
        "ticks_ms": clock.ticks_ms(),
        "ticks_us": clock.ticks_us(),
        "stamp_us": s.stamp_us,
        "rate": n.meter.rate if hasattr(n.meter, "rate") else None,
        "epoch": clock.time(),
        "gaps": getattr(n.meter, "gaps", None),
        "regs": _regs(),
        "freq": n.meter.freq,
        "cycles": n.meter.cycles,
        "ckpt": n.checkpoint.store.writes if n.checkpoint else 0,
        "ckpt_errors": n.ckpt_errors,
        "restarts": sup.restarts if sup else 0,
        "starved": sup.starved if sup else 0,
        "last_seq": u.log.last_seq if u else 0,
        "acked": u.cursor.acked if u else 0,
        "dropped": u.log.dropped if u else 0,
        "nospc": _flash["nospc"],
        "flash_used": _flash["used"],
        "link": n.link_up,
        "counts": _counts,
        "writes": _writes,
    }
    if _fl:
        v = os.statvfs("/flash")
        d["fs"] = [v[2], v[3]]  # blocks, free blocks
    if heap:
        gc.collect()
        d["heap"] = gc.mem_alloc()
        d["free"] = gc.mem_free()
    print("%s %s" % (kind, json.dumps(d)))


async def _reporter():
    # STATUS at every whole `status_s` of the run's simulated time (with the heap at each
    # day boundary), until the boot's end.
    step = soak.get("status_s", 3600)
    t = 0
    while t < end_s:
        nxt = (t0_s + t) // step * step + step - t0_s
        if nxt > end_s:
            nxt = end_s
        await clock.sleep_ms((nxt - t) * 1000)
        t = nxt
        _moved(t0_s + t)
        if (t0_s + t) % step == 0:
            _status("STATUS", heap=(t0_s + t) % soak.get("heap_s", 21600) == 0)


async def _main():
    task = asyncio.create_task(n.run())
    await _reporter()
    await asyncio.sleep_ms(0)
    n.meter.flush()
    # the ADC stops at the end of the run: not a stalled sampling task
    n.supervisor.watch("sampling").stall_ms = 1 << 29
    _status("END", heap=True)
    # drain: every record to the broker (the host decides when it has waited long enough)
    u = n.uplink_service
    while u is not None and u.cursor.acked < u.log.last_seq:
        await asyncio.sleep_ms(100)
    _status("DRAINED")
    task.cancel()
    await asyncio.sleep_ms(10)


_status("BOOT", heap=True)
try:
    asyncio.run(_main())
except SystemExit:  # a planned reboot (hal.reset on the unix port): the host starts us again
    _status("REBOOT")
    raise
