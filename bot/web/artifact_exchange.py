"""The exchange route: workers on other hosts fetch and upload one job's blobs by digest with the grants
in their JobSpec (bot/core/signed_urls.py, bot/pipelines/exchange_grants.py).

GET streams a stored blob the grant names. PUT streams the body into the store under a temporary name
and makes it visible under the URL's digest only if every byte hashed to it and the grant's byte cap
held: nothing a worker sends can name a blob it did not make, or replace one.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.core.signed_urls import DOWNLOAD, UPLOAD, RefusedGrant, check
from bot.host.stores import Runtime
from bot.pipelines.exchange_grants import exchange_key, record_upload, upload_ledger, uploaded_by
from workers.artifacts import BlobRefused, BlobTooLarge

ROUTE = "/exchange/{digest}"


def exchange_routes(runtime: Runtime) -> list[Route]:
    key = exchange_key(runtime.data_dir)
    store = runtime.artifacts

    async def download(request: Request) -> Response:
        digest = request.path_params["digest"]
        try:
            check(key, DOWNLOAD, digest, request.url.query, time.time())
        except RefusedGrant as exc:
            return PlainTextResponse(f"refused: {exc}", status_code=403)
        if not store.has(digest):
            return PlainTextResponse("no such blob", status_code=404)
        return FileResponse(store.path_of(digest), media_type="application/octet-stream")

    async def upload(request: Request) -> Response:
        digest = request.path_params["digest"]
        try:
            grant = check(key, UPLOAD, digest, request.url.query, time.time())
        except RefusedGrant as exc:
            return PlainTextResponse(f"refused: {exc}", status_code=403)
        # A redelivered job's repeat costs nothing; the touch tells the retention's prune it is wanted again.
        if uploaded_by(runtime.data_dir, grant.job_id, [digest]) and store.touch(digest):
            return PlainTextResponse("stored already", status_code=200)
        with upload_ledger(runtime.data_dir, grant.job_id) as ledger:
            if ledger is None:  # a job uploads one blob at a time (workers/remote_store.py publish_outputs)
                return PlainTextResponse("another upload of this job is under way", status_code=409)
            # The job's earlier uploads count against its total: a worker cannot fill the disk with distinct blobs.
            limit = min(grant.max_bytes, grant.total_bytes - ledger.bytes)
            declared = request.headers.get("content-length", "")
            if limit <= 0 or (declared.isdigit() and int(declared) > limit):  # before a byte is read
                return PlainTextResponse(f"more than the {max(limit, 0)} bytes the job may still upload",
                                         status_code=413)  # fmt: skip
            try:
                with store.receive(digest, limit=limit) as receiving:
                    async for block in request.stream():
                        receiving.write(block)
            except BlobTooLarge as exc:
                return PlainTextResponse(str(exc), status_code=413)
            except BlobRefused as exc:
                return PlainTextResponse(str(exc), status_code=422)
            ledger.add(receiving.size)  # counted first: a crash in between over-counts, never under
            record_upload(runtime.data_dir, grant.job_id, digest)  # what a later job may be granted from this one
        return PlainTextResponse("stored", status_code=201)

    return [Route(ROUTE, download, methods=["GET"]), Route(ROUTE, upload, methods=["PUT"])]
