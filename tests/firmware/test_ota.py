# Firmware OTA on the MicroPython unix port: slots, trial boot, health check, rollback,
# crash-loop fallback, streamed transfer, and the esp32.Partition path on the virtual
# board's stand-in.
import json
import os
import sys
from binascii import b2a_base64, unhexlify

import bundle_fixture as F

from meternode.policy import ota
from meternode.policy.agent import Agent
from meternode.policy.image import PartitionUpdate
from meternode.policy.ota import Slots
from mptest import eq, heap, scratch_dir


class Clock:
    def time(self):
        return F.NOW


def _agent(root):
    return Agent("n1", F.FLEET, root, Clock())


def _begin(env):
    return json.dumps({"op": "begin", "bundle": env.decode()}).encode()


class _Node:
    # What the health check reads of a node: cycles measured, the link, the deadline (0: a
    # trial unhealthy now is past it).
    def __init__(self, up):
        self.meter = type("M", (), {"cycles": 100})()
        self.config = {"mqtt": {"host": "broker"}, "ota": {"health_deadline_s": 0}}
        self.link_up = up


class _Service:
    # The policy service as policy/rare.confirm() uses it: its agent, node, log and reboot.
    def __init__(self, agent, up):
        self.agent = agent
        self.node = _Node(up)
        self.said = []
        self.reboots = []

    def log(self, text):
        self.said.append(text)

    def _reboot(self, why):
        self.reboots.append(why)


def _health(root, up):
    # The node's health check (PolicyService.run -> rare.confirm) once, on an agent made after
    # the boot's select(), as the node's is.  -> (what it logged, reboots asked for)
    from meternode.policy import rare
    from meternode.ticks import add as ticks_add
    from meternode.ticks import ms as ticks_ms

    a = _agent(root)
    a.slots.resume()
    svc = _Service(a, up)
    rare.confirm(svc, ticks_add(ticks_ms(), -1))
    return svc.said, svc.reboots


@heap("256k")
async def test_new_build_is_staged_tried_and_confirmed():
    root = scratch_dir()
    a = _agent(root)
    r = a.handle_ota(_begin(F.FIRMWARE_V5))
    eq((r["ok"], r["status"], r["version"], r["campaign"]), (True, "staged", 5, "fw1"), "staged")
    slot_dir = root + "/fw/a"
    with open(slot_dir + "/meternode/__init__.py", "rb") as f:
        eq(f.read(), unhexlify(F.FW_FILES_HEX["meternode/__init__.py"]), "file written to slot a")
    # reboot: the trial boot runs slot a
    s = Slots(root)
    eq(s.select(), slot_dir, "boot selects the new slot")
    eq(s.trial, True, "trial boot")
    said, reboots = _health(root, True)
    eq((said, reboots), (["health check passed: version 5 confirmed"], []), "health check confirms")
    s2 = Slots(root)
    eq((s2.select(), s2.trial), (slot_dir, False), "confirmed slot on the next boot")
    b = _agent(root)
    eq(b.boot_report()["status"], "confirmed", "boot report")
    eq(b.boot_report(), None, "reported once")
    r = b.handle_ota(_begin(F.FIRMWARE_V5))
    eq((r["ok"], r["why"].split(":")[0]), (False, "not newer"), "same version again")


@heap("256k")
async def test_failed_health_check_rolls_back_on_the_next_boot():
    root = scratch_dir()
    _agent(root).handle_ota(_begin(F.FIRMWARE_V5))
    s = Slots(root)
    eq(s.select(), root + "/fw/a", "trial boot")
    said, reboots = _health(root, False)
    eq(said, ["health check failed (link not connected): resetting to roll back"], "deadline passed")
    eq(reboots, ["health check failed"], "reset requested")
    s = Slots(root)
    eq(s.select(), None, "next boot: back on the factory modules")
    if "rolled back" not in s.rolled_back:
        raise AssertionError(s.rolled_back)
    a = _agent(root)
    rep = a.boot_report()
    eq((rep["ok"], rep["status"], rep["campaign"]), (False, "rolled_back", "fw1"), "boot report")
    eq(_agent(root).boot_report(), None, "reported once, not at every boot")
    r = a.handle_ota(_begin(F.FIRMWARE_V5))
    eq(r["why"].split(":")[0], "not newer", "a failed version cannot be pushed again")


