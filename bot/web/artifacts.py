"""A job's artifacts and log for people, streamed from the artifact store behind the access check.

An artifact is found by its path among the job's recorded outputs, and only there: the path is a key,
never joined onto a directory, and the digest it names must be a sha256 digest before the store is asked.
A build writes whatever it likes into its files, so none is ever served as a page of our origin: text is
text/plain, everything else an octet-stream attachment, always with nosniff and a sandboxing CSP.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from bot.core.signed_urls import is_digest
from bot.host.stores import Runtime
from bot.pipelines.retention import pruned_on
from bot.store.models import Job
from bot.web.access import Grant, ScopeOf, not_found, pipeline_route

ARTIFACT_ROUTE = "/jobs/{job_id}/artifacts/{path:path}"
LOG_ROUTE = "/jobs/{job_id}/log"
BLOCK = 256 * 1024
TEXT_TYPE = "text/plain; charset=utf-8"
BINARY_TYPE = "application/octet-stream"
# Files a kernel build leaves that people read in a browser; anything else is downloaded.
TEXT_NAMES = frozenset({".config", "System.map", "Module.symvers", "modules.order"})
TEXT_SUFFIXES = (".log", ".txt", ".config")
# Even were a browser to take a file for a page: no script, no plugin, no same-origin access.
SAFE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'"}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class ArtifactEntry:
    """One artifact as the job page lists it."""

    path: str
    href: str  # the route's path for it, quoted (the page adds the link token)
    size: int | None  # None: not in the store


def is_text(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name in TEXT_NAMES or name.endswith(TEXT_SUFFIXES)


def recorded_digest(outputs: dict[str, Any], path: str) -> str | None:
    """The digest the job's outputs record for `path`, if they record a well-formed one."""
    artifacts = outputs.get("artifacts")
    ref = artifacts.get(path) if isinstance(artifacts, dict) else None
    digest = ref.get("digest") if isinstance(ref, dict) else None
    return digest if isinstance(digest, str) and is_digest(digest) else None


def artifact_listing(runtime: Runtime, job_id: int, outputs: dict[str, Any]) -> list[ArtifactEntry]:
    """The job's artifacts with their stored sizes, for its page."""
    artifacts = outputs.get("artifacts")
    entries = []
    for path in sorted(artifacts) if isinstance(artifacts, dict) else ():
        digest = recorded_digest(outputs, path)
        size = _size(runtime, digest) if digest is not None else None
        entries.append(ArtifactEntry(str(path), f"/jobs/{job_id}/artifacts/{quote(str(path), safe='/')}", size))
    return entries


def blob_response(runtime: Runtime, digest: str, name: str) -> Response | None:
    """The blob streamed with its stored size as Content-Length; None when the store does not hold it.
    It is opened before the answer starts and read from that descriptor: a prune meanwhile cannot cut it."""
    try:
        fd = os.open(runtime.artifacts.path_of(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (OSError, ValueError):  # missing; or a link planted where a blob should be (ELOOP): never followed
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    filename = _UNSAFE_FILENAME.sub("_", name.rsplit("/", 1)[-1]) or "artifact"
    text = is_text(name)
    headers = {**SAFE_HEADERS, "Content-Length": str(info.st_size),
               "Content-Disposition": f'{"inline" if text else "attachment"}; filename="{filename}"'}  # fmt: skip
    return StreamingResponse(_blocks(fd), media_type=TEXT_TYPE if text else BINARY_TYPE, headers=headers)


def artifact_routes(runtime: Runtime, scope_of_job: ScopeOf) -> list[Route]:
    """A job's artifact by its path in the job, and its log; each through the access check."""

    async def artifact(request: Request, ids: dict[str, int], _: Grant) -> Response:
        path = str(request.path_params.get("path", ""))
        outputs = _outputs(runtime, ids["job_id"])
        digest = recorded_digest(outputs, path) if outputs is not None else None
        if outputs is None or digest is None:
            return not_found()
        return blob_response(runtime, digest, path) or _gone(outputs)

    async def log(_: Request, ids: dict[str, int], __: Grant) -> Response:
        with runtime.store.session() as session:
            job = session.get(Job, ids["job_id"])
            if job is None or not job.log_digest or not is_digest(job.log_digest):
                return not_found()
            digest, outputs = job.log_digest, dict(job.outputs)
        return blob_response(runtime, digest, "build.log") or _gone(outputs)

    return [pipeline_route(runtime, LOG_ROUTE, scope_of_job, log),
            pipeline_route(runtime, ARTIFACT_ROUTE, scope_of_job, artifact)]  # fmt: skip


def _outputs(runtime: Runtime, job_id: int) -> dict[str, Any] | None:
    with runtime.store.session() as session:
        job = session.get(Job, job_id)
        return dict(job.outputs) if job is not None else None


def _gone(outputs: dict[str, Any]) -> Response:
    """A recorded blob the store no longer holds: pruned (say when), or lost."""
    when = pruned_on(outputs)
    if when is None:
        return not_found()
    return PlainTextResponse(f"artifacts pruned on {when} by the retention policy\n", status_code=410)


def _size(runtime: Runtime, digest: str) -> int | None:
    try:
        return runtime.artifacts.path_of(digest).stat().st_size
    except FileNotFoundError:
        return None


def _blocks(fd: int) -> Iterator[bytes]:
    try:
        while block := os.read(fd, BLOCK):
            yield block
    finally:
        os.close(fd)
