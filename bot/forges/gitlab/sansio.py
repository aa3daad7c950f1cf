"""GitLab webhooks without I/O: check the token (and signature) over raw bytes, parse a delivery into an event."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bot.core.events import (
    Actor,
    ChangeAction,
    ChangeEvent,
    CommentEvent,
    ParseOutcome,
    PushEvent,
    RepoRef,
    as_utc,
    header,
)

__all__ = ["EVENT_HEADER", "TOKEN_HEADER", "MalformedPayload", "ParseOutcome", "TokenError", "delivery_id",
           "event_name", "parse", "verify"]  # fmt: skip

TOKEN_HEADER = "X-Gitlab-Token"
EVENT_HEADER = "X-Gitlab-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # 17.4+: the same across GitLab's retries of one event
EVENT_UUID_HEADER = "X-Gitlab-Event-UUID"  # 14.8+
# Standard Webhooks signing (newest GitLab, behind the webhook_signing_token feature flag).
SIGNATURE_HEADER = "webhook-signature"
SIGNED_ID_HEADER = "webhook-id"
SIGNED_TIME_HEADER = "webhook-timestamp"
SIGNATURE_TOLERANCE = timedelta(minutes=5)
DELIVERY_ID_MAX = 200

ZERO_SHA = "0" * 40
_COMMIT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 repositories
# What git check-ref-format refuses anywhere in a name, plus a leading '-' (read as an option by git).
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|/\.|^\.|\.lock$|/$|\.$")
_UNIX_SECONDS = re.compile(r"[0-9]{1,10}")  # up to the year 2286: no overflow


class TokenError(Exception):
    """The delivery is not proven to come from GitLab: missing or wrong token, or a missing, bad or old signature."""


class MalformedPayload(Exception):
    """The delivery is not JSON we can use, or lacks a field a handled event needs (the message names its path)."""


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
    if signing_token is not None:
        _verify_signature(headers, body, signing_token, as_utc(now))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _verify_signature(headers: Mapping[str, str], body: bytes, signing_token: str, now: datetime) -> None:
    key = _signing_key(signing_token)
    webhook_id = header(headers, SIGNED_ID_HEADER)
    if not webhook_id:
        raise TokenError(f"missing {SIGNED_ID_HEADER} header (a signing token is configured)")
    sent_at = header(headers, SIGNED_TIME_HEADER)
    if not sent_at:
        raise TokenError(f"missing {SIGNED_TIME_HEADER} header (a signing token is configured)")
    signatures = header(headers, SIGNATURE_HEADER)
    if not signatures:
        raise TokenError(f"missing {SIGNATURE_HEADER} header (a signing token is configured)")
    # Signed as sent: the id and time exactly as the headers carry them, then the raw body.
    signed = f"{webhook_id}.{sent_at}.".encode("utf-8", "surrogatepass") + bytes(body)
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise TokenError(f"{SIGNATURE_HEADER} does not match the body under the configured signing token")
    # Only now is the time known to be GitLab's: a refusal below is of a genuine but stale delivery.
    if not _UNIX_SECONDS.fullmatch(sent_at):
        raise TokenError(f"{SIGNED_TIME_HEADER} is not whole seconds since 1970")
    age = now - datetime.fromtimestamp(int(sent_at), UTC)
    if age > SIGNATURE_TOLERANCE:
        raise TokenError(f"{SIGNED_TIME_HEADER} is {int(age.total_seconds())} s old (more than 5 minutes): "
                         "refused as a replay")  # fmt: skip
    if -age > SIGNATURE_TOLERANCE:
        raise TokenError(f"{SIGNED_TIME_HEADER} is {int(-age.total_seconds())} s in the future (more than 5 minutes)")
    # The delivery id is read from Idempotency-Key, which the signature does not cover: it must be the
    # signed webhook-id, or a signed body replayed within the 5 minutes under a new key would count twice.
    # GitLab sends it with every signed delivery (signing came long after 17.4).
    key_header = header(headers, IDEMPOTENCY_HEADER)
    if key_header is None or key_header.strip() != webhook_id.strip():
        raise TokenError(f"{IDEMPOTENCY_HEADER} is not the signed {SIGNED_ID_HEADER}")


def _signing_key(signing_token: str) -> bytes:
    encoded = signing_token.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if encoded == signing_token or not key:
        raise TokenError("the configured signing token is not whsec_<base64 key>; refusing the delivery")
    return key


def _v1_signatures(field: str) -> list[bytes]:
    """The HMAC-SHA256 digests in a space-separated `v1,<base64>` list; other versions and junk are skipped."""
    found = []
    for entry in field.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


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
    payload = _load(body)
    kind = payload.get("object_kind")
    if kind is None:
        if name in _HEADERS_OF_HANDLED_KINDS:
            raise MalformedPayload("object_kind: missing")
        return ParseOutcome(None, f"{_quoted(name)} delivery without object_kind is not used by labgate")
    if not isinstance(kind, str):
        raise MalformedPayload("object_kind: not a string")
    handler = _HANDLERS.get(kind)
    if handler is None:
        return ParseOutcome(None, _IGNORED_KINDS.get(kind, f"object_kind {_quoted(kind)} is not used by labgate"))
    outcome = handler(payload)
    return ParseOutcome(outcome.event, outcome.reason, newest_event_time(payload))


def _load(body: bytes) -> dict[str, Any]:
    try:
        # orjson refuses invalid UTF-8, lone surrogates and nesting past 1024 levels with the same error.
        payload = orjson.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedPayload(f"body is not JSON we can read: {exc.msg}") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(f"body is a JSON {type(payload).__name__}, not an object")
    return payload


def _quoted(text: str) -> str:
    """A value the sender chose, fit for a reason: quoted, and cut short."""
    return repr(text[:60] + "..." if len(text) > 60 else text)


# Field access by JSON path from the root, so that what is missing or wrong is named by where it is.


def _field(payload: dict[str, Any], path: str) -> Any:
    node: Any = payload
    keys = path.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, dict):
            raise MalformedPayload(f"{'.'.join(keys[:depth])}: not an object")
        if key not in node:
            raise MalformedPayload(f"{'.'.join(keys[: depth + 1])}: missing")
        node = node[key]
    return node


def _present(payload: dict[str, Any], path: str) -> bool:
    """Whether `path` holds something other than null (GitLab leaves some fields out, and nulls others)."""
    node: Any = payload
    for key in path.split("."):
        if not isinstance(node, dict) or node.get(key) is None:
            return False
        node = node[key]
    return True


def _text(payload: dict[str, Any], path: str) -> str:
    value = _field(payload, path)
    if not isinstance(value, str):
        raise MalformedPayload(f"{path}: not a string")
    if "\x00" in value:
        # Nothing GitLab writes has one, and the store (PostgreSQL text) cannot keep one.
        raise MalformedPayload(f"{path}: has a NUL character")
    return value


def _integer(payload: dict[str, Any], path: str) -> int:
    value = _field(payload, path)
    # bool is an int in Python; an id must not be a JSON true/false.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPayload(f"{path}: not an integer")
    if not 0 < value < 2**63:  # ids are positive and kept as a 64-bit signed integer
        raise MalformedPayload(f"{path}: out of range")
    return value


def _flag(payload: dict[str, Any], path: str) -> bool:
    value = _field(payload, path)
    if not isinstance(value, bool):
        raise MalformedPayload(f"{path}: not a boolean")
    return value


def _commit_id(payload: dict[str, Any], path: str) -> str:
    value = _text(payload, path)
    # A head goes to git commands: only a full lower-case id, never a name or an option.
    if not _COMMIT_ID.fullmatch(value):
        raise MalformedPayload(f"{path}: not a full commit id")
    return value


def _ref_name(payload: dict[str, Any], path: str) -> str:
    value = _text(payload, path)
    if not value or _BAD_REF.search(value):
        raise MalformedPayload(f"{path}: not a valid git ref name")
    return value


def _time(payload: dict[str, Any], path: str) -> datetime | None:
    """A time GitLab wrote, aware UTC; None when absent or null. Unreadable: MalformedPayload."""
    if not _present(payload, path):
        return None
    when = read_time(_text(payload, path))
    if when is None:
        raise MalformedPayload(f"{path}: not a time")
    return when


def read_time(text: str) -> datetime | None:
    """GitLab's times, aware UTC: "2013-12-03T17:23:34Z", "2013-12-03 17:23:34 UTC" (older hooks),
    "2012-01-03T23:36:29+02:00" (commits); None when unreadable."""
    cleaned = text.strip()
    if cleaned.endswith(" UTC"):
        cleaned = cleaned[:-4] + "+00:00"
    try:
        # Python 3.11's fromisoformat reads 'Z', a space for 'T' and fractions of a second.
        when = datetime.fromisoformat(cleaned)
        return as_utc(when).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _repo(payload: dict[str, Any]) -> RepoRef:
    # `project` is the project the hook belongs to: for a merge request or its notes, the target project.
    return RepoRef(
        forge="gitlab",
        full_name=_text(payload, "project.path_with_namespace"),
        clone_url=_text(payload, "project.git_http_url"),
        default_branch=_text(payload, "project.default_branch"),
        installation_id=_integer(payload, "project.id"),
    )


def _same_project(payload: dict[str, Any], repo: RepoRef, path: str) -> None:
    """The project a change names must be the project the hook came from: ids decide which tree's
    trust policy applies, and a payload naming two projects leaves no way to tell which is meant."""
    named = _integer(payload, path)
    if named != repo.installation_id:
        raise MalformedPayload(f"{path}: {named}, but project.id is {repo.installation_id}")


# --- merge requests ----------------------------------------------------------------------------------------

_MR_ACTIONS: dict[str, ChangeAction] = {"open": "opened", "reopen": "reopened", "close": "closed", "merge": "closed"}


def _merge_request(payload: dict[str, Any]) -> ParseOutcome:
    action = _text(payload, "object_attributes.action")
    ours = _MR_ACTIONS.get(action) or (_update_action(payload) if action == "update" else None)
    if ours is None:
        if action == "update":
            return ParseOutcome(None, "update without new commits (title, labels, description): nothing to test")
        return ParseOutcome(None, f"merge request action {_quoted(action)} does not change what is tested")
    repo = _repo(payload)
    _same_project(payload, repo, "object_attributes.target_project_id")
    number = _integer(payload, "object_attributes.iid")
    user = _text(payload, "user.username")
    # The hook names the author by id only; `user` is whoever acted. The intake looks the author up.
    author = user if _integer(payload, "user.id") == _integer(payload, "object_attributes.author_id") else ""
    event = ChangeEvent(
        action=ours,
        repo=repo,
        number=number,
        head_sha=_commit_id(payload, "object_attributes.last_commit.id"),
        head_ref=_ref_name(payload, "object_attributes.source_branch"),
        # source is null once the source project is deleted; the head stays fetchable from the target.
        head_repo=(
            _text(payload, "object_attributes.source.path_with_namespace")
            if _present(payload, "object_attributes.source")
            else ""
        ),  # fmt: skip
        base_ref=_ref_name(payload, "object_attributes.target_branch"),
        base_sha="",  # the hook carries no base commit (no diff_refs): the intake resolves target_branch
        title=_text(payload, "object_attributes.title"),
        author=Actor(author),
        sender=Actor(user),
        draft=_draft(payload),
        merged=action == "merge",
        updated_at=_time(payload, "object_attributes.updated_at"),
    )
    return ParseOutcome(event, f"merge request !{number} {action}: change {ours}")


def _update_action(payload: dict[str, Any]) -> ChangeAction | None:
    """What an `update` changed for testing: new commits, draft state, or base; None for anything else."""
    if _present(payload, "object_attributes.oldrev"):
        # GitLab sets oldrev only when the head moved (a push, an applied suggestion).
        _commit_id(payload, "object_attributes.oldrev")
        return "updated"
    # A draft change outranks a new base when both come at once: the brain treats drafts apart.
    if _present(payload, "changes.draft"):
        was, now = _flag(payload, "changes.draft.previous"), _flag(payload, "changes.draft.current")
        if was and not now:
            return "ready"
        if now and not was:
            return "drafted"
    if _present(payload, "changes.target_branch"):
        return "retargeted"
    return None


def _draft(payload: dict[str, Any]) -> bool:
    # Older hooks say only work_in_progress: the same flag under its old name.
    if not _present(payload, "object_attributes.draft") and _present(payload, "object_attributes.work_in_progress"):
        return _flag(payload, "object_attributes.work_in_progress")
    return _flag(payload, "object_attributes.draft")


# --- notes -------------------------------------------------------------------------------------------------


def _note(payload: dict[str, Any]) -> ParseOutcome:
    noteable = _text(payload, "object_attributes.noteable_type")
    if noteable != "MergeRequest":
        return ParseOutcome(None, f"note on a {_quoted(noteable)}, not a merge request")
    # Before 16.11 there is no action: every note hook was a new note.
    action = _text(payload, "object_attributes.action") if _present(payload, "object_attributes.action") else "create"
    if action == "update":
        return ParseOutcome(None, "an edited note runs no command")
    if action != "create":
        return ParseOutcome(None, f"note action {_quoted(action)}: only new notes carry commands")
    if _present(payload, "object_attributes.system") and _flag(payload, "object_attributes.system"):
        # GitLab's own notes ("added 1 commit ...") quote commit titles under the acting user's name.
        return ParseOutcome(None, "a system note runs no command")
    repo = _repo(payload)
    _same_project(payload, repo, "merge_request.target_project_id")
    number = _integer(payload, "merge_request.iid")
    event = CommentEvent(
        repo=repo,
        number=number,
        comment_id=_integer(payload, "object_attributes.id"),
        body=_text(payload, "object_attributes.note"),
        commenter=Actor(_text(payload, "user.username")),
        created_at=_time(payload, "object_attributes.created_at"),
        # The head the commenter saw: /ok-to-test binds to it.
        seen_head_sha=_commit_id(payload, "merge_request.last_commit.id"),
    )
    return ParseOutcome(event, f"note {event.comment_id} on merge request !{number}")


# --- pushes ------------------------------------------------------------------------------------------------


def _push(payload: dict[str, Any]) -> ParseOutcome:
    repo = _repo(payload)
    if _present(payload, "project_id"):
        _same_project(payload, repo, "project_id")
    before, after = _commit_id(payload, "before"), _commit_id(payload, "after")
    event = PushEvent(
        repo=repo,
        ref=_ref_name(payload, "ref"),
        before=before,
        after=after,
        created=before == ZERO_SHA,
        deleted=after == ZERO_SHA,
        forced=False,  # GitLab does not say; the intake compares with the previous head
        pusher=Actor(_text(payload, "user_username")),
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
