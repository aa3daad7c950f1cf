"""Content-addressed artifact store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workers import artifacts
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


def test_put_durable_without_syncfs_syncs_each_blob_before_its_name_appears_then_each_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(artifacts, "_SYNCFS", None)  # as on a kernel without syncfs(2)
    store = ArtifactStore(tmp_path / "a")
    old = store.put_bytes(b"there already, written by a put that does not sync")
    synced: list[tuple[Path, bool]] = []  # (path, whether any digest name of the new blobs exists yet)
    new = [hashlib.sha256(data).hexdigest() for data in (b"one", b"two")]

    def fsync(path: Path) -> None:
        synced.append((path, any(store.has(digest) for digest in new)))

    monkeypatch.setattr(artifacts, "_fsync", fsync)
    digests = store.put_durable([b"one", b"two", b"one", b"there already, written by a put that does not sync"])
    assert digests == [new[0], new[1], new[0], old]
    assert [store.get_bytes(digest) for digest in new] == [b"one", b"two"]
    temporary = [(path, named) for path, named in synced if path.name.startswith(".tmp-")]
    assert len(temporary) == 2 and not any(named for _, named in temporary)  # data on disk before the rename
    assert (store.path_of(old), True) in synced  # a blob that was there is synced too
    directories = [path for path, _ in synced if path.is_dir()]
    assert sorted(directories) == sorted({store.path_of(d).parent for d in digests})  # each once, after the renames
    assert synced.index((directories[0], True)) > synced.index(temporary[-1])
    assert not list((tmp_path / "a").rglob(".tmp-*"))


def test_put_durable_syncs_the_filesystem_once_before_any_name_appears_and_once_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert artifacts._can_syncfs(), "Linux has syncfs(2)"
    store = ArtifactStore(tmp_path / "a")
    new = [hashlib.sha256(data).hexdigest() for data in (b"one", b"two")]
    seen: list[tuple[bool, int]] = []  # (any new name there yet, temporary files there)
    real_syncfs = artifacts._syncfs

    def syncfs(root: Path) -> None:
        real_syncfs(root)  # the real system call: it must accept the store's root
        seen.append((any(store.has(d) for d in new), len(list(root.rglob(".tmp-*")))))

    monkeypatch.setattr(artifacts, "_syncfs", syncfs)
    assert store.put_durable([b"one", b"two", b"one"]) == [new[0], new[1], new[0]]
    assert seen == [(False, 2), (True, 0)]  # the data, every blob's at once, then the names
    assert [store.get_bytes(d) for d in new] == [b"one", b"two"]


@pytest.mark.parametrize("without_syncfs", [False, True])
def test_put_durable_leaves_no_temporary_file_when_a_sync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, without_syncfs: bool
) -> None:
    store = ArtifactStore(tmp_path / "a")

    def fail(path: Path) -> None:
        raise OSError("no space left on device")

    if without_syncfs:
        monkeypatch.setattr(artifacts, "_SYNCFS", None)
    monkeypatch.setattr(artifacts, "_fsync", fail)
    monkeypatch.setattr(artifacts, "_syncfs", fail)
    with pytest.raises(OSError):
        store.put_durable([b"one", b"two"])
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
