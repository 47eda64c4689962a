"""The signed bundles the firmware tests use (tests/firmware/bundle_fixture.py) are what the
host's signing code makes today: a change to the bundle format cannot leave the firmware
tests checking stale bundles."""

from __future__ import annotations

import importlib.util
from pathlib import Path

FW = Path(__file__).resolve().parents[1] / "firmware"


def _values(text: str) -> dict:
    ns: dict = {}
    exec(compile(text, "bundle_fixture", "exec"), ns)
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def test_committed_bundle_fixture_matches_a_fresh_signing_run():
    spec = importlib.util.spec_from_file_location("make_bundle_fixture", FW / "make_bundle_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fresh = _values(mod.render())
    committed = _values((FW / "bundle_fixture.py").read_text())
    assert sorted(fresh) == sorted(committed)
    stale = [k for k in fresh if fresh[k] != committed[k]]
    assert stale == [], f"regenerate with `python tests/firmware/make_bundle_fixture.py`: {stale}"
