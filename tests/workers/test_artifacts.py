"""Content-addressed artifact store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workers.artifacts import ArtifactStore


def test_put_get_and_dedup(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    digest = store.put_bytes(b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert store.put_bytes(b"hello") == digest
    source = tmp_path / "f"
    source.write_bytes(b"hello")
    assert store.put_file(source) == digest
    assert store.get_bytes(digest) == b"hello"
    assert store.path_of(digest).stat().st_mode & 0o222 == 0  # stored read-only
    assert not list(store.path_of(digest).parent.glob(".tmp-*"))


def test_materialize_keeps_the_exec_bit(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "a")
    digest = store.put_bytes(b"#!/bin/sh\n")
    store.materialize(digest, tmp_path / "out" / "tool", 0o755)
    store.materialize(digest, tmp_path / "out" / "data", 0o644)
    assert (tmp_path / "out" / "tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "data").read_bytes() == b"#!/bin/sh\n"


@pytest.mark.parametrize("digest", ["", "xyz", "A" * 64, "../" + "a" * 61])
def test_digests_are_checked(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        ArtifactStore(tmp_path).path_of(digest)
