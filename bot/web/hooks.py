"""POST /hooks/<forge>: verify over the raw body, store the delivery, enqueue, answer 202 at once.

One endpoint body serves every forge that pushes webhooks (ForgeHook names its words: how a delivery
is proven, what it is called, what it parses to). A delivery is stored once per delivery id and once
per body digest (a replay under a new id), and an event whose own times are all older than the replay
window is ignored: GitHub's HMAC and GitLab's token carry no time, so a captured body is valid for ever
unless we remember it or can tell it is old."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from bot.core.events import ParseOutcome
from bot.forges.github import sansio
from bot.forges.gitlab import sansio as gitlab_sansio
from bot.host.config import WebhookSecret
from bot.host.stores import Runtime
from bot.store.deliveries import DELIVERY_ID_MAX, EVENT_NAME_MAX
from bot.web.intake import HookDelivery, Intake
from bot.web.server import EDGE_COUNTS
from workers.errors import ConfigError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
SOURCE = "github"
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
    # What can be proven from the head alone (a token sent in clear), checked before a byte of the body
    # is read: whoever lacks it never holds any of the body budget. Raises one of `refused`.
    verify_head: Callable[[Mapping[str, str]], None] | None = None


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
    try:
        outcome = gitlab_sansio.parse(headers, body)
    except gitlab_sansio.MalformedPayload as exc:
        # Proven GitLab's (the token matched) but not usable: stored as ignored with the reason, and
        # answered 202. GitLab disables a hook for good after four 4xx answers in a row, and one odd
        # payload (a merge request without commits, a new GitLab's shape) must not switch labgate off.
        outcome = ParseOutcome(None, f"not usable: {exc}")
    return delivery_id, gitlab_sansio.event_name(headers), outcome


def gitlab_hook(intake: Intake, token: str, signing_token: str | None, *, budget: BodyBudget | None = None,
                replay_window: timedelta = timedelta(days=30)) -> Callable[[Request], Awaitable[Response]]:  # fmt: skip
    """GitLab's endpoint, closed over the webhook token (and signing token, where the instance signs)."""
    if not token:
        raise ConfigError("gitlab.webhook_token_file: empty; GitLab intake does not start without a token")

    def verify(headers: Mapping[str, str], body: bytes, now: datetime) -> None:
        gitlab_sansio.verify(headers, body, token, signing_token, now)

    def verify_token(headers: Mapping[str, str]) -> None:
        gitlab_sansio.verify(headers, b"", token, None, datetime.now(UTC))  # the token alone, no signature

    forge = ForgeHook("gitlab", verify, _read_gitlab, (gitlab_sansio.TokenError,), (gitlab_sansio.MalformedPayload,),
                      MAX_BODY_BYTES, "GitLab's window: 30 days", verify_token)  # fmt: skip
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
            if forge.verify_head is not None:
                forge.verify_head(headers)
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
