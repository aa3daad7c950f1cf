"""POST /hooks/<forge>: verify over the raw body, store the delivery, enqueue, answer 202 at once.

One endpoint body serves every forge that pushes webhooks (ForgeHook names its words: how a delivery
is proven, what it is called, what it parses to). A delivery is stored once per delivery id and once
per body digest (a replay under a new id), and an event whose own times are all older than the replay
window is ignored: GitHub's HMAC and GitLab's token carry no time, so a captured body is valid for ever
unless we remember it or can tell it is old."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aredis
from celery.utils.nodenames import anon_nodename
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from bot.core.events import Event, ParseOutcome, event_to_json
from bot.forges.github import sansio
from bot.forges.gitlab import sansio as gitlab_sansio
from bot.host.config import WebhookSecret
from bot.host.stores import Runtime
from bot.store.deliveries import DELIVERY_ID_MAX, EVENT_NAME_MAX, DeliveryLog, DeliveryRow, open_delivery_log
from bot.web.server import EDGE_COUNTS
from workers.app import CONTROL_QUEUE, app, broker_socket_kwargs
from workers.errors import ConfigError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
GITHUB_EVENT_TASK = "bot.github_event"
BROKER_TIMEOUT_S = 5.0
SOURCE = "github"
# The control task each forge's deliveries go to.
EVENT_TASKS = {SOURCE: GITHUB_EVENT_TASK, "gitlab": "bot.gitlab_event"}
# Digests outlive the replay window by a day: GitHub's clock and ours differ, and pruning runs hourly.
DIGEST_MARGIN = timedelta(days=1)
PRUNE_INTERVAL_S = 3600.0
OVER_CAPACITY_RETRY_S = 10


class HookAnswer(JSONResponse):
    """A JSON answer rendered by orjson: the same compact UTF-8 as Starlette's, at a fifth of the cost."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BodyTooLarge(Exception):
    pass


class OverCapacity(Exception):
    """Buffering this body would put the bytes held for unverified requests over the budget."""


class BodyBudget:
    """Body bytes buffered and not yet verified, all requests together, under a cap: whoever can reach
    the hook (no secret needed) makes us hold at most this much, however many bodies it stalls."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.capacity:
            raise OverCapacity
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class HeldBody:
    """One request's share of the budget, given back at once when the request is done with it."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        self.budget.take(size)
        self.size += size

    def release(self) -> None:
        self.budget.give_back(self.size)
        self.size = 0


async def read_capped(request: Request, limit: int, held: HeldBody | None = None) -> bytes:
    """The body, at most `limit` bytes (else BodyTooLarge); a declared length is taken from the budget
    before a byte is read (OverCapacity), a chunked body chunk by chunk."""
    declared = request.headers.get("content-length")
    reserved = 0
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise BodyTooLarge
        reserved = int(declared)
        if held is not None:
            held.take(reserved)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if held is not None and size > reserved:
            held.take(size - reserved)
            reserved = size
        chunks.append(chunk)
    return b"".join(chunks)


def verify_signed(headers: Mapping[str, str], body: bytes, secrets: Sequence[WebhookSecret], now: datetime) -> None:
    """SignatureError unless one of the secrets in force at `now` signed the body (the current one is
    tried first; a rotated-out one only until its end). The error is the current secret's."""
    first: sansio.SignatureError | None = None
    for secret, until in secrets:
        if until is not None and now >= until:
            continue
        try:
            sansio.verify(headers, body, secret)
            return
        except sansio.SignatureError as exc:
            first = first or exc
    raise first or sansio.SignatureError("no webhook secret is in force; refusing the delivery")


def too_old(outcome: ParseOutcome, now: datetime, window: timedelta,
            setting: str = "github.replay_window_days") -> ParseOutcome:  # fmt: skip
    """The outcome, or an ignored one when the event's own times are all older than the window.

    An event that carries no time at all is judged by what it has: its delivery id and its digest,
    which are kept for the window (and a day). Every event GitHub sends that labgate acts on carries
    at least repository.updated_at or installation.updated_at, so in practice only an organisation
    hook's ping (which starts nothing) is judged that way."""
    if outcome.event is None or outcome.event_time is None or outcome.event_time >= now - window:
        return outcome
    stamp = outcome.event_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ParseOutcome(None, f"event time {stamp} is over {window.days} days old: taken for a replay "
                              f"({setting})", outcome.event_time)  # fmt: skip


