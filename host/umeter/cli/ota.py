"""`umeter ota`: sign a firmware build and push it to nodes in staged campaigns."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import ui
from ..errors import ConfigError, PolicyError
from ..signing import Keystore, make_manifest, make_target, sha256_hex, sign_bundle
from ..when import parse_duration
from .policy import push_bundle, push_options, sign_options, target_options


def read_build(build_dir: Path) -> tuple[dict[str, bytes], dict]:
    """Files of a build directory and its build info. With a `manifest.json` (the output of
    `umeter build`: {"version": ..., "files": {path: {"sha256", "size"}}}) exactly the files it
    lists, each checked against its hash; without one, every file under the directory."""
    if build_dir.is_file() and build_dir.suffix == ".bin":
        # an ESP32 app image (.app-bin): the full-image path through the OTA partitions
        return {build_dir.name: build_dir.read_bytes()}, {"version": build_dir.stem, "image": "app"}
    if not build_dir.is_dir():
        raise ConfigError(
            f"{build_dir} is not a directory", hint="give the output directory of `umeter build`, or an app image .bin"
        )
    mf = build_dir / "manifest.json"
    if mf.exists():
        try:
            info = json.loads(mf.read_text())
            listed = info["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise PolicyError(f"{mf}: not a build manifest ({e})", hint="rebuild with `umeter build`") from None
        files = {}
        for name, fi in listed.items():
            p = build_dir / name
            if not p.exists():
                raise PolicyError(f"{mf} lists {name}, which is missing", hint="rebuild with `umeter build`")
            data = p.read_bytes()
            want = fi.get("sha256") if isinstance(fi, dict) else fi
            if want and sha256_hex(data) != want:
                raise PolicyError(
                    f"{name} does not match the build manifest's hash", hint="rebuild; do not edit builds"
                )
            files[name] = data
        build = {k: v for k, v in info.items() if k != "files"}
    else:
        # no manifest: a tree of firmware modules (.py / .mpy) is signed as it is; anything
        # else is not a build (`umeter ota sign /tmp` must not try to sign the temp directory)
        paths = [p for p in sorted(build_dir.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
        other = [p for p in paths if p.suffix not in (".py", ".mpy")]
        if other or not paths:
            what = (
                f"files that are not firmware modules, e.g. {other[0].relative_to(build_dir)}" if other else "nothing"
            )
            raise ConfigError(
                f"{build_dir} is not a build directory (no manifest.json, and it holds {what})",
                hint="give the output directory of `umeter build`, or an app image .bin",
            )
        files = {str(p.relative_to(build_dir)): p.read_bytes() for p in paths}
        build = {"version": "unversioned"}
    if not files:
        raise PolicyError(f"{build_dir} holds no files", hint="build first: umeter build")
    return files, build


@click.group("ota")
def command() -> None:
    """Firmware updates: signed builds, staged rollout, automatic rollback on the node."""


@command.command("sign")
@click.argument("build_dir", type=click.Path(path_type=Path))
@sign_options
@target_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def sign_cmd(build_dir, fleet, version, expires, campaign, keystore, nodes, groups, all_nodes, output) -> None:
    """Sign a firmware build (a `umeter build` directory) or an ESP32 app image (.bin) as a bundle."""
    files, build = read_build(build_dir)
    key = Keystore(keystore).load(fleet)
    man = make_manifest(
        "firmware",
        fleet,
        version,
        files,
        make_target(list(nodes), list(groups), all_nodes),
        key=key,
        expires_s=parse_duration(expires),
        campaign=campaign,
        build=build,
    )
    env = sign_bundle(key, man, files)
    from ..campaign import MANIFEST_MAX

    mtext = json.loads(env)["m"].encode()
    if len(mtext) > MANIFEST_MAX:
        raise PolicyError(
            f"the manifest is {len(mtext)} bytes; a node takes at most {MANIFEST_MAX}",
            hint="target groups rather than a long list of nodes (--group), or ship fewer files",
        )
    output.write_bytes(env)
    size = sum(len(d) for d in files.values())
    ui.out.print(
        f"Signed firmware {build.get('version')} as v{version}: {len(files)} files "
        f"({size / 1024:.1f} KiB) -> {output}.",
        markup=False,
    )


@command.command("push")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@push_options(timeout=300.0)  # a node reboots and passes (or fails) its health check per stage
def push_cmd(
    bundle, nodes, nodes_file, sites, fleet_nodes, broker, prefix, canary, batch, halt, timeout, cid, db, as_json
):
    """Push a signed firmware bundle in stages; a node that fails its health check rolls back.

    Every message fits a node's 1-KB receive buffer: a bundle goes inline when it is small,
    else its files (and, for a build of more than a few files, its manifest first) go in
    chunks, each node kept at most 256 messages ahead of its progress reports."""
    push_bundle("firmware", bundle, nodes, nodes_file, broker, prefix, canary, batch, halt, timeout, cid, db, as_json,
                sites, fleet_nodes)  # fmt: skip
