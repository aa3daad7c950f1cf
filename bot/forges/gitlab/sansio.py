"""GitLab webhooks without I/O: check the token (and signature) over raw bytes, parse a delivery into an event."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from bot.core.events import (
    Actor,
    ChangeAction,
    ChangeEvent,
    CommentEvent,
    ParseOutcome,
    PushEvent,
    RepoRef,
    header,
)
from bot.core.standard_webhooks import (
    SIGNATURE_HEADER,
    SIGNATURE_TOLERANCE,
    SIGNED_ID_HEADER,
    SIGNED_TIME_HEADER,
    WebhookSignatureError,
    verify_signed_webhook,
)
from bot.forges.gitlab.fields import (
    MalformedPayload,
    commit_id,
    flag,
    integer,
    load_object,
    optional_time,
    present,
    project_path,
    quoted,
    read_time,
    ref_name,
    text,
    username,
)

# The signing names and read_time are re-exported: imports of them from here keep working.
__all__ = ["EVENT_HEADER", "SIGNATURE_HEADER", "SIGNATURE_TOLERANCE", "SIGNED_ID_HEADER", "SIGNED_TIME_HEADER",
           "TOKEN_HEADER", "MalformedPayload", "ParseOutcome", "TokenError", "delivery_id", "event_name",
           "newest_event_time", "parse", "read_time", "verify"]  # fmt: skip

TOKEN_HEADER = "X-Gitlab-Token"
EVENT_HEADER = "X-Gitlab-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # 17.4+: the same across GitLab's retries of one event
EVENT_UUID_HEADER = "X-Gitlab-Event-UUID"  # 14.8+
DELIVERY_ID_MAX = 200

ZERO_SHA = "0" * 40


class TokenError(Exception):
    """The delivery is not proven to come from GitLab: missing or wrong token, or a missing, bad or old signature."""


# --- proof of origin ---------------------------------------------------------------------------------------


def verify(headers: Mapping[str, str], body: bytes, token: str, signing_token: str | None, now: datetime) -> None:
    """Raise TokenError unless X-Gitlab-Token is `token` and, when a signing token is configured, the
    delivery carries a webhook-signature over this body made with it within 5 minutes of `now`."""
    if not token:
        # Fail closed: an unset token must never mean "accept everything".
        raise TokenError("no webhook token is configured; refusing the delivery")
    given = header(headers, TOKEN_HEADER)
    if given is None:
        raise TokenError(f"missing {TOKEN_HEADER} header")
    # GitLab sends the token in clear. Comparing digests of both sides keeps the comparison constant
    # in time whatever their lengths, and takes any text (compare_digest refuses non-ASCII str).
    if not hmac.compare_digest(_digest(given), _digest(token)):
        raise TokenError(f"{TOKEN_HEADER} does not match the configured token")
    if signing_token is None:
        return
    # Newest GitLab signs deliveries the Standard Webhooks way, behind the webhook_signing_token feature flag.
    try:
        webhook_id = verify_signed_webhook(headers, body, signing_token, now, SIGNATURE_TOLERANCE)
    except WebhookSignatureError as exc:
        raise TokenError(str(exc)) from None
    # The delivery id is read from Idempotency-Key, which the signature does not cover: it must be the
    # signed webhook-id, or a signed body replayed within the 5 minutes under a new key would count twice.
    # GitLab sends it with every signed delivery (signing came long after 17.4).
    key_header = header(headers, IDEMPOTENCY_HEADER)
    if key_header is None or key_header.strip() != webhook_id.strip():
        raise TokenError(f"{IDEMPOTENCY_HEADER} is not the signed {SIGNED_ID_HEADER}")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


# --- headers -----------------------------------------------------------------------------------------------


def event_name(headers: Mapping[str, str]) -> str:
    """The X-Gitlab-Event value (`Merge Request Hook`, `Note Hook`, `Push Hook`, ...)."""
    value = (header(headers, EVENT_HEADER) or "").strip()
    if not value:
        raise MalformedPayload(f"missing {EVENT_HEADER} header")
    if len(value) > 100 or not value.isprintable():
        raise MalformedPayload(f"{EVENT_HEADER} is not an event name")
    return value


def delivery_id(headers: Mapping[str, str], body: bytes) -> str:
    """What makes a retry of this delivery the same delivery: Idempotency-Key (kept across GitLab's retries),
    else X-Gitlab-Event-UUID, else (GitLab before 14.8 sends neither) the body's sha256."""
    for name in (IDEMPOTENCY_HEADER, EVENT_UUID_HEADER):
        value = (header(headers, name) or "").strip()
        if value:
            if len(value) > DELIVERY_ID_MAX:
                raise MalformedPayload(f"{name} is longer than {DELIVERY_ID_MAX} characters")
            if not value.isprintable():
                raise MalformedPayload(f"{name} has a control character")
            return value
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- parsing -----------------------------------------------------------------------------------------------


def parse(headers: Mapping[str, str], body: bytes) -> ParseOutcome:
    """Turn a (verified) delivery into a forge-neutral event, or say why it is ignored.

    The body's object_kind decides, not the header: `System Hook` and `Service Hook` deliveries carry
    push and merge request bodies too. The header names the delivery only when the body has no kind.
    """
    name = event_name(headers)
    payload = load_object(body)
    kind = payload.get("object_kind")
    if kind is None:
        if name in _HEADERS_OF_HANDLED_KINDS:
            raise MalformedPayload("object_kind: missing")
        return ParseOutcome(None, f"{quoted(name)} delivery without object_kind is not used by labgate")
    if not isinstance(kind, str):
        raise MalformedPayload("object_kind: not a string")
    handler = _HANDLERS.get(kind)
    if handler is None:
        return ParseOutcome(None, _IGNORED_KINDS.get(kind, f"object_kind {quoted(kind)} is not used by labgate"))
    outcome = handler(payload)
    return ParseOutcome(outcome.event, outcome.reason, newest_event_time(payload))


def _repo(payload: dict[str, Any]) -> RepoRef:
    # `project` is the project the hook belongs to: for a merge request or its notes, the target project.
    return RepoRef(
        forge="gitlab",
        full_name=project_path(payload, "project.path_with_namespace"),
        clone_url=text(payload, "project.git_http_url"),
        default_branch=text(payload, "project.default_branch"),
        installation_id=integer(payload, "project.id"),
    )


def _same_project(payload: dict[str, Any], repo: RepoRef, path: str) -> None:
    """The project a change names must be the project the hook came from: ids decide which tree's
    trust policy applies, and a payload naming two projects leaves no way to tell which is meant."""
    named = integer(payload, path)
    if named != repo.installation_id:
        raise MalformedPayload(f"{path}: {named}, but project.id is {repo.installation_id}")


# --- merge requests ----------------------------------------------------------------------------------------

_MR_ACTIONS: dict[str, ChangeAction] = {"open": "opened", "reopen": "reopened", "close": "closed", "merge": "closed"}


def _merge_request(payload: dict[str, Any]) -> ParseOutcome:
    action = text(payload, "object_attributes.action")
    ours = _MR_ACTIONS.get(action) or (_update_action(payload) if action == "update" else None)
    if ours is None:
        if action == "update":
            return ParseOutcome(None, "update without new commits (title, labels, description): nothing to test")
        return ParseOutcome(None, f"merge request action {quoted(action)} does not change what is tested")
    repo = _repo(payload)
    _same_project(payload, repo, "object_attributes.target_project_id")
    number = integer(payload, "object_attributes.iid")
    user = username(payload, "user.username")
    # The hook names the author by id only; `user` is whoever acted. The intake looks the author up.
    author = user if integer(payload, "user.id") == integer(payload, "object_attributes.author_id") else ""
    event = ChangeEvent(
        action=ours,
        repo=repo,
        number=number,
        head_sha=commit_id(payload, "object_attributes.last_commit.id"),
        head_ref=ref_name(payload, "object_attributes.source_branch"),
        # source is null once the source project is deleted; the head stays fetchable from the target.
        head_repo=(
            project_path(payload, "object_attributes.source.path_with_namespace")
            if present(payload, "object_attributes.source")
            else ""
        ),  # fmt: skip
        base_ref=ref_name(payload, "object_attributes.target_branch"),
        base_sha="",  # the hook carries no base commit (no diff_refs): the intake resolves target_branch
        title=text(payload, "object_attributes.title"),
        author=Actor(author),
        sender=Actor(user),
        draft=_draft(payload),
        merged=action == "merge",
        updated_at=optional_time(payload, "object_attributes.updated_at"),
    )
    return ParseOutcome(event, f"merge request !{number} {action}: change {ours}")


def _update_action(payload: dict[str, Any]) -> ChangeAction | None:
    """What an `update` changed for testing: new commits, draft state, or base; None for anything else."""
    if present(payload, "object_attributes.oldrev"):
        # GitLab sets oldrev only when the head moved (a push, an applied suggestion).
        commit_id(payload, "object_attributes.oldrev")
        return "updated"
    # A draft change outranks a new base when both come at once: the brain treats drafts apart.
    if present(payload, "changes.draft"):
        was, now = flag(payload, "changes.draft.previous"), flag(payload, "changes.draft.current")
        if was and not now:
            return "ready"
        if now and not was:
            return "drafted"
    if present(payload, "changes.target_branch"):
        return "retargeted"
    return None


def _draft(payload: dict[str, Any]) -> bool:
    # Older hooks say only work_in_progress: the same flag under its old name.
    if not present(payload, "object_attributes.draft") and present(payload, "object_attributes.work_in_progress"):
        return flag(payload, "object_attributes.work_in_progress")
    return flag(payload, "object_attributes.draft")


# --- notes -------------------------------------------------------------------------------------------------


def _note(payload: dict[str, Any]) -> ParseOutcome:
    noteable = text(payload, "object_attributes.noteable_type")
    if noteable != "MergeRequest":
        return ParseOutcome(None, f"note on a {quoted(noteable)}, not a merge request")
    # Before 16.11 there is no action: every note hook was a new note.
    action = text(payload, "object_attributes.action") if present(payload, "object_attributes.action") else "create"
    if action == "update":
        return ParseOutcome(None, "an edited note runs no command")
    if action != "create":
        return ParseOutcome(None, f"note action {quoted(action)}: only new notes carry commands")
    if present(payload, "object_attributes.system") and flag(payload, "object_attributes.system"):
        # GitLab's own notes ("added 1 commit ...") quote commit titles under the acting user's name.
        return ParseOutcome(None, "a system note runs no command")
    repo = _repo(payload)
    _same_project(payload, repo, "merge_request.target_project_id")
    number = integer(payload, "merge_request.iid")
    event = CommentEvent(
        repo=repo,
        number=number,
        comment_id=integer(payload, "object_attributes.id"),
        body=text(payload, "object_attributes.note"),
        commenter=Actor(username(payload, "user.username")),
        created_at=optional_time(payload, "object_attributes.created_at"),
        # The head the commenter saw: /ok-to-test binds to it.
        seen_head_sha=commit_id(payload, "merge_request.last_commit.id"),
    )
    return ParseOutcome(event, f"note {event.comment_id} on merge request !{number}")


# --- pushes ------------------------------------------------------------------------------------------------


def _push(payload: dict[str, Any]) -> ParseOutcome:
    repo = _repo(payload)
    if present(payload, "project_id"):
        _same_project(payload, repo, "project_id")
    before, after = commit_id(payload, "before"), commit_id(payload, "after")
    event = PushEvent(
        repo=repo,
        ref=ref_name(payload, "ref"),
        before=before,
        after=after,
        created=before == ZERO_SHA,
        deleted=after == ZERO_SHA,
        forced=False,  # GitLab does not say; the intake compares with the previous head
        pusher=Actor(username(payload, "user_username")),
    )
    return ParseOutcome(event, f"push to {event.ref}")


# --- the time of an event ----------------------------------------------------------------------------------

# Times GitLab itself sets at or before the event: their newest is a lower bound of the event's time
# that a replayed body cannot move forward. Commit times are the committer's to choose, and are used
# only for pushes, whose hook carries no other time.
_EVENT_TIME_PATHS = ("object_attributes.updated_at", "object_attributes.created_at", "merge_request.updated_at")


def newest_event_time(payload: dict[str, Any]) -> datetime | None:
    """The newest GitLab-set time in the payload (UTC), or None when it carries none. A push carries
    none: its commits' times are when they were written, and a maintainer may well push a queue of
    commits written weeks ago (its replays are refused by the body's digest, kept 31 days)."""
    found = [_lenient_time(payload, path) for path in _EVENT_TIME_PATHS]
    times = [when for when in found if when is not None]
    return max(times, default=None)


def _lenient_time(payload: dict[str, Any], path: str) -> datetime | None:
    node: Any = payload
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return read_time(node) if isinstance(node, str) else None


_HANDLERS: dict[str, Callable[[dict[str, Any]], ParseOutcome]] = {
    "merge_request": _merge_request,
    "note": _note,
    "push": _push,
}

# The headers under which GitLab sends the kinds above: such a delivery without a kind is broken.
_HEADERS_OF_HANDLED_KINDS = {"Merge Request Hook", "Note Hook", "Confidential Note Hook", "Push Hook"}

# Kinds a project hook commonly sends that we deliberately do not act on, with the reason.
_IGNORED_KINDS = {
    "tag_push": "tag pushes are not tested: branches and merge requests are",
    "pipeline": "GitLab pipelines are not followed; submissions from CI come through the API",
    "build": "GitLab CI jobs are not followed; submissions from CI come through the API",
    "issue": "issues are not changes",
    "work_item": "work items are not changes",
    "wiki_page": "wiki pages are not changes",
    "deployment": "deployments are not changes",
    "release": "releases are not changes",
    "emoji": "emoji reactions carry no commands",
}
