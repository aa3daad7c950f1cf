"""A job's blobs to and from the control side over HTTP, for workers that share no disk with it.

The JobSpec's Exchange holds grants for this job only (bot/core/signed_urls.py). Inputs (patches, the
source bundle, a build's artifacts) are fetched into the worker's own store before the job runs, each
visible under its digest only once its bytes hashed to it; outputs (the log, a build's artifacts, the
checkout's bundle) are uploaded after it, and the control side stores each only under the sha256 of
what it received.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx

from workers.artifacts import ArtifactStore, BlobRefused
from workers.errors import InfraError
from workers.spec import Exchange, JobResult, JobSpec

log = logging.getLogger(__name__)
TIMEOUT_S = 60.0  # per read or write, not for a whole transfer: a kernel image streams for longer
BLOCK = 1 << 20
# A download's bytes are capped too: a control side that streams without end must not fill the disk.
MAX_DOWNLOAD_BYTES = 4 << 30


def blob_url(exchange: Exchange, digest: str, query: str) -> str:
    return f"{exchange.base_url.rstrip('/')}/{digest}?{query}"


def fetch(exchange: Exchange, digest: str, store: ArtifactStore, client: httpx.Client) -> None:
    """Put the blob into the local store, verified against its digest (InfraError if it cannot be)."""
    if store.has(digest):  # what is in the local store was verified when it arrived
        return
    query = exchange.downloads.get(digest)
    if query is None:
        raise InfraError(f"the job was given no grant to fetch {digest[:12]}")
    try:
        with client.stream("GET", blob_url(exchange, digest, query)) as response:
            if response.status_code != 200:
                raise InfraError(f"fetching {digest[:12]}: the control side answered {response.status_code}")
            with store.receive(digest, limit=MAX_DOWNLOAD_BYTES) as receiving:
                for block in response.iter_bytes(BLOCK):
                    receiving.write(block)
    except BlobRefused as exc:
        raise InfraError(f"fetching {digest[:12]}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise InfraError(f"fetching {digest[:12]}: {type(exc).__name__}: {exc}") from exc


def upload(exchange: Exchange, digest: str, store: ArtifactStore, client: httpx.Client) -> None:
    """Send a blob of the local store to the control side (InfraError unless it stored it)."""
    path = store.path_of(digest)
    size = path.stat().st_size
    if size > exchange.upload_max_bytes:
        raise InfraError(f"uploading {digest[:12]}: {size} bytes, the job may upload {exchange.upload_max_bytes}")
    try:
        response = client.put(blob_url(exchange, digest, exchange.upload_query), content=_read(path),
                              headers={"Content-Length": str(size)})  # fmt: skip
    except httpx.HTTPError as exc:
        raise InfraError(f"uploading {digest[:12]}: {type(exc).__name__}: {exc}") from exc
    if response.status_code not in (200, 201):
        raise InfraError(f"uploading {digest[:12]}: the control side answered {response.status_code}: "
                         f"{response.text[:200]}")  # fmt: skip


def _read(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            yield block


def output_digests(result: JobResult) -> list[str]:
    """What of a job's result names the worker's store: its log, a build's artifacts, a checkout's bundle."""
    digests = [result.log_digest] if result.log_digest else []
    artifacts = result.outputs.get("artifacts")
    if isinstance(artifacts, dict):
        digests += [str(ref["digest"]) for ref in artifacts.values() if isinstance(ref, dict) and "digest" in ref]
    bundle = result.outputs.get("bundle_digest")
    if isinstance(bundle, str):
        digests.append(bundle)
    return list(dict.fromkeys(digests))


def client() -> httpx.Client:
    return httpx.Client(timeout=httpx.Timeout(TIMEOUT_S), follow_redirects=False)


def fetch_inputs(spec: JobSpec, store: ArtifactStore) -> None:
    """Every blob the job was granted, into the local store, before the job runs."""
    assert spec.exchange is not None
    with client() as http:
        for digest in spec.exchange.downloads:
            fetch(spec.exchange, digest, store, http)


def publish_outputs(spec: JobSpec, result: JobResult, store: ArtifactStore) -> None:
    """Every blob the result names, to the control side, before the result is sent."""
    assert spec.exchange is not None
    with client() as http:
        for digest in output_digests(result):
            upload(spec.exchange, digest, store, http)
