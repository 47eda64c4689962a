# Every parser of outside bytes, fuzzed on the MicroPython unix port with a small budget in a
# 256k heap (no more than the sim board's; fuzzing.py; `python benchmarks/fuzz.py` runs a large
# budget at the sim board's heap).  Each test fails on an exception the parser does not
# document, or on a heap that keeps growing.
from fuzzing import run

from mptest import eq, heap, scratch_dir, timeout

N = 300
HEAP_BOUND = 24 * 1024  # bytes the heap may rise over the run after the warm-up


async def _check(name, n=N):
    r = await run(name, n, seed=7, scratch=scratch_dir(), warmup=100)
    eq((r["uncaught"], r["examples"]), (0, []), "%s: uncaught exceptions" % name)
    eq(r["heap_growth_bytes"] < HEAP_BOUND, True, "%s: heap grew %d bytes" % (name, r["heap_growth_bytes"]))


@heap("256k")
@timeout(120)
async def test_fuzz_mqtt_packets():
    await _check("mqtt_packets")


@heap("256k")
@timeout(120)
async def test_fuzz_modem_lines():
    await _check("modem_lines")


@heap("256k")
@timeout(120)
async def test_fuzz_command_envelopes():
    await _check("command_envelopes")


@heap("256k")
@timeout(120)
async def test_fuzz_policy_bundles():
    await _check("policy_bundles")


@heap("256k")
@timeout(120)
async def test_fuzz_ota_messages():
    await _check("ota_messages")


@heap("256k")
@timeout(120)
async def test_fuzz_small_frames_and_lora_downlinks():
    await _check("small_frames")


@heap("256k")
@timeout(120)
async def test_fuzz_lora_frames():
    await _check("lora_frames")


@heap("256k")
@timeout(120)
async def test_fuzz_stored_records():
    await _check("stored_records", 150)
