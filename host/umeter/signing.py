"""The fleet's Ed25519 signing key and signed bundles (policy and firmware).

The private key lives in the host keystore, one PEM file per fleet, mode 0600:

    ks = Keystore()                      # $UMETER_KEYSTORE or $UMETER_HOME/fleet-keys
    key = ks.create("acme")              # refuses to overwrite an existing key
    env = sign_bundle(key, make_manifest("policy", "acme", 7, {"policy.json": data}, target))

The node checks what this writes with the firmware's own code (meternode.policy.bundle),
which the tests here run on CPython too. Envelope and manifest formats: docs/policy.md.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import stat
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meternode.policy import bundle as fw_bundle

from .errors import ConfigError, PolicyError

DEFAULT_EXPIRY_S = 7 * 86400


def default_keystore() -> Path:
    """$UMETER_KEYSTORE, else fleet-keys/ in the toolchain's state directory ($UMETER_HOME)."""
    env = os.environ.get("UMETER_KEYSTORE")
    if env:
        return Path(env)
    from .keystore import home

    return home() / "fleet-keys"


def _check_fleet(fleet: str) -> str:
    if not fleet or not all(c.isalnum() or c in "-_" for c in fleet):
        raise ConfigError(f"bad fleet name {fleet!r}", hint="letters, digits, '-' and '_' only")
    return fleet


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey | bytes) -> str:
    raw = key if isinstance(key, bytes) else public_raw(key)
    return fw_bundle.key_id(raw)


def fleet_identity(key: Ed25519PrivateKey | Ed25519PublicKey, fleet: str, groups: list[str] | None = None) -> dict:
    """The `fleet` block of a node's config.json: what the node needs to check bundles."""
    raw = public_raw(key)
    return {"name": fleet, "groups": list(groups or []), "keys": {key_id(raw): raw.hex()}}


class Keystore:
    """A directory of fleet keys, `<fleet>.key` (PKCS#8 PEM, unencrypted, mode 0600)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_keystore()

    def key_path(self, fleet: str) -> Path:
        return self.path / f"{_check_fleet(fleet)}.key"

    def create(self, fleet: str) -> Ed25519PrivateKey:
        p = self.key_path(fleet)
        if p.exists():
            raise ConfigError(f"a key for fleet {fleet!r} already exists at {p}", hint="use it, or remove it first")
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return key

    def load(self, fleet: str) -> Ed25519PrivateKey:
        p = self.key_path(fleet)
        if not p.exists():
            raise ConfigError(
                f"no key for fleet {fleet!r} in {self.path}", hint=f"create one: umeter policy keygen {fleet}"
            )
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{p} is readable by others (mode {mode:o})", hint=f"chmod 600 {p}; the fleet key signs for every node"
            )
        try:
            key = serialization.load_pem_private_key(p.read_bytes(), password=None)
        except ValueError as e:
            raise ConfigError(f"{p} is not a PEM private key ({e})", hint="restore it from your backup") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{p} is not an Ed25519 key", hint="fleet keys are Ed25519")
        return key


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_target(nodes: list[str] | None = None, groups: list[str] | None = None, all_nodes: bool = False) -> dict:
    if all_nodes:
        return {"all": True}
    if not nodes and not groups:
        raise ConfigError("no target", hint="give --node, --group or --all")
    return {"nodes": list(nodes or []), "groups": list(groups or [])}


def make_manifest(
    kind: str,
    fleet: str,
    version: int,
    files: dict[str, bytes],
    target: dict,
    *,
    key: Ed25519PrivateKey | None = None,
    expires_s: int = DEFAULT_EXPIRY_S,
    now: float | None = None,
    campaign: str | None = None,
    build: dict | None = None,
    billing_tz: int | None = None,
) -> dict:
    """A manifest dict; the node re-checks every field (meternode.policy.bundle.check_manifest)."""
    if kind not in fw_bundle.KINDS:
        raise PolicyError(f"bundle kind {kind!r} is not one of {', '.join(fw_bundle.KINDS)}")
    if not isinstance(version, int) or version < 1:
        raise PolicyError(f"version {version!r} must be a whole number >= 1", hint="versions only go up")
    now = time.time() if now is None else now
    man = {
        "kind": kind,
        "fleet": _check_fleet(fleet),
        "target": target,
        "version": version,
        "created": int(now),
        "expires": int(now + expires_s),
        "files": {n: {"sha256": sha256_hex(d), "size": len(d)} for n, d in sorted(files.items())},
    }
    if key is not None:
        man["key"] = key_id(key)
    if campaign:
        man["campaign"] = campaign
    if build:
        man["build"] = build
    if billing_tz is not None:  # a policy that moves the nodes' billing time to its own (bundle.py)
        man["billing_tz"] = billing_tz
    try:
        fw_bundle.check_manifest(man)
    except fw_bundle.Rejected as e:
        raise PolicyError(f"the manifest would be refused by nodes: {e}") from None
    return man


def sign_bundle(key: Ed25519PrivateKey, manifest: dict, files: dict[str, bytes] | None = None) -> bytes:
    """The envelope bytes: manifest text, its signature, and `files` inline (base64)."""
    if "key" not in manifest:
        manifest = {**manifest, "key": key_id(key)}
    mtext = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
    sig = key.sign(fw_bundle.signed_digest(mtext))
    f = {n: base64.b64encode(d).decode() for n, d in (files or {}).items()}
    return json.dumps({"m": mtext, "s": sig.hex(), "f": f}, separators=(",", ":")).encode()


def read_envelope(data: bytes) -> tuple[dict, bytes, dict[str, bytes]]:
    """(manifest, signature, files) of an envelope, without checking it."""
    try:
        mtext, sig, f = fw_bundle.parse(data)
        return json.loads(mtext), sig, {n: base64.b64decode(v) for n, v in f.items()}
    except (fw_bundle.Rejected, ValueError) as e:
        raise PolicyError(f"not a bundle: {e}", hint="sign one with `umeter policy sign`") from None


@functools.lru_cache(maxsize=256)
def _usable_key(public: bytes) -> bool:
    from meternode.policy import ed25519

    return ed25519.check_public(public) is None


def crypto_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification through `cryptography` (same contract as meternode.policy.ed25519.verify).

    OpenSSL accepts signatures under small-order and non-canonically encoded public keys,
    which nodes refuse: the key is checked with the firmware's own check_public() first, so
    the fleet simulator never accepts what a node refuses."""
    if len(signature) != 64 or not _usable_key(bytes(public)):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(message))
        return True
    except Exception:
        return False