@heap("256k")
def test_crash_during_the_trial_boot_rolls_back():
    root = scratch_dir()
    _agent(root).handle_ota(_begin(F.FIRMWARE_V5))
    eq(Slots(root).select(), root + "/fw/a", "trial boot (crashes: no health check)")
    eq(Slots(root).select(), None, "rolled back on the next boot")


@heap("256k")
def test_crash_loop_of_a_confirmed_build_falls_back_to_the_other_slot():
    root = scratch_dir()
    s = Slots(root, boot_limit=3)
    st = s.state()
    os.mkdir(root + "/fw/a")
    os.mkdir(root + "/fw/b")
    st.update({"active": "b", "versions": {"a": 4, "b": 5}})
    s._save(st)
    for k in range(3):
        eq(Slots(root, boot_limit=3).select(), root + "/fw/b", "boot %d on b" % k)
    s = Slots(root, boot_limit=3)
    eq(s.select(), root + "/fw/a", "4th boot without a healthy run: back to a")
    if "crash loop" not in s.rolled_back:
        raise AssertionError(s.rolled_back)


@heap("256k")
def test_streamed_transfer_checks_every_file_before_switching():
    root = scratch_dir()
    a = _agent(root)
    r = a.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))
    eq((r["ok"], r["status"]), (True, "accepted"), "manifest accepted")
    name = "meternode/extra/hello.py"
    data = unhexlify(F.FW_FILES_HEX[name])
    for off in range(0, len(data), 500):
        msg = {"op": "file", "name": name, "off": off, "data": b2a_base64(data[off : off + 500]).decode()}
        eq(a.handle_ota(json.dumps(msg).encode()), None, "no result per chunk")
    # the second file never arrives
    r = a.handle_ota(b'{"op": "end"}')
    eq((r["ok"], r["why"]), (False, "bad file: meternode/__init__.py was not received"), "incomplete")
    eq(Slots(root).state()["pending"], None, "boot pointer unchanged")
    # again, complete, with a tampered chunk
    a.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))
    bad = bytearray(data)
    bad[10] ^= 1
    a.handle_ota(json.dumps({"op": "file", "name": name, "off": 0, "data": b2a_base64(bad).decode()}).encode())
    init = unhexlify(F.FW_FILES_HEX["meternode/__init__.py"])
    msg = {"op": "file", "name": "meternode/__init__.py", "off": 0, "data": b2a_base64(init).decode()}
    a.handle_ota(json.dumps(msg).encode())
    r = a.handle_ota(b'{"op": "end"}')
    eq(r["why"], "bad file: meternode/extra/hello.py does not match its hash", "tampered")
    eq(Slots(root).state()["pending"], None, "boot pointer unchanged")
    r = a.handle_ota(json.dumps({"op": "file", "name": "../boot.py", "off": 0, "data": ""}).encode())
    eq(r, None, "a stray chunk is ignored (its begin was already answered)")
    r = a.handle_ota(b'{"op": "end"}')
    eq(r["why"], "malformed: no firmware transfer in progress", "end without a transfer")
    eq("boot.py" in os.listdir(root + "/fw"), False, "nothing written by the stray chunk")


@heap("256k")
def test_boot_path_imports_the_firmware_from_the_selected_slot():
    root = scratch_dir()
    _agent(root).handle_ota(_begin(F.FIRMWARE_V5))
    saved = list(sys.path)
    try:
        s = ota.boot_path(root)
        eq(s.running, "a", "slot a")
        import meternode

        eq(meternode.VERSION, "9.0.0", "meternode comes from the slot")
    finally:
        sys.path[:] = saved
        for name in list(sys.modules):
            if name == "meternode" or name.startswith("meternode."):
                del sys.modules[name]


def _esp32(reset):
    # (Re)loads the virtual board's esp32 stand-in as a reset of the board would.
    for m in ("esp32",):
        if m in sys.modules:
            del sys.modules[m]
    import esp32

    esp32.boot(reset)
    return esp32