class ControlQueue:
    """Task messages for the control queue, a batch of them in one LPUSH on an asyncio Redis client.

    app.send_task spends ~0.55 ms of CPU per message (kombu builds a new Redis client object for every
    publish), more than the bare endpoint's whole request. This writes the same message: the headers and
    body of Celery's protocol 2 come from app.amqp; the envelope is the one kombu's Redis transport
    pushes for the default exchange (tests/bot/web/test_hooks.py holds it equal to send_task's). Brokers
    other than plain Redis go through app.send_task."""

    def __init__(self, queue: str = CONTROL_QUEUE) -> None:
        self.queue = queue
        self._client: aredis.Redis | None = None
        self._made_for: tuple[asyncio.AbstractEventLoop, str | None] | None = None
        self._origin_of: tuple[int, str] | None = None

    def _redis(self) -> aredis.Redis | None:
        # A client belongs to one event loop (uvicorn has one; a test client may start one per request)
        # and to the broker configured when it was made.
        made_for = (asyncio.get_running_loop(), app.conf.broker_url)
        if self._made_for != made_for:
            self._client = _redis_client(app.conf.broker_url, app.conf.broker_transport_options)
            self._made_for = made_for
        return self._client

    async def send(self, tasks: Sequence[tuple[str, list[Any]]]) -> None:
        """Enqueue (task name, args) pairs, in order."""
        client = self._redis()
        if client is None:
            await run_in_threadpool(self._send_through_celery, tasks)
        elif tasks:
            await client.lpush(self.queue, *(self.message(name, args) for name, args in tasks))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._made_for = None, None

    def _origin(self) -> str:
        # The header Celery fills with anon_nodename() per message (a hostname look-up and a format,
        # ~2% of a delivery's CPU): the same text, made once per process.
        pid = os.getpid()
        if self._origin_of is None or self._origin_of[0] != pid:
            self._origin_of = (pid, anon_nodename())
        return self._origin_of[1]

    def _send_through_celery(self, tasks: Sequence[tuple[str, list[Any]]]) -> None:
        for name, args in tasks:
            app.send_task(name, args=args, queue=self.queue)

    def message(self, name: str, args: list[Any]) -> bytes:
        task_id = str(uuid.uuid4())
        task = app.amqp.as_task_v2(task_id, name, args=args, kwargs={}, reply_to=app.thread_oid,
                                   origin=self._origin(), ignore_result=None, argsrepr=_shortened_repr(args),
                                   kwargsrepr="{}")  # fmt: skip
        properties = {**task.properties, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                      "delivery_info": {"exchange": "", "routing_key": self.queue},
                      "delivery_tag": str(uuid.uuid4())}  # fmt: skip
        # orjson writes the same JSON as json.dumps here (strings, numbers, None, lists, dicts) at a
        # fifth of the cost; kombu reads either (tests/bot/web/test_hooks.py).
        return orjson.dumps({"body": base64.b64encode(orjson.dumps(task.body)).decode(),
                             "content-encoding": "utf-8", "content-type": "application/json",
                             "headers": task.headers, "properties": properties})  # fmt: skip


def _shortened_repr(args: list[Any]) -> str:
    # What Celery's saferepr shows in monitoring, within the same size cap, at a tenth of its cost.
    text, cap = repr(args), app.amqp.argsrepr_maxsize
    return text if len(text) <= cap else text[: cap - 3] + "..."


def _redis_client(url: str | None, transport_options: dict[str, Any]) -> aredis.Redis | None:
    """A client on the broker when it is a plain Redis one kombu would write to the same way; else None."""
    if not url or set(transport_options) - {"visibility_timeout"}:  # e.g. a key prefix changes the keys
        return None
    socket_kwargs = broker_socket_kwargs(url)
    if socket_kwargs is not None:
        return aredis.Redis(**socket_kwargs, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S)
    if url.startswith(("redis://", "rediss://")):
        return aredis.Redis.from_url(url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S)
    return None


class HookDelivery(NamedTuple):
    """A verified, parsed delivery on its way to the store and the queue."""

    delivery_id: str
    event_name: str
    event: Event | None
    reason: str
    body_digest: str | None = None
    source: str = SOURCE  # the forge it came from (EVENT_TASKS names its task)


