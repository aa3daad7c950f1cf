"""Grants for workers on other hosts: the control side's exchange URL and key, and one job's grants.

Configured by LABGATE_EXCHANGE_URL (the web's exchange route as the workers reach it, e.g.
http://control.lab:8080/exchange). Unset: workers share the control side's artifact store, as on one host.
The key lives in the data dir, made on first use and readable by its owner only: the web (which checks
grants) and the control worker (which issues them) share that dir; no job worker is ever given it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.core.signed_urls import ANY_DIGEST, DOWNLOAD, UPLOAD, Grant, is_digest, sign
from bot.host.config import Config
from workers.app import VISIBILITY_MARGIN_S
from workers.spec import Exchange

EXCHANGE_URL_ENV = "LABGATE_EXCHANGE_URL"
KEY_FILE = "exchange.key"
UPLOADS_DIR = "exchange-uploads"  # job-<id>/<digest>: what each job uploaded
# A grant must outlive the job's wait in its queue and one redelivery of the same message (a
# redelivery keeps the spec, and so its grants): an hour of queueing on top of the longest job and
# the broker's visibility timeout. Past that a job fails as ours and is dispatched anew with fresh grants.
QUEUE_ALLOWANCE_S = 3600


def exchange_url() -> str | None:
    return os.environ.get(EXCHANGE_URL_ENV) or None


def exchange_key(data_dir: Path) -> bytes:
    """The control side's signing key (32 random bytes), made once, atomically, mode 0600."""
    path = data_dir / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / f".{KEY_FILE}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # the first writer wins; a racing one reads the winner's key
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_bytes()


def grant_lifetime_s(config: Config) -> int:
    return max(config.caps.max_build_s, config.caps.max_job_s) + VISIBILITY_MARGIN_S + QUEUE_ALLOWANCE_S


def upload_cap_bytes(config: Config) -> int:
    """The most one upload may hold: an artifact, or a test's log (its console and runner port, each
    capped at max_log_bytes), with room for labgate's own lines."""
    caps = config.caps
    return max(caps.max_artifact_bytes, 2 * caps.max_log_bytes + (64 << 10))


def record_upload(data_dir: Path, job_id: int, digest: str) -> None:
    """Note that this job uploaded this blob (the exchange route calls it once the blob is stored)."""
    mark = data_dir / UPLOADS_DIR / f"job-{job_id}" / digest
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()


class UploadLedger:
    """What one job's uploads hold together, kept in one small file (read once per upload, however many
    blobs the job sent: a change's build can name thousands of tiny artifacts)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        self.bytes = int(text) if text.isdigit() else 0

    def add(self, size: int) -> None:
        self.bytes += size
        os.pwrite(self._fd, f"{self.bytes:020d}".encode(), 0)  # fixed width: overwritten in place, never shorter


@contextmanager
def upload_ledger(data_dir: Path, job_id: int) -> Iterator[UploadLedger | None]:
    """The job's ledger, held (a non-blocking lock) while one upload's bytes arrive; None while another upload
    of the job holds it. Uploads in parallel would each be checked against what the job had stored before
    any of them finished, and together pass its total."""
    path = data_dir / UPLOADS_DIR / f"job-{job_id}.bytes"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield UploadLedger(fd)
    finally:
        os.close(fd)  # releases the lock


def uploaded_by(data_dir: Path, job_id: int, digests: Iterable[str]) -> list[str]:
    """Those of the digests that this job uploaded. A result names digests in the worker's words: a hostile
    build worker could name another pipeline's blob as its artifact, and have a lab host fetch it."""
    made = data_dir / UPLOADS_DIR / f"job-{job_id}"
    return [digest for digest in digests if is_digest(digest) and (made / digest).is_file()]


def upload_total_bytes(config: Config) -> int:
    """The most one job's uploads may hold together: a build's artifacts and one more upload's worth (its log;
    a checkout's bundle, a test's log are one upload)."""
    return config.caps.max_artifacts_bytes + upload_cap_bytes(config)


def job_exchange(config: Config, data_dir: Path, job_id: int, downloads: Iterable[str], *,
                 made_by: int | None = None, now: float | None = None) -> Exchange | None:  # fmt: skip
    """This job's grants: a download grant per input digest, an upload grant capped in bytes; None when
    no exchange is configured. With `made_by`, only inputs that job uploaded are granted: the others are
    not fetched, and the job fails as ours."""
    base_url = exchange_url()
    if base_url is None:
        return None
    if made_by is not None:
        downloads = uploaded_by(data_dir, made_by, downloads)
    key = exchange_key(data_dir)
    expires = int(now if now is not None else time.time()) + grant_lifetime_s(config)
    cap = upload_cap_bytes(config)
    return Exchange(
        base_url=base_url,
        downloads={digest: sign(key, Grant(DOWNLOAD, digest, job_id, expires)) for digest in dict.fromkeys(downloads)},
        upload_query=sign(key, Grant(UPLOAD, ANY_DIGEST, job_id, expires, cap, upload_total_bytes(config))),
        upload_max_bytes=cap,
    )