@heap("256k")
def test_partition_path_on_the_virtual_board_stand_in():
    import hashlib
    from binascii import hexlify

    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    sys.path.append(here + "/../../hil/umeter_hil/board_shim")
    root = scratch_dir()
    os.mkdir(root + "/state")
    os.putenv("UMETER_VB_ROOT", root)
    os.putenv("UMETER_VB_STATE", root + "/state")
    import vbstate

    vbstate.init()
    esp32 = _esp32("power")
    eq(esp32.ota_state()["running"], 0, "factory slot")
    image = bytes(range(256)) * 50  # 12.8 kB "app image"
    sha = hexlify(hashlib.sha256(image).digest()).decode()
    up = PartitionUpdate(esp32.Partition)
    up.begin(len(image))
    for i in range(0, len(image), 1000):
        up.write(image[i : i + 1000])
    up.finish(len(image), sha)
    eq(esp32.ota_state()["state"][1], "new", "set_boot on ota_1")
    esp32 = _esp32("power")
    eq((esp32.ota_state()["running"], esp32.ota_state()["state"][1]), (1, "pending"), "trial boot of ota_1")
    # no health check passed -> the bootloader rolls back at the next reset
    esp32 = _esp32("power")
    eq((esp32.ota_state()["running"], esp32.ota_state()["state"][1]), (0, "aborted"), "rolled back")
    # again, and this time the health check passes
    up = PartitionUpdate(esp32.Partition)
    up.begin(len(image))
    up.write(image)
    up.finish(len(image), sha)
    esp32 = _esp32("power")
    PartitionUpdate(esp32.Partition).healthy()
    esp32 = _esp32("power")
    eq((esp32.ota_state()["running"], esp32.ota_state()["state"][1]), (1, "valid"), "confirmed image stays")
    # a corrupted read-back never sets the boot partition
    up = PartitionUpdate(esp32.Partition)
    up.begin(len(image))
    up.write(image)
    try:
        up.finish(len(image), "00" * 32)
        raise AssertionError("bad hash accepted")
    except Exception as e:
        eq(str(e).split(":")[0], "bad file", "hash mismatch")
    eq(esp32.ota_state()["boot"], 1, "boot partition unchanged")


def _vb_esp32(root):
    here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
    shim = here + "/../../hil/umeter_hil/board_shim"
    if shim not in sys.path:
        sys.path.append(shim)
    os.mkdir(root + "/state")
    os.putenv("UMETER_VB_ROOT", root)
    os.putenv("UMETER_VB_STATE", root + "/state")
    import vbstate

    vbstate.init()
    return _esp32("power")


@heap("320k")  # a 12 KB inline image bundle, this module and bundle.py compiled from source: 288k was at the edge
def test_app_image_bundle_goes_through_the_ota_partitions():
    root = scratch_dir()
    esp32 = _vb_esp32(root)
    a = Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition)
    r = a.handle_ota(_begin(F.IMAGE_V6))
    eq((r["ok"], r["status"], r["version"], r["campaign"]), (True, "staged", 6, "img6"), "staged")
    eq(esp32.ota_state()["state"][1], "new", "set_boot on ota_1")
    buf = bytearray(9000)
    esp32.Partition("ota_1").readblocks(0, buf)
    eq(bytes(buf), unhexlify(F.FW_FILES_HEX["app.bin"]), "image in the partition")
    # reset: the trial boot runs ota_1; the health check passes and marks it valid
    esp32 = _esp32("power")
    a = Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition)
    eq(a.image.after_boot(), "trial", "running the new image")
    a.image.healthy()
    a.slots.healthy()
    eq(esp32.ota_state()["state"][1], "valid", "mark_app_valid_cancel_rollback")
    rep = a.boot_report()
    eq((rep["ok"], rep["status"], rep["version"]), (True, "confirmed", 6), "boot report")
    r = a.handle_ota(_begin(F.IMAGE_V6))
    eq(r["why"].split(":")[0], "not newer", "same image again")


