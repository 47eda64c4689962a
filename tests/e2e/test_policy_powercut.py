"""Power cut during a policy apply: SIGKILL the unix port at every step of PolicyStore.apply
(and at random instants) and check the node comes back on the old or the new policy, whole,
never a mix."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

from umeter import unixport
from umeter.policy import compile_source

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "powercut_apply.py"


def _policy(name: str, n_tariffs: int) -> dict:
    tariffs = [f"t{k}" for k in range(n_tariffs)]
    day = [[f"{h:02d}:00", tariffs[h % n_tariffs]] for h in range(0, 24, 2)]
    return compile_source({"name": name, "tariffs": tariffs, "seasons": [{"start": "01-01", "weekday": day}]})


def _record(tmp: Path, version: int, name: str, n: int) -> Path:
    p = tmp / f"rec{version}.json"
    # manifest text padded so the file spans several 256-byte write chunks
    p.write_text(json.dumps({"version": version, "m": "x" * 900, "s": "00" * 64, "policy": _policy(name, n)}))
    return p


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, MICROPYPATH=unixport.micropypath())
    return subprocess.Popen(
        unixport.command(SCRIPT, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kw
    )


def _load(d: Path) -> dict:
    p = _run([str(d), "load"])
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


def _apply_and_kill(d: Path, rec: Path, at_step: int | None, delay_s: float | None = None) -> int:
    """Start an apply; SIGKILL it when it reports `at_step` (or after `delay_s`). Returns steps seen."""
    p = _run([str(d), "apply", str(rec), "5" if at_step is not None else "0"])
    seen = 0
    try:
        if at_step is None:
            try:
                p.wait(timeout=delay_s)
            except subprocess.TimeoutExpired:
                pass
        else:
            for line in p.stdout:
                if line.startswith("STEP"):
                    seen = int(line.split()[1])
                    if seen == at_step:
                        break
                if line.startswith("DONE"):
                    break
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(10)
        p.stdout.close()
    return seen


def test_power_cut_at_every_step_of_an_apply_leaves_old_or_new(tmp_path: Path) -> None:
    old, new = _record(tmp_path, 1, "old", 3), _record(tmp_path, 2, "new", 5)
    # count the steps of one uninterrupted apply over an existing policy
    probe = tmp_path / "probe"
    _apply_and_kill(probe, old, at_step=10**6)
    steps = _apply_and_kill(probe, new, at_step=10**6)
    assert steps >= 8, f"only {steps} pause points: the test would not cover the apply"
    outcomes = {}
    for k in range(1, steps + 1):
        d = tmp_path / f"cut{k}"
        _apply_and_kill(d, old, at_step=10**6)
        _apply_and_kill(d, new, at_step=k)
        got = _load(d)
        assert (got["version"], got["name"]) in ((1, "old"), (2, "new")), f"cut at step {k}: {got}"
        outcomes[k] = got["version"]
        # whatever survived, the store is clean and the next apply works
        left = sorted(os.listdir(d))
        assert "staged.tmp" not in left and "previous.tmp" not in left, left
        _apply_and_kill(d, _record(tmp_path, 3, "next", 2), at_step=10**6)
        assert _load(d)["version"] == 3
    # early cuts keep the old policy, the last one has the new: both outcomes really occur
    assert outcomes[1] == 1 and outcomes[steps] == 2, outcomes


def test_power_cut_at_random_instants_never_mixes(tmp_path: Path) -> None:
    old, new = _record(tmp_path, 1, "old", 3), _record(tmp_path, 2, "new", 5)
    rnd = random.Random(6)
    seen = set()
    for k in range(12):
        d = tmp_path / f"r{k}"
        _apply_and_kill(d, old, at_step=10**6)
        _apply_and_kill(d, new, at_step=None, delay_s=rnd.uniform(0.0, 0.03))
        got = _load(d)
        assert (got["version"], got["name"]) in ((1, "old"), (2, "new")), got
        seen.add(got["version"])
    assert seen, "no outcome recorded"
