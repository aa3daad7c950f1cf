"""The webhooks' way into labgate: each verified delivery stored once, then its event enqueued on the
control queue, many deliveries to a batch (one INSERT, one LPUSH), whichever forge they came from."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
import redis.asyncio as aredis
from celery.utils.nodenames import anon_nodename
from starlette.concurrency import run_in_threadpool

from bot.core.events import Event, event_to_json
from bot.host.stores import Runtime
from bot.store.deliveries import DeliveryLog, DeliveryRow, open_delivery_log
from workers.app import CONTROL_QUEUE, app, broker_socket_kwargs

log = logging.getLogger(__name__)
GITHUB_EVENT_TASK = "bot.github_event"
# The control task each forge's deliveries go to.
EVENT_TASKS = {"github": GITHUB_EVENT_TASK, "gitlab": "bot.gitlab_event"}
BROKER_TIMEOUT_S = 5.0
# Digests outlive the replay window by a day: GitHub's clock and ours differ, and pruning runs hourly.
DIGEST_MARGIN = timedelta(days=1)
PRUNE_INTERVAL_S = 3600.0


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
    source: str = "github"  # the forge it came from (EVENT_TASKS names its task)


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