@heap("320k")  # three agents and a 12 KB inline image bundle, loaded from source (was at the edge of 256k)
def test_app_image_that_fails_its_health_check_is_rolled_back_by_the_bootloader():
    root = scratch_dir()
    esp32 = _vb_esp32(root)
    Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition).handle_ota(_begin(F.IMAGE_V6))
    esp32 = _esp32("power")
    a = Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition)
    eq(a.image.after_boot(), "trial", "trial boot")  # ... and never healthy: reset
    esp32 = _esp32("power")
    eq(esp32.ota_state()["running"], 0, "bootloader went back to ota_0")
    a = Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition)
    eq(a.image.after_boot(), "rolled back", "seen after the boot")
    rep = a.boot_report()
    eq((rep["ok"], rep["status"], rep["campaign"]), (False, "rolled_back", "img6"), "boot report")
    # a node without OTA partitions refuses app images
    r = Agent("n1", F.FLEET, scratch_dir() + "/x", Clock()).handle_ota(_begin(F.IMAGE_V6))
    eq(r["why"].split(":")[0], "unsupported", "no partitions")


def _big(off, n):
    return bytes((i * 31 + 7) & 255 for i in range(off, off + n))


def _chunk(off, n):
    msg = {"op": "file", "name": "meternode/big.bin", "off": off, "data": b2a_base64(_big(off, n)).decode()}
    return json.dumps(msg).encode()


def _flash_with_a_log(kib, records_n, max_bytes):
    import ramflash

    from meternode.store import records
    from meternode.store.log import RecordLog

    ramflash.mount("/flash", kib)
    log = RecordLog("/flash/store", 1024, max_bytes)
    log.delivered = lambda: 0  # nothing uploaded yet
    for k in range(records_n):
        log.append(records.EVENT, F.NOW + k, records.event(records.EV_TAMPER, k, "reading %d" % k))
    return ramflash, log


@heap("512k")
def test_a_build_larger_than_the_free_flash_beside_the_log_is_refused_before_a_byte_is_written():
    # Issue 10 row 5: staging filled the flash (OSError 28), left the partial slot, and the
    # record log then dropped unsent readings to make room.
    ramflash, log = _flash_with_a_log(64, 100, 16384)
    a = _agent("/flash")
    a.slots.reserve_fn = lambda: log.max_bytes - log.bytes_used() + log.segment_bytes
    free = ramflash.free("/flash")
    eq(F.BIG_SIZE < free, True, "the build alone would fit (%d free)" % free)
    r = a.handle_ota(_begin(F.FIRMWARE_V7_BIG_STREAMED))
    eq((r["ok"], r["why"].split(":")[0]), (False, "no space"), r.get("why"))
    eq("record log" in r["why"], True, r["why"])
    eq([n for n in os.listdir("/flash/fw") if n in ("a", "b")], [], "no slot left behind")
    eq(ramflash.free("/flash"), free, "nothing written")
    for k in range(40):  # the log goes on, nothing lost
        log.append(4, F.NOW + 200 + k, b"\x05\x00\x00\x00\x00later")
    eq((log.first_seq(), log.last_seq, log.unwritten), (1, 140, 0), "every reading kept")
    log.close()


@heap("512k")
def test_a_staging_that_runs_out_of_flash_midway_removes_its_partial_slot():
    ramflash, log = _flash_with_a_log(64, 20, 4096)
    a = _agent("/flash")
    r = a.handle_ota(_begin(F.FIRMWARE_V7_BIG_STREAMED))
    eq((r["ok"], r["status"]), (True, "accepted"), "enough room when it began")
    ramflash.fill("/flash/other", 8192)  # someone else takes the room meanwhile
    off = 0
    res = None
    while off < F.BIG_SIZE and res is None:
        res = a.handle_ota(_chunk(off, 1024))
        off += 1024
    eq((res["ok"], res["why"].split(":")[0]), (False, "no space"), res and res.get("why"))
    eq("partial build was removed" in res["why"], True, res["why"])
    eq([n for n in os.listdir("/flash/fw") if n in ("a", "b")], [], "the partial slot is gone")
    eq(a.handle_ota(_chunk(off, 1024)), None, "later chunks of the given-up transfer are ignored")
    os.remove("/flash/other")
    log.append(4, F.NOW, b"\x05\x00\x00\x00\x00after")  # and the log has its room back
    log.close()


