"""Content-addressed artifact store: sha256 digests under the data dir."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PRUNING_PREFIX = ".prune-"  # a blob being deleted (delete_if_idle)
# Temporary names in the store's directories: writes under way (or that died), deletions cut short.
LEFTOVER_PREFIXES = (".in-", ".tmp-", PRUNING_PREFIX)


class BlobRefused(ValueError):
    """Bytes that arrived for a digest do not hash to it, or are more than allowed: nothing was stored."""


class BlobTooLarge(BlobRefused):
    """More bytes arrived than the receiver allows."""


class Receiving:
    """Bytes arriving for one expected digest, written under a temporary name: visible under the digest
    only once they all hashed to it (ArtifactStore.receive)."""

    def __init__(self, handle: BinaryIO, digest: str, limit: int) -> None:
        self._handle, self._digest, self._limit = handle, digest, limit
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> None:
        self.size += len(block)
        if self.size > self._limit:
            raise BlobTooLarge(f"more than {self._limit} bytes for {self._digest[:12]}")
        self._sha.update(block)
        self._handle.write(block)

    def check(self) -> None:
        if self._sha.hexdigest() != self._digest:
            raise BlobRefused(f"the bytes received hash to {self._sha.hexdigest()[:12]}, not {self._digest[:12]}")


class ArtifactStore:
    """Files named by the sha256 of their content; writes are atomic, duplicates free."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path_of(digest).exists()

    def touch(self, digest: str) -> bool:
        """Whether the blob is there; if so its mtime is made now. A put that finds its blob stored writes
        nothing, so this is what tells the retention's sweep (`delete_if_idle`) that it is wanted again;
        so does anyone who takes up a blob an older row names (a shared build's result)."""
        try:
            os.utime(self.path_of(digest))
        except FileNotFoundError:
            return False
        except PermissionError:
            return True  # another user's blob (read-only to us): there, and its owner's puts refresh it
        return True

    def delete_if_idle(self, digest: str, *, idle_before: float) -> int | None:
        """Delete the blob if its mtime is before `idle_before` (epoch seconds); the bytes freed, or None
        when it is missing or was touched since. It is renamed aside first and its mtime read again after:
        a put that refreshed it before the rename is seen and the blob put back; one after the rename finds
        no file and writes it anew. Either way a blob someone has just asked for is never left missing."""
        final = self.path_of(digest)
        aside = final.with_name(f"{PRUNING_PREFIX}{final.name}-{os.getpid()}")
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return None
        stat = os.stat(aside)
        if stat.st_mtime >= idle_before:
            with contextlib.suppress(FileExistsError):  # a put wrote it again meanwhile: the same bytes
                os.link(aside, final)
            os.unlink(aside)
            return None
        os.unlink(aside)
        return stat.st_size

    def sweep_leftovers(self, *, idle_before: float) -> int:
        """Remove temporary files (uploads and puts that died, deletions cut short) untouched since
        `idle_before`; how many. A write in progress touches its file with every block."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for entry in [*self.root.glob(".*"), *self.root.glob("*/.*")]:
            if entry.name.startswith(LEFTOVER_PREFIXES) and entry.lstat().st_mtime < idle_before:
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if not self.touch(digest):
            self._commit(digest, lambda handle: handle.write(data))
        return digest

    def put_durable(self, blobs: Sequence[bytes]) -> list[str]:
        """Store each blob and return once all of them are on disk, so that a database row may name them.

        New blobs are written under temporary names, made durable, only then renamed to their digest (a
        name that exists is taken to hold its whole content: after a crash it must never name a file the
        disk had not got), then the names are made durable. Where the kernel has syncfs (Linux), each step
        is one sync of the store's filesystem for the whole batch; a file and a directory fsync per blob
        (~100 for a batch of 50 mboxes) were most of the Patchwork poller's staging time. The price: a
        syncfs also writes out what others have dirtied on that filesystem (a build's disk image, when
        it shares it), which the kernel would write within its 30 s dirty expiry anyway; the poller's
        staging thread waits for it, no job does. Elsewhere: each file, then each directory, fsynced. A
        blob that was there already is made durable too, in case a `put_bytes` (which does not sync)
        wrote it a moment ago."""
        digests = [hashlib.sha256(data).hexdigest() for data in blobs]
        fresh: dict[str, bytes] = {}
        for digest, data in zip(digests, blobs, strict=True):
            if digest not in fresh and not self.touch(digest):
                fresh[digest] = data
        self.root.mkdir(parents=True, exist_ok=True)
        if _can_syncfs():
            self._commit_synced(fresh, lambda _: _syncfs(self.root))
            _syncfs(self.root)
            return digests
        self._commit_synced(fresh, _fsync_each)
        for digest in set(digests) - set(fresh):
            _fsync(self.path_of(digest))
        for directory in {self.path_of(digest).parent for digest in digests}:
            _fsync(directory)
        return digests

    def put_file(self, path: Path) -> str:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
        if not self.touch(digest):
            self._commit(digest, lambda out: _copy_into(path, out))
        return digest

    def put_fd(self, fd: int, *, limit: int) -> str:
        """Store what an open file holds, reading at most limit bytes (ValueError past it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.root, prefix=".in-")
        sha = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(handle, "wb") as out:
                while block := os.read(fd, 1 << 20):
                    size += len(block)
                    if size > limit:
                        raise ValueError(f"file grew past {limit} bytes while being stored")
                    sha.update(block)
                    out.write(block)
            digest = sha.hexdigest()
            if self.touch(digest):
                os.unlink(tmp)
            else:
                final = self.path_of(digest)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o444)
                os.replace(tmp, final)
            return digest
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def receive(self, digest: str, *, limit: int) -> Iterator[Receiving]:
        """Take bytes that must hash to `digest` (at most `limit` of them): they become visible under it
        when the block ends, only if they do; otherwise BlobRefused and nothing is left behind."""
        final = self.path_of(digest)  # refuses anything but a digest before a file is made
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".in-")
        try:
            with os.fdopen(fd, "wb") as handle:
                receiving = Receiving(handle, digest, limit)
                yield receiving
            receiving.check()
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, digest: str) -> bytes:
        return self.path_of(digest).read_bytes()

    def materialize(self, digest: str, dest: Path, mode: int = 0o644) -> None:
        """Place a copy at dest; a hard link when possible (stored files are read-only)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        source = self.path_of(digest)
        if mode & 0o111:
            shutil.copyfile(source, dest)  # a link would share the executable bit
            dest.chmod(mode)
            return
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)

    def _commit_synced(self, blobs: dict[str, bytes], make_durable: Callable[[list[Path]], object]) -> None:
        """Write each (digest, data) under a temporary name, make them durable, then rename each to its digest."""
        temporary: dict[str, str] = {}
        try:
            for digest, data in blobs.items():
                final = self.path_of(digest)
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, temporary[digest] = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            make_durable([Path(tmp) for tmp in temporary.values()])
            for digest in list(temporary):
                os.chmod(temporary[digest], 0o444)
                os.replace(temporary.pop(digest), self.path_of(digest))
        except BaseException:
            for tmp in temporary.values():
                Path(tmp).unlink(missing_ok=True)
            raise

    def _commit(self, digest: str, write: Callable[[BinaryIO], object]) -> None:
        final = self.path_of(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()


def _can_syncfs() -> bool:
    return _SYNCFS is not None


def _syncfs(root: Path) -> None:
    """Write out everything dirty on the filesystem that holds `root` (syncfs(2))."""
    assert _SYNCFS is not None
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs of {root}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _fsync_each(paths: list[Path]) -> None:
    for path in paths:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_into(path: Path, handle: BinaryIO) -> None:
    with path.open("rb") as source:
        shutil.copyfileobj(source, handle)
