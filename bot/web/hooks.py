"""POST /hooks/github: verify over the raw body, store the delivery, enqueue, answer 202 at once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bot.core.events import Event, event_to_json
from bot.forges.github import sansio
from bot.pipeline import record_delivery
from bot.runtime import Runtime
from workers.app import CONTROL_QUEUE, app

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
GITHUB_EVENT_TASK = "bot.github_event"


class BodyTooLarge(Exception):
    pass


async def read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _store_and_enqueue(runtime: Runtime, delivery_id: str, event_name: str, event: Event | None, reason: str) -> bool:
    """Store the delivery first; a redelivery (same id) is a no-op. False for a redelivery."""
    with runtime.store.session() as session:
        if not record_delivery(session, "github", delivery_id, event_name, "accepted" if event else "ignored", reason):
            return False
    if event is not None:
        app.send_task(GITHUB_EVENT_TASK, args=[event_to_json(event), delivery_id], queue=CONTROL_QUEUE)
    return True


def github_hook(runtime: Runtime, secret: str) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint, closed over the webhook secret (read once at start: fail closed without one)."""

    async def endpoint(request: Request) -> Response:
        try:
            body = await read_capped(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            return JSONResponse({"error": f"payload over {MAX_BODY_BYTES} bytes"}, status_code=413)
        headers = dict(request.headers)
        try:
            sansio.verify(headers, body, secret)
        except sansio.SignatureError as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        try:
            delivery_id = sansio.delivery_id(headers)
            event_name = sansio.event_name(headers)
            outcome = sansio.parse(headers, body)
        except sansio.MalformedPayload as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        fresh = await run_in_threadpool(
            _store_and_enqueue, runtime, delivery_id, event_name, outcome.event, outcome.reason
        )
        if not fresh:
            return JSONResponse({"status": "duplicate", "delivery": delivery_id}, status_code=202)
        status = "accepted" if outcome.event is not None else "ignored"
        return JSONResponse({"status": status, "reason": outcome.reason, "delivery": delivery_id}, status_code=202)

    return endpoint