@heap("256k")
def test_a_slot_left_half_written_by_a_power_cut_is_removed_at_the_next_start():
    root = scratch_dir()
    a = _agent(root)
    a.handle_ota(_begin(F.FIRMWARE_V7_BIG_STREAMED))
    a.handle_ota(_chunk(0, 2048))  # ... power cut
    eq("big.bin" in os.listdir(root + "/fw/a/meternode"), True, "partial file on flash")
    s = Slots(root)
    s.resume()
    eq([n for n in os.listdir(root + "/fw") if n in ("a", "b")], [], "removed at start")


@heap("256k")
def test_staging_into_the_slot_of_the_previous_build_forgets_that_build_first():
    root = scratch_dir()
    s = Slots(root)
    st = s.state()
    os.mkdir(root + "/fw/a")
    st.update({"active": "b", "versions": {"a": 4, "b": 5}})
    s._save(st)
    eq(s.begin({"version": 6, "files": {}}), "a", "stages over the previous build")
    eq(Slots(root).state()["versions"], {"b": 5}, "the crash-loop fallback no longer points at it")


@heap("256k")
async def test_a_message_the_node_has_no_heap_to_parse_fails_and_is_not_called_malformed():
    # A node with its heap cut up cannot parse a large OTA message: that is the node's
    # failure ("failed", retry later), not a malformed message from the sender.  The message
    # is parsed by policy/bundle.py, loaded for it: its `import json` finds this stand-in.
    class NoRoom:
        @staticmethod
        def loads(text):
            raise MemoryError("memory allocation failed, allocating 11211 bytes")

    a = _agent(scratch_dir())
    real = sys.modules.get("json")
    sys.modules["json"] = NoRoom
    try:
        leaf, res = a.handle("ota", _begin(F.FIRMWARE_V5))
    finally:
        if real is None:
            del sys.modules["json"]
        else:
            sys.modules["json"] = real
    eq((leaf, res["ok"], res["status"]), ("ota/result", False, "failed"), "failed")
    eq("MemoryError" in res["why"], True, res["why"])


