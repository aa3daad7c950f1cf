"""POST /api/v1/submissions and GET /api/v1/submissions/{id}: CI jobs as submitters, proven by their OIDC id-token.

POST checks, in this order: the declared size (413); a bearer token; the token itself (the verifier: 401
naming the check, 503 when the issuer's keys cannot be read or may not be current); only then the body is
read (413 past the cap, 503 when the bodies in flight fill the budget: a request without a valid token
never reads or holds a byte of it) and parsed (400, 422); the operator's rules (403; a tree labgate does
not test is one no rule names, so it is 403 too: a 404 would list the trees to any token holder); the base,
which must be one of the tree's configured branches (422: labgate resolves it at checkout, never a
submitter-chosen commit, which would also choose the plan that judges the change); a `sha` or `ref`
against the token's own (403). Then one transaction stores the submission under the token's (issuer, jti)
and a control task makes its pipeline: the answer, 201, carries a read token scoped to this submission,
because the CI job's id-token lives only minutes. The same token again is the same submission (200, a read
token of its own), however many arrive at once, up to MAX_READ_TOKENS uses (then 429, nothing stored).

GET answers with that read token (or an operator token); a wrong token and an unknown id get the same
404. `?wait=N&since=VERSION` long-polls: it answers when the status moves past VERSION, or after N s; at
most MAX_WAITERS_PER_SUBMISSION at once for one submission (more: 429, Retry-After) and MAX_WAITERS in all
(more: 503)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import String
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from bot.core.diff_paths import mail_texts, touched_paths
from bot.host.stores import Runtime
from bot.intake.submissions import (
    SUBMISSION_TASK,
    opens_submission,
    page_url_of,
    submission_status,
    submission_version,
    token_ref,
    useful_claims,
)
from bot.oidc.keys import KeysUnavailable
from bot.oidc.policy import authorize
from bot.oidc.settings import SubmitRule
from bot.oidc.types import NotAuthorized, TokenRefused, VerifiedToken, Verifier
from bot.oidc.verify import OidcVerifier
from bot.reporting.page_links import public_base_url
from bot.store.ci_submissions import MAX_READ_TOKENS, NewSubmission, SubmissionLog, open_submission_log
from bot.store.models import CiSubmission
from bot.web.access import MAX_ID, PRIVATE_HEADERS, not_found
from bot.web.hooks import BodyBudget, BodyTooLarge, HeldBody, HookAnswer, OverCapacity, read_capped
from bot.web.intake import ControlQueue
from workers.errors import ConfigError

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 << 20
MAX_WAIT_S = 60
POLL_S = 0.5  # one look at the store per waiting request this often
MAX_WAITERS = 512  # long polls at once; more get 503 (each holds a connection, never a thread)
# Long polls of one submission at once; more get 429 and Retry-After (a CI job polls with one at a time), so
# the holders of one submission's read tokens cannot take every place of MAX_WAITERS from the others.
MAX_WAITERS_PER_SUBMISSION = 4
RETRY_AFTER_S = 5
PATH = "/api/v1/submissions"
_ID = re.compile(r"[0-9]{1,18}")
_SINCE = re.compile(r"[0-9a-f]{1,64}")
# A patch's name is only ever shown (the artifact store keys patches by digest), but it is the submitter's
# word, so it stays a plain file name: no directory, no leading dot, nothing a terminal would act on.
PATCH_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$"
# A title is shown in reports, page titles and mail headers: one line, read as sent. No C0 or C1 control
# (NEL, \x85, is one), no line or paragraph separator (Python's splitlines breaks on U+2028/9 and NEL too),
# no bidirectional embedding, override or isolate (U+202A-E, U+2066-9), which make text read otherwise.
TITLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"
NO_STORE = {"Cache-Control": "no-store"}
JTI_MAX = cast(String, CiSubmission.__table__.c["jti"].type).length or 0


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, hide_input_in_errors=True)


class PatchIn(_Body):
    name: str = Field(pattern=PATCH_NAME)
    mbox: str = Field(min_length=1)


class SubmissionIn(_Body):
    """POST's body: a tree's configured branch, and exactly one of the job's commit, its ref, or patches."""

    tree: str = Field(min_length=1, max_length=200)
    base_branch: str = Field(min_length=1, max_length=250)
    sha: str | None = Field(None, pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")
    ref: str | None = Field(None, pattern=r"^refs/[^\s\x00-\x1f]+$", max_length=250)
    patches: list[PatchIn] | None = Field(None, min_length=1, max_length=200)
    # Shown in reports and page titles, some of them mail headers: one line, no control characters.
    title: str | None = Field(None, max_length=200, pattern=TITLE)

    @model_validator(mode="after")
    def _one_thing_to_test(self) -> SubmissionIn:
        given = [name for name in ("sha", "ref", "patches") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of sha, ref, patches is needed ({', '.join(given) or 'none'} given)")
        return self


class Refused(Exception):
    """An answer other than success: its status and the message the submitter reads."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def bearer_of(request: Request) -> str | None:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def read_body(body: bytes) -> SubmissionIn:
    """The body, strictly: 400 if it is not JSON, 422 naming the first key that is wrong (an unknown one too)."""
    try:
        return SubmissionIn.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        if error["type"] == "json_invalid":
            raise Refused(400, f"body: not JSON: {error['msg']}") from exc
        if error["type"] == "extra_forbidden":
            raise Refused(422, f"{where}: unknown key") from exc
        if error["type"] == "string_pattern_mismatch" and where == "title":
            raise Refused(422, "title: one line of text: no control, line separator or bidirectional formatting "
                               "character") from exc  # fmt: skip
        if error["type"] == "string_pattern_mismatch" and where.endswith(".name"):
            raise Refused(422, f"{where}: a patch name is a plain file name ({PATCH_NAME})") from exc
        raise Refused(422, f"{where}: {error['msg']}") from exc


def patch_problem(mbox: bytes, cap: int) -> str | None:
    """Why a patch is refused before it is stored (the checkout worker checks its diff again, as for
    `labgate try`): over the cap, or no diff in it at all, read as generously as git am would."""
    if len(mbox) > cap:
        return f"{len(mbox)} bytes is over the {cap} byte patch cap"
    if not touched_paths(mail_texts(mbox)):
        return "no diff in it: not a patch (git format-patch output is expected)"
    return None


def what_to_test(body: SubmissionIn, token: VerifiedToken) -> dict[str, Any]:
    """The stored request: a commit or ref the token itself was issued at, or the patches (403 otherwise)."""
    token_sha = token.claims.get("sha")
    request: dict[str, Any] = {"title": body.title} if body.title else {}
    if body.patches is not None:
        return {**request, "patches": [patch.model_dump() for patch in body.patches]}
    if not isinstance(token_sha, str) or re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", token_sha) is None:
        raise Refused(403, "the token names no commit (sha claim): submit patches instead")
    if body.sha is not None and body.sha != token_sha:
        raise Refused(403, f"sha {body.sha} is not the commit the token was issued at (sha {token_sha})")
    if body.ref is not None:
        ref = token_ref(token.claims)
        if body.ref != ref:
            raise Refused(403, f"ref {body.ref} is not the ref the token was issued on ({ref})")
        return {**request, "ref": body.ref, "sha": token_sha}
    return {**request, "sha": token_sha}


def answer(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return HookAnswer(content, status_code=status, headers={**NO_STORE, **(headers or {})})


@dataclass
class SubmissionApi:
    """The two endpoints over one runtime, one verifier (the benchmark's may be a constant: a parameter,
    never a setting) and the operator's rules."""

    runtime: Runtime
    verifier: Verifier
    rules: Sequence[SubmitRule]
    submissions: SubmissionLog
    queue: ControlQueue = field(default_factory=ControlQueue)
    budget: BodyBudget = field(default_factory=lambda: BodyBudget(64 << 20))
    max_waiters: int = MAX_WAITERS
    on_close: Callable[[], Awaitable[None]] | None = None
    waiting: int = 0
    waiting_for: dict[int, int] = field(default_factory=dict)  # submission id -> its long polls now

    @property
    def routes(self) -> list[Route]:
        return [Route(PATH, self.post, methods=["POST"]), Route(PATH + "/{submission_id}", self.get, methods=["GET"])]

    async def close(self) -> None:
        await self.submissions.close()
        await self.queue.close()
        if self.on_close is not None:
            await self.on_close()

    async def post(self, request: Request) -> Response:
        try:
            return await self._post(request)
        except Refused as refused:
            return answer(refused.status, {"error": str(refused)}, refused.headers)

    async def _post(self, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise Refused(413, f"body over {MAX_BODY_BYTES} bytes")  # said before a byte is read, as read_capped
        token = await self._verified(request)
        # Only now the body: a client without a valid token never makes labgate read or hold a byte of it,
        # so the body budget is shared by proven CI jobs alone.
        wanted = read_body(await self._read(request))
        config = self.runtime.config
        try:
            # Before the tree is looked up: rules name trees, so a tree labgate does not test is one no rule
            # names, and its 403 reads as any other's (a 404 would tell a token holder which trees exist).
            grant = authorize(token, self.rules, wanted.tree)
        except NotAuthorized as exc:
            raise Refused(403, str(exc)) from exc
        tree = config.tree(wanted.tree)
        if tree is None:  # pragma: no cover - the config refuses a rule naming a tree it does not test
            raise Refused(404, f"tree {wanted.tree}: labgate tests no tree of that name")
        if wanted.base_branch not in tree.branches:
            allowed = ", ".join(tree.branches)
            raise Refused(422, f"base_branch {wanted.base_branch}: not a branch labgate tests of {tree.name} "
                               f"(one of: {allowed}); labgate resolves it to a commit itself")  # fmt: skip
        what = what_to_test(wanted, token)
        for index, patch in enumerate(wanted.patches or ()):
            # Off the event loop: reading a large mbox through every transfer encoding takes a while.
            problem = await run_in_threadpool(patch_problem, patch.mbox.encode(), config.caps.max_patch_bytes)
            if problem:
                raise Refused(422, f"patches.{index} ({patch.name}): {problem}")
        read_token = secrets.token_urlsafe(32)
        new = NewSubmission(issuer=token.issuer, jti=token.jti, identity=grant.identity, tree=tree.name,
                            tier=grant.tier, base_branch=wanted.base_branch, request=what,
                            claims=useful_claims(token.claims), expires_at=token.expires_at,
                            token_sha256=hashlib.sha256(read_token.encode()).hexdigest())  # fmt: skip
        # Shielded: a client that goes away must not leave a stored submission whose task was never sent.
        stored = await asyncio.shield(asyncio.ensure_future(self._store_and_enqueue(new)))
        content = {"id": stored.id, "status_url": f"{public_base_url(config)}{PATH}/{stored.id}",
                   "read_token": read_token}  # fmt: skip
        page_url = page_url_of(self.runtime, tree.name, stored.pipeline_id)
        if page_url is not None:
            content["page_url"] = page_url
        if stored.fresh:
            log.info("submission %d: %s to %s (%s)", stored.id, grant.identity, tree.name, grant.tier)
        return answer(201 if stored.fresh else 200, content)

    async def _verified(self, request: Request) -> VerifiedToken:
        """The bearer's id-token, verified (the verifier needs no body): 401, or 503 when keys cannot be read."""
        credential = bearer_of(request)
        if credential is None:
            raise Refused(401, "token: no bearer token (Authorization: Bearer <the CI job's id-token>)",
                          {"WWW-Authenticate": "Bearer"})  # fmt: skip
        try:
            token = await self.verifier(credential)
        except TokenRefused as exc:
            raise Refused(401, str(exc), {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from exc
        except KeysUnavailable as exc:
            log.warning("submission refused for now: %s", exc)
            retry_after_s = exc.retry_after_s if exc.retry_after_s is not None else RETRY_AFTER_S
            raise Refused(503, f"the issuer's keys cannot be read now: {exc}",
                          {"Retry-After": str(retry_after_s)}) from exc  # fmt: skip
        if len(token.jti) > JTI_MAX:
            # GitHub's and GitLab's are UUIDs; a longer one would not fit the key replays are told by.
            raise Refused(401, f"token: its jti is over {JTI_MAX} characters")
        return token

    async def _read(self, request: Request) -> bytes:
        held = HeldBody(self.budget)
        try:
            return await read_capped(request, MAX_BODY_BYTES, held)
        except BodyTooLarge as exc:
            raise Refused(413, f"body over {MAX_BODY_BYTES} bytes") from exc
        except OverCapacity as exc:
            raise Refused(503, "too many request bodies in flight; retry later",
                          {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}) from exc  # fmt: skip
        except ClientDisconnect as exc:
            raise Refused(400, "the client went away") from exc
        finally:
            held.release()

    async def _store_and_enqueue(self, new: NewSubmission) -> Any:
        try:
            stored = await self.submissions.store(new)
        except Exception as exc:
            log.error("submission %s %s: not stored: %s: %s", new.issuer, new.jti, type(exc).__name__, exc)
            raise Refused(503, "the store is unavailable; retry with the same token",
                          {"Retry-After": str(RETRY_AFTER_S)}) from exc  # fmt: skip
        if not stored.read_token_stored:
            # Nothing stored, nothing enqueued: a pipeline still to come was enqueued by the earlier uses.
            raise Refused(429, f"this token has been used {stored.read_tokens_before} times: a submission hands "
                               f"out at most {MAX_READ_TOKENS} read tokens; read it with one an earlier answer "
                               "gave")  # fmt: skip
        if stored.pipeline_id is None:
            # A replay of a submission still without a pipeline enqueues again: the first message may be
            # what was lost. The task makes one pipeline however many times it runs.
            try:
                await self.queue.send([(SUBMISSION_TASK, [stored.id])])
            except Exception as exc:
                log.error("submission %d: not enqueued: %s: %s", stored.id, type(exc).__name__, exc)
                raise Refused(503, f"submission {stored.id} is stored but the queue is unavailable; send "
                                   "the same token again", {"Retry-After": str(RETRY_AFTER_S)}) from exc  # fmt: skip
        return stored

    async def get(self, request: Request) -> Response:
        try:
            return await self._get(request)
        except Refused as refused:
            return answer(refused.status, {"error": str(refused)}, refused.headers)

    async def _get(self, request: Request) -> Response:
        raw_id = str(request.path_params["submission_id"])
        credential = bearer_of(request)
        if credential is None:
            raise Refused(401, "token: no bearer token (Authorization: Bearer <the read token the POST answered>)",
                          {"WWW-Authenticate": "Bearer"})  # fmt: skip
        wait, since = self._wait_of(request)
        if _ID.fullmatch(raw_id) is None or int(raw_id) > MAX_ID:
            return not_found()
        submission_id = int(raw_id)
        if not await run_in_threadpool(opens_submission, self.runtime, submission_id, credential):
            return not_found()  # the very answer an id that does not exist gets
        if wait > 0 and since is not None:
            await self._wait_for_change(submission_id, since, wait)
        status = await run_in_threadpool(submission_status, self.runtime, submission_id)
        if status is None:  # pragma: no cover - submissions are never deleted
            return not_found()
        return answer(200, status, PRIVATE_HEADERS)

    def _wait_of(self, request: Request) -> tuple[float, str | None]:
        raw_wait, since = request.query_params.get("wait"), request.query_params.get("since")
        wait = 0.0
        if raw_wait is not None:
            try:
                wait = float(raw_wait)
            except ValueError:
                wait = -1.0
            if not 0 <= wait <= MAX_WAIT_S:
                raise Refused(400, f"wait: seconds from 0 to {MAX_WAIT_S}")
        if since is not None and _SINCE.fullmatch(since) is None:
            raise Refused(400, "since: the version a previous answer gave")
        return wait, since

    async def _wait_for_change(self, submission_id: int, since: str, wait: float) -> None:
        if self.waiting_for.get(submission_id, 0) >= MAX_WAITERS_PER_SUBMISSION:
            raise Refused(429, f"{MAX_WAITERS_PER_SUBMISSION} requests are waiting for this submission already; "
                               "retry later", {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        if self.waiting >= self.max_waiters:
            raise Refused(503, f"{self.max_waiters} requests are waiting already; retry later",
                          {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        self.waiting += 1
        self.waiting_for[submission_id] = self.waiting_for.get(submission_id, 0) + 1
        try:
            deadline = asyncio.get_running_loop().time() + wait
            while await run_in_threadpool(submission_version, self.runtime, submission_id) == since:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return
                await asyncio.sleep(min(POLL_S, left))
        finally:
            self.waiting -= 1
            self.waiting_for[submission_id] -= 1
            if not self.waiting_for[submission_id]:
                del self.waiting_for[submission_id]


def open_submission_api(runtime: Runtime, verifier: Verifier | None = None) -> SubmissionApi:
    """The API as the config sets it: the oidc: section's issuers and rules, and the real verifier unless
    one is given (bench/submissions.py gives a constant one to measure what verifying costs)."""
    settings = runtime.config.oidc
    if settings is None:
        raise ConfigError("oidc: not configured; there is no submission API to serve")
    on_close = None
    if verifier is None:
        http = httpx.AsyncClient(follow_redirects=False)
        oidc = OidcVerifier(settings, http)
        verifier = oidc.verify

        async def on_close() -> None:
            await oidc.keys.settle()  # a key refresh still running in the background
            await http.aclose()

    budget = BodyBudget(runtime.config.web.limits.max_body_bytes_in_flight)
    return SubmissionApi(runtime, verifier, settings.rules, open_submission_log(runtime.store), budget=budget,
                         on_close=on_close)  # fmt: skip
