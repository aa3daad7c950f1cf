"""The public keys a tree trusts for patatt attestation: a directory in patatt's layout, or a mapping.

The identity and selector a look-up is for come from the mail (i= and s= of X-Developer-Signature),
so they are attacker-controlled. patatt's own path helpers quote slashes but leave `..` as it is:
`i=..@..` would climb out of the keyring. Here both are checked for shape first, and the file found
must still lie inside the keyring once symlinks are resolved.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path

import patatt

# What patatt can check without running another program: ed25519 (PyNaCl). openpgp needs gpg and
# openssh needs ssh-keygen; labgate runs neither on a mail, so those keys are looked up (to say
# which is missing) but never used.
SUPPORTED_ALGORITHMS = ("ed25519",)
KNOWN_ALGORITHMS = ("ed25519", "openpgp", "openssh")
MAX_KEY_BYTES = 64 * 1024
ED25519_KEY_BYTES = 32

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


def plain_address(identity: str) -> tuple[str, str] | None:
    """(local, domain) of a plain ASCII address with no empty or dot-only parts; None otherwise."""
    local, at, domain = identity.rpartition("@")
    if not at or not _LOCAL.match(local) or not _DOMAIN.match(domain):
        return None
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    return local, domain


class Keyring:
    """Public keys by (algorithm, identity, selector). Build it with `from_directory` or `from_mapping`."""

    def __init__(self, *, directory: Path | None = None, ed25519_keys: Mapping[str, str] | None = None) -> None:
        self._directory = directory.resolve() if directory is not None else None
        self._ed25519: dict[str, bytes] = {}
        for address, key in (ed25519_keys or {}).items():
            if plain_address(address) is None:
                raise ValueError(f"keyring: {address!r} is not a plain mail address")
            self._ed25519[address.casefold()] = _ed25519_key(address, key)

    @classmethod
    def from_directory(cls, directory: Path) -> Keyring:
        """A keyring in patatt's layout: `<algo>/<domain>/<local>/<selector>` (or `by-hash/`), as
        `patatt genkey` and the kernel's pgpkeys repository lay it out."""
        if not directory.is_dir():
            raise ValueError(f"keyring directory {directory} does not exist or is not a directory")
        return cls(directory=directory)

    @classmethod
    def from_mapping(cls, ed25519_keys: Mapping[str, str]) -> Keyring:
        """Address -> base64 ed25519 public key (what `patatt genkey` writes to the .pub file).
        A mapped key is that address's key whatever selector a signature names."""
        return cls(ed25519_keys=ed25519_keys)

    @classmethod
    def empty(cls) -> Keyring:
        return cls()

    def public_key(self, algorithm: str, identity: str, selector: str) -> bytes | None:
        """The key for `identity` (an address) under `selector`, or None when the keyring has none
        or the names are not ones a keyring can hold."""
        if algorithm not in KNOWN_ALGORITHMS or plain_address(identity) is None or not _SELECTOR.match(selector):
            return None
        if algorithm == "ed25519" and identity.casefold() in self._ed25519:
            return self._ed25519[identity.casefold()]
        if self._directory is None:
            return None
        for relative in (patatt.make_pkey_path(algorithm, identity, selector),
                         patatt.make_byhash_path(algorithm, identity, selector)):  # fmt: skip
            found = self._read_inside(self._directory / relative)
            if found is not None:
                return found
        return None

    def _read_inside(self, path: Path) -> bytes | None:
        assert self._directory is not None
        try:
            resolved = path.resolve(strict=True)
        except OSError:
            return None
        if not resolved.is_relative_to(self._directory) or not resolved.is_file():
            return None
        if resolved.stat().st_size > MAX_KEY_BYTES:
            return None
        return resolved.read_bytes().strip()


def _ed25519_key(address: str, key: str) -> bytes:
    try:
        raw = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"keyring: the key for {address} is not base64: {error}") from None
    if len(raw) != ED25519_KEY_BYTES:
        raise ValueError(f"keyring: the key for {address} is {len(raw)} bytes, an ed25519 key is 32")
    return key.strip().encode("ascii")