@heap("256k")
def test_chunks_are_written_without_loading_the_bundle_code_and_each_refusal_says_why():
    # A build comes in hundreds of chunks (each small enough for the MQTT client's buffer):
    # the agent writes them itself; bundle.py (verification, 5 KB of code) is loaded only for
    # begin, end and a chunk it could not write.
    root = scratch_dir()
    a = _agent(root)
    name = "meternode/extra/hello.py"
    data = unhexlify(F.FW_FILES_HEX[name])

    def chunk(off, part, k=name):
        return json.dumps({"op": "file", "name": k, "off": off, "data": b2a_base64(part).decode()}).encode()

    from meternode.policy import agent as A

    loads = []

    def run(module, attr, *args):
        loads.append(module)
        return keep(module, attr, *args)

    keep = A.run
    A.run = run
    try:
        eq(a.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))["status"], "accepted", "manifest accepted")
        eq(loads, ["meternode.policy.bundle"], "bundle.py loaded for the begin")
        for off in range(0, len(data), 100):
            eq(a.handle_ota(chunk(off, data[off : off + 100])), None, "no result per chunk")
        eq(loads, ["meternode.policy.bundle"], "the chunks were written without bundle.py")
    finally:
        A.run = keep
    init = unhexlify(F.FW_FILES_HEX["meternode/__init__.py"])
    a.handle_ota(chunk(0, init, "meternode/__init__.py"))
    r = a.handle_ota(b'{"op": "end"}')
    eq((r["ok"], r["status"]), (True, "staged"), "staged from the chunks: %r" % r)
    slot = Slots(root).state()["pending"]
    # what a chunk the agent cannot write gets: the reason, and the partial build removed
    for bad, why in (
        (chunk(0, b"x" * (len(data) + 1)), "bad file: %s is longer than its %d bytes" % (name, len(data))),
        (chunk(200, data[200:300]), "bad file: %s chunk at 200, have 0 bytes" % name),
        (
            b'{"op": "file", "name": "%s", "off": 0}' % name.encode(),
            "malformed: file chunk needs name, off, base64 data",
        ),
        (chunk(0, b"x", "meternode/other.py"), "bad file: meternode/other.py is not in the manifest"),
    ):
        a2 = _agent(root + "/r%d" % len(why))
        eq(a2.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))["status"], "accepted", "begin")
        r = a2.handle_ota(bad)
        eq((r and r["status"], r and r["why"]), ("rejected", why), "refused chunk %r" % bad[:60])
        eq(a2._ota, None, "the transfer is given up")
    # every 64th chunk is answered with the count, so that the sender keeps a window in flight
    a4 = _agent(root + "/progress")
    a4.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))
    said = []
    for off in range(0, len(data), 10):
        r = a4.handle_ota(chunk(off, data[off : off + 10]))
        if r is not None:
            said.append((off // 10 + 1, r["status"], r["got"], r["campaign"]))
    eq(said, [(64, "accepted", 64, "fw1"), (128, "accepted", 128, "fw1")], "progress reports")
    # a message the MQTT client had no block for (payload None): failed, naming it
    a3 = _agent(root + "/none")
    a3.handle_ota(_begin(F.FIRMWARE_V5_STREAMED))
    leaf, r = a3.handle("ota", None)
    eq((leaf, r["status"], "no memory" in r["why"], a3._ota), ("ota/result", "failed", True, None), repr(r))
    eq(slot is not None, True, "the first agent's build is pending")


# -- a manifest too large for one message, streamed before the files ------------------------
def _many(k):
    # FIRMWARE_V8_MANY_STREAMED's files (make_bundle_fixture.many_name / many_file)
    name = "lib/meternode/pkg%d/module_%03d.mpy" % (k % 5, k)
    return name, bytes((k * 7 + i * 13) & 255 for i in range(60 + 11 * k))


def _streamed(env=None, step=700, mtext=None, files=True):
    # The messages umeter.campaign.ota_messages sends for a build whose manifest does not fit
    # a begin: begin {"m": size, "s": signature}, the manifest in chunks without a name, then
    # the files' chunks.  -> (begin, [manifest chunks], [file chunks], manifest text)
    e = json.loads(env or F.FIRMWARE_V8_MANY_STREAMED)
    m = (mtext or e["m"]).encode()
    begin = json.dumps({"op": "begin", "bundle": {"m": len(m), "s": e["s"]}}).encode()
    mc = [
        json.dumps({"op": "file", "off": off, "data": b2a_base64(m[off : off + step]).decode()}).encode()
        for off in range(0, len(m), step)
    ]
    fc = []
    for k in range(F.MANY_N if files else 0):
        name, data = _many(k)
        for off in range(0, len(data), 200):
            part = b2a_base64(data[off : off + 200]).decode()
            fc.append(json.dumps({"op": "file", "name": name, "off": off, "data": part}).encode())
    return begin, mc, fc, m


def _send(a, msgs):
    # -> the results other than progress reports
    out = []
    for m in msgs:
        leaf, r = a.handle("ota", m) or (None, None)
        if r is not None and "got" not in r:
            out.append((r["status"], r.get("why")))
    return out


def _nothing_staged(root, a, what):
    eq(a._ota, None, what + ": the transfer is given up")
    eq([n for n in os.listdir(root + "/fw") if n in ("a", "b")], [], what + ": no slot left")
    eq(Slots(root).state()["pending"], None, what + ": boot pointer unchanged")


@heap("512k")
def test_a_streamed_manifest_is_staged_in_a_heap_cut_into_runs_of_one_to_two_kb():
    # The whole sim build's manifest (~100 files, 14 KB) made a begin no node in its budgeted
    # heap had a block for.  Here every message and every step of the transfer must fit a heap
    # whose free runs are 1-2 KB: the manifest goes to flash as it comes, its signature is
    # checked over it read back in pieces, and each file is looked up in it entry by entry.
    # The verification code is loaded first (a module compiled from source needs more).
    import gc

    from heapcut import fragment, plug

    import meternode
    from meternode.policy import bundle, ed25519, manifest, sha512  # noqa: F401

    root = scratch_dir()
    a = _agent(root)
    begin, mc, fc, m = _streamed()
    eq(len(m) > 5000 and len(mc) > 7, True, "a manifest of %d bytes in %d chunks" % (len(m), len(mc)))
    msgs = [begin] + mc + fc + [b'{"op": "end"}']
    keep = meternode._KEEP
    meternode._KEEP = True
    gc.collect()
    hold = fragment(64)  # free runs of 1024 to 2032 bytes
    plugs = plug(32, 2048)
    try:
        got = _send(a, msgs)
        progress = a.got
    finally:
        del hold, plugs
        meternode._KEEP = keep
        gc.collect()
    eq(got, [("accepted", None), ("staged", None)], "staged in the cut-up heap")
    eq(progress, len(mc) + len(fc), "the manifest's chunks counted with the files'")
    d = root + "/fw/a/"
    for k in (0, 17, F.MANY_N - 1):
        name, data = _many(k)
        with open(d + name, "rb") as f:
            eq(f.read(), data, name)
    with open(d + "manifest.json", "rb") as f:
        eq(f.read(), m, "the manifest kept as it was signed")
    eq("manifest~" in os.listdir(d), False, "the staged text renamed")
    st = Slots(root).state()
    eq((st["pending"], st["versions"], st["campaign"]), ("a", {"a": 8}, "many8"), "the next boot tries it")


@heap("512k")
def test_a_streamed_manifest_is_checked_and_each_refusal_says_why():
    begin, mc, fc, m = _streamed()
    end = b'{"op": "end"}'
    k = m.index(b'"version":8') + 10
    forged = _streamed(mtext=(m[:k] + b"9" + m[k + 1 :]).decode(), files=False)  # version 9, the signature of 8
    bad = _streamed(mtext=m.decode()[:-1] + "]", files=False)
    name, data = _many(F.MANY_N - 1)
    off = (len(data) - 1) // 200 * 200
    stray = json.dumps({"op": "file", "name": "lib/x.mpy", "off": 0, "data": "QUFB"}).encode()
    huge = json.dumps({"op": "begin", "bundle": {"m": 70000, "s": "0" * 128}}).encode()
    longer = mc[-1].replace(b'"data": "', b'"data": "QUFB')
    cases = [
        ("out of order", [begin, mc[0], mc[2]], "bad file: manifest chunk at 1400, have 700 bytes"),
        ("repeated", [begin, mc[0], mc[1], mc[1]], "bad file: manifest chunk at 700, have 1400 bytes"),
        ("longer", [begin] + mc[:-1] + [longer], "bad file: manifest is longer than its %d bytes" % len(m)),
        ("truncated", [begin] + mc[:-1] + [end], "bad file: the manifest ended before its %d bytes" % len(m)),
        ("a file first", [begin, mc[0], fc[0]], "malformed: %s before the whole manifest" % _many(0)[0]),
        ("forged", [forged[0]] + forged[1], "bad signature: not signed by the fleet key"),
        ("not JSON", [bad[0]] + bad[1], "malformed: manifest is not JSON"),
        ("bad hex", [begin.replace(b'"s": "', b'"s": "00')] + mc, "bad signature: 130 hex digits, expected 128"),
        ("too large", [huge], "malformed: a manifest of 70000 bytes (at most 65536)"),
        (
            "a file never sent",
            [begin] + mc + [c for c in fc if name.encode() not in c] + [end],
            "bad file: %s was not received" % name,
        ),
        ("a file cut short", [begin] + mc + fc[:-1] + [end], "bad file: %s does not match its hash" % name),
        ("a file not in it", [begin] + mc + [stray], "bad file: lib/x.mpy is not in the manifest"),
        (
            "a chunk repeated",
            [begin] + mc + fc + [fc[-1]],
            "bad file: %s chunk at %d, have %d bytes" % (name, off, len(data)),
        ),
    ]
    for what, msgs, why in cases:
        root = scratch_dir() + "/" + what.replace(" ", "_")
        a = _agent(root)
        got = _send(a, msgs)
        eq(got[-1], ("rejected", why), what)
        _nothing_staged(root, a, what)
    # a redelivered first chunk starts the manifest over, as a file's does: then it goes on
    root = scratch_dir() + "/again"
    a = _agent(root)
    eq(_send(a, [begin, mc[0], mc[0]] + mc[1:] + fc + [end])[-1], ("staged", None), "first chunk twice")
    gone = [m for m in ("bundle", "manifest", "sha512") if "meternode.policy." + m in sys.modules]
    eq(gone, [], "the code that checked it is forgotten")
    # the files in another order than the manifest's: looked up from the manifest's start
    root = scratch_dir() + "/reversed"
    a = _agent(root)
    files = {}
    for c in fc:
        files.setdefault(json.loads(c)["name"], []).append(c)
    back = [c for n in reversed(sorted(files)) for c in files[n]]
    eq(_send(a, [begin] + mc + back + [end]), [("accepted", None), ("staged", None)], "files in reverse order")


@heap("256k")
def test_a_staged_manifest_reads_as_json_does_whatever_its_layout():
    # manifest.Staged reads members one at a time: what it gives is what json.loads gives
    # for the whole text (spaces, escapes, brackets in strings, a "files" key deeper down),
    # and text that is not one JSON object is refused
    from meternode.policy.manifest import Staged
    from meternode.policy.ota import Rejected

    d = scratch_dir()
    good = (
        ' \n{ "build" : {"files": {"x": [1, {"y": "}"}]}, "q": "a\\\\\\"b,c"}, "target":{"nodes":["n,1", "n]2"]},\n'
        '  "files" : { "a/b.py" : { "size" : 3, "sha256" : "ab" } ,"c.mpy":{"sha256":"\\u0063d","size":0}},'
        ' "version": 7, "e": [], "o": {} }\n'
    )
    for text in (good, json.dumps(json.loads(good))):
        with open(d + "/m", "w") as f:
            f.write(text)
        want = json.loads(text)
        s = Staged(d + "/m")
        got = dict(s.head)
        eq(got.pop("files") is s, True, "files read from flash")
        files = want.pop("files")
        eq(got, want, "the members but files")
        eq(list(s.items()), list(files.items()), "the files")
        eq((s.get("c.mpy"), s.get("a/b.py"), s.get("zz")), (files["c.mpy"], files["a/b.py"], None), "lookups")
    # (within a member MicroPython's json.loads is lenient, as for a manifest in one message:
    # it takes {"a" 1}, {"a": 1 2} and {"a": {]})
    for bad in ('{"a": 1', '{"a": 1]', '{"a": 1} {', "[1]", '{"files": {"a": {}]}', "", '{"a": 1}}', '{"a": "}'):
        with open(d + "/m", "w") as f:
            f.write(bad)
        try:
            s = Staged(d + "/m")
            list(s.items()) if s.at else None
            why = None
        except Rejected as e:
            why = str(e)
        eq(why, "malformed: manifest is not JSON", "refused: %r" % bad)


@heap("320k")
def test_an_app_image_whose_manifest_streams_goes_through_the_ota_partitions():
    # The host streams only manifests too large for a begin (an app image's is not); a node
    # given one anyway stages the image as from a manifest in one message, and leaves no slot
    root = scratch_dir()
    esp32 = _vb_esp32(root)
    a = Agent("n1", F.FLEET, root, Clock(), partition=esp32.Partition)
    begin, mc = _streamed(F.IMAGE_V6, step=100, files=False)[:2]
    image = unhexlify(F.FW_FILES_HEX["app.bin"])
    fc = [
        json.dumps({"op": "file", "name": "app.bin", "off": off, "data": b2a_base64(image[off : off + 600]).decode()})
        for off in range(0, len(image), 600)
    ]
    got = _send(a, [begin] + mc + [c.encode() for c in fc] + [b'{"op": "end"}'])
    eq(got, [("accepted", None), ("staged", None)], "staged")
    eq(esp32.ota_state()["state"][1], "new", "set_boot on ota_1")
    eq([n for n in os.listdir(root + "/fw") if n in ("a", "b")], [], "no slot: the image is in its partition")