class Intake:
    """Store each delivery, then enqueue its event; a redelivery (same id) is a no-op.

    Deliveries that arrive while a batch is being written wait and go together in the next one: one
    INSERT and one LPUSH per batch (group commit). Alone, a delivery is a batch of one and waits for
    nothing. The writer is a task of its own, so a request that goes away cannot split storing from
    enqueueing (a stored delivery that never reached the queue would take its redelivery for a duplicate).
    Deliveries received longer ago than `keep_for` are forgotten, by the writer, at most once an hour."""

    def __init__(self, deliveries: DeliveryLog, queue: ControlQueue, keep_for: timedelta = timedelta(days=31)) -> None:
        self.deliveries = deliveries
        self.queue = queue
        self.keep_for = keep_for
        self._waiting: list[tuple[HookDelivery, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._next_prune = 0.0

    async def take(self, delivery: HookDelivery) -> bool:
        """True once stored and enqueued; False for a redelivery."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((delivery, future))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not future.get_loop():
            self._writer = asyncio.create_task(self._write_batches())
        # A request that goes away cancels only its future: the writer still stores and enqueues.
        return await future

    async def close(self) -> None:
        await self.deliveries.close()
        await self.queue.close()

    async def _write_batches(self) -> None:
        while self._waiting:
            # One turn of the event loop lets requests already read from their sockets join this batch.
            await asyncio.sleep(0)
            await self._prune_if_due()
            batch, self._waiting = self._waiting, []
            await self._write(batch)

    async def _prune_if_due(self) -> None:
        # On a timer rather than per batch: the DELETE scans, the INSERT must not.
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_INTERVAL_S
        try:
            for source in EVENT_TASKS:
                await self.deliveries.prune(source, datetime.now(UTC) - self.keep_for)
        except Exception as exc:  # deliveries still go in; the next hour tries again
            log.warning("webhook: forgetting old deliveries failed: %s: %s", type(exc).__name__, exc)

    async def _write(self, batch: list[tuple[HookDelivery, asyncio.Future[bool]]]) -> None:
        rows = [DeliveryRow(d.source, d.delivery_id, d.event_name, "ignored" if d.event is None else "accepted",
                            d.reason, d.body_digest) for d, _ in batch]  # fmt: skip
        try:
            fresh = await self.deliveries.insert(rows)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, exc)
                return
            for one in batch:  # nothing was stored; one bad delivery must not fail the others
                await self._write([one])
            return
        tasks = [(EVENT_TASKS[d.source], [event_to_json(d.event), d.delivery_id])
                 for (d, _), new in zip(batch, fresh, strict=True) if new and d.event is not None]  # fmt: skip
        try:
            await self.queue.send(tasks)
        except Exception as exc:
            _settle(batch, exc)
            return
        _settle(batch, fresh)


def _settle(batch: list[tuple[HookDelivery, asyncio.Future[bool]]], outcome: list[bool] | Exception) -> None:
    for index, (_, future) in enumerate(batch):
        if future.done():  # its request went away
            continue
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome[index])


def open_intake(runtime: Runtime) -> Intake:
    """The one intake every forge's hook writes through (one writer, one batch for all of them)."""
    keep_for = timedelta(days=max(runtime.config.github.replay_window_days if runtime.config.github else 30, 30))
    return Intake(open_delivery_log(runtime.store), ControlQueue(), keep_for + DIGEST_MARGIN)


class ForgeHook(NamedTuple):
    """A forge's words for its webhook, for the one endpoint body (`hook_endpoint`)."""

    source: str  # EVENT_TASKS key and the delivery rows' source
    # Raises one of `refused` unless the delivery is proven to come from the forge (answered 401).
    verify: Callable[[Mapping[str, str], bytes, datetime], None]
    # (delivery id, event name, outcome); raises one of `malformed` for a body it cannot use (400).
    read: Callable[[Mapping[str, str], bytes], tuple[str, str, ParseOutcome]]
    refused: tuple[type[Exception], ...]
    malformed: tuple[type[Exception], ...]
    max_body_bytes: int
    replay_setting: str  # the setting the replay window comes from, named when an old event is ignored


def open_github_hook(runtime: Runtime, intake: Intake) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint as the config sets it; ConfigError without a readable secret."""
    github = runtime.config.github
    if github is None:
        raise ConfigError("github: not configured; there is no GitHub webhook to serve")
    secrets = github.read_webhook_secrets()
    budget = BodyBudget(runtime.config.web.limits.max_body_bytes_in_flight)
    return github_hook(intake, secrets, replay_window=timedelta(days=github.replay_window_days), budget=budget)


def _read_github(headers: Mapping[str, str], body: bytes) -> tuple[str, str, ParseOutcome]:
    return sansio.delivery_id(headers), sansio.event_name(headers), sansio.parse(headers, body)


def github_hook(intake: Intake, secrets: Sequence[WebhookSecret], *, replay_window: timedelta = timedelta(days=30),
                budget: BodyBudget | None = None) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    """GitHub's endpoint, closed over the webhook secrets (read once at start: fail closed without one)."""
    forge = ForgeHook(SOURCE, lambda headers, body, now: verify_signed(headers, body, secrets, now), _read_github,
                      (sansio.SignatureError,), (sansio.MalformedPayload,), MAX_BODY_BYTES,
                      "github.replay_window_days")  # fmt: skip
    return hook_endpoint(intake, forge, replay_window=replay_window, budget=budget)


def open_gitlab_hook(runtime: Runtime, intake: Intake) -> Callable[[Request], Awaitable[Response]]:
    """GitLab's endpoint as the config sets it; ConfigError without a readable webhook token."""
    gitlab = runtime.config.gitlab
    if gitlab is None:
        raise ConfigError("gitlab: not configured; there is no GitLab webhook to serve")
    token, signing_token = gitlab.read_webhook_token(), gitlab.read_signing_token()
    budget = BodyBudget(runtime.config.web.limits.max_body_bytes_in_flight)
    return gitlab_hook(intake, token, signing_token, budget=budget)


def _read_gitlab(headers: Mapping[str, str], body: bytes) -> tuple[str, str, ParseOutcome]:
    delivery_id = gitlab_sansio.delivery_id(headers, body)
    return delivery_id, gitlab_sansio.event_name(headers), gitlab_sansio.parse(headers, body)


def gitlab_hook(intake: Intake, token: str, signing_token: str | None, *, budget: BodyBudget | None = None,
                replay_window: timedelta = timedelta(days=30)) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    """GitLab's endpoint, closed over the webhook token (and signing token, where the instance signs)."""
    if not token:
        raise ConfigError("gitlab.webhook_token_file: empty; GitLab intake does not start without a token")

    def verify(headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        gitlab_sansio.verify(headers, body, token, signing_token, now)

    forge = ForgeHook("gitlab", verify, _read_gitlab, (gitlab_sansio.TokenError,), (gitlab_sansio.MalformedPayload,),
                      MAX_BODY_BYTES, "GitLab's window: 30 days")  # fmt: skip
    return hook_endpoint(intake, forge, replay_window=replay_window, budget=budget)


def hook_endpoint(intake: Intake, forge: ForgeHook, *, replay_window: timedelta,
                  budget: BodyBudget | None = None) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    """The webhook endpoint of one forge: verified before anything else looks at the body."""
    budget = budget or BodyBudget(64 << 20)

    async def endpoint(request: Request) -> Response:
        held = HeldBody(budget)
        headers = dict(request.headers)
        now = datetime.now(UTC)
        try:
            body = await read_capped(request, forge.max_body_bytes, held)
            # Verified before anything else looks at the body: only the forge's deliveries reach the digests.
            forge.verify(headers, body, now)
        except BodyTooLarge:
            return HookAnswer({"error": f"payload over {forge.max_body_bytes} bytes"}, status_code=413)
        except OverCapacity:
            EDGE_COUNTS.count("over capacity")
            return HookAnswer({"error": "too many webhook bodies in flight; retry later"}, status_code=503,
                                headers={"Retry-After": str(OVER_CAPACITY_RETRY_S), "Connection": "close"})  # fmt: skip
        except ClientDisconnect:
            # Counted by the server's protocol (bot/web/server.py); nobody is left to answer.
            return Response(status_code=400)
        except forge.refused as exc:
            return HookAnswer({"error": str(exc)}, status_code=401)
        finally:
            held.release()
        try:
            delivery_id, event_name, outcome = forge.read(headers, body)
        except forge.malformed as exc:
            return HookAnswer({"error": str(exc)}, status_code=400)
        outcome = too_old(outcome, now, replay_window, forge.replay_setting)
        if len(delivery_id) > DELIVERY_ID_MAX or len(event_name) > EVENT_NAME_MAX:
            # The store's columns would refuse it, and with it the deliveries sharing its batch.
            return HookAnswer({"error": "the delivery id or the event name is too long"}, status_code=400)
        # The replay key is the body's own sha256, not the signature's HMAC (which would cost nothing
        # more): an HMAC depends on the secret, so across a rotation a body captured under the old
        # secret, or the forge's redelivery of it under the new one, would come back with a key not seen.
        digest = hashlib.sha256(body).hexdigest()
        delivery = HookDelivery(delivery_id, event_name, outcome.event, outcome.reason, digest, forge.source)
        if not await intake.take(delivery):
            return HookAnswer({"status": "duplicate", "delivery": delivery_id}, status_code=202)
        status = "accepted" if outcome.event is not None else "ignored"
        return HookAnswer({"status": status, "reason": outcome.reason, "delivery": delivery_id}, status_code=202)

    return endpoint
