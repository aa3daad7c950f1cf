"""GitLab sansio: the token and the signature, the whole event map on small hand-written payloads, hostile bodies.

test_sansio_conformance.py checks the same parser against go-gitlab's sample payloads."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.core.events import Actor, ChangeAction, ChangeEvent, CommentEvent, PushEvent, RepoRef
from bot.forges.gitlab.sansio import (
    EVENT_HEADER,
    TOKEN_HEADER,
    MalformedPayload,
    ParseOutcome,
    TokenError,
    delivery_id,
    event_name,
    parse,
    read_time,
    verify,
)

TOKEN = "glwt-7f3c9a1e5b2d4f6a8c0e"
KEY = bytes(range(32))
SIGNING_TOKEN = "whsec_" + base64.b64encode(KEY).decode()
NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)
WEBHOOK_ID = "4c8e2a6b-1d3f-4e5a-9b7c-0d2e4f6a8b1c"

HEAD = "3e8d1a6b9c2f5e7a0b4d6c8e1f3a5b7d9c2e4f6a"
OLD_HEAD = "9f2b7c4d1e6a8b3c5d7e9f0a2b4c6d8e1f3a5b7c"
PUSHED = "7a4c2e9f1b3d5a7c9e0f2b4d6a8c1e3f5b7d9a0c"
KERNEL = RepoRef("gitlab", "kernel/linux", "https://gitlab.example.org/kernel/linux.git", "master", 4242)
PROJECT = {"id": 4242, "name": "linux", "path_with_namespace": "kernel/linux", "default_branch": "master",
           "git_http_url": "https://gitlab.example.org/kernel/linux.git",
           "git_ssh_url": "git@gitlab.example.org:kernel/linux.git"}  # fmt: skip
FORK = {"id": 777, "path_with_namespace": "alice/linux", "default_branch": "master",
        "git_http_url": "https://gitlab.example.org/alice/linux.git"}  # fmt: skip
ALICE = {"id": 51, "name": "Alice", "username": "alice"}
MAINT = {"id": 7, "name": "Maintainer", "username": "maint"}


def at(hour: int, minute: int) -> datetime:
    return datetime(2026, 3, 2, hour, minute, tzinfo=UTC)


def merge_request_hook(action: str, *, user: dict[str, Any] = ALICE, **attributes: Any) -> dict[str, Any]:
    """A merge request !12 from alice's fork into kernel/linux, as GitLab's Merge Request Hook sends it."""
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": dict(user),
        "project": dict(PROJECT),
        "object_attributes": {
            "id": 9001, "iid": 12, "title": "mm: fix a leak in vmalloc", "action": action,
            "source_branch": "vmalloc-leak", "target_branch": "master",
            "source_project_id": 777, "target_project_id": 4242, "author_id": 51,
            "created_at": "2026-03-02 09:00:00 UTC", "updated_at": "2026-03-02 09:30:00 UTC",
            "draft": False, "work_in_progress": False, "state": "opened",
            "source": dict(FORK), "target": dict(PROJECT),
            "last_commit": {"id": HEAD, "message": "mm: fix", "timestamp": "2026-03-01T22:00:00+01:00"},
        } | attributes,
        "changes": {},
    }  # fmt: skip


def change(action: ChangeAction, **fields: Any) -> ChangeEvent:
    """The ChangeEvent of merge_request_hook(...) with its defaults."""
    return ChangeEvent(**({
        "action": action, "repo": KERNEL, "number": 12, "head_sha": HEAD, "head_ref": "vmalloc-leak",
        "head_repo": "alice/linux", "base_ref": "master", "base_sha": "", "title": "mm: fix a leak in vmalloc",
        "author": Actor("alice"), "sender": Actor("alice"), "draft": False, "merged": False,
        "updated_at": at(9, 30),
    } | fields))  # fmt: skip


def note_hook(note: str = "/ok-to-test", *, noteable_type: str = "MergeRequest", **attributes: Any) -> dict[str, Any]:
    """A maintainer's note on merge request !12."""
    return {
        "object_kind": "note",
        "event_type": "note",
        "user": dict(MAINT),
        "project_id": 4242,
        "project": dict(PROJECT),
        "object_attributes": {
            "id": 31337, "note": note, "noteable_type": noteable_type, "author_id": 7, "system": False,
            "created_at": "2026-03-02 10:00:00 UTC", "updated_at": "2026-03-02 10:00:00 UTC",
            "project_id": 4242, "noteable_id": 9001, "action": "create",
        } | attributes,
        "merge_request": {
            "id": 9001, "iid": 12, "target_project_id": 4242, "source_project_id": 777,
            "source_branch": "vmalloc-leak", "target_branch": "master", "updated_at": "2026-03-02 09:30:00 UTC",
            "last_commit": {"id": HEAD, "timestamp": "2026-03-01T22:00:00+01:00"},
        },
    }  # fmt: skip


def push_hook(before: str = OLD_HEAD, after: str = PUSHED, ref: str = "refs/heads/staging") -> dict[str, Any]:
    return {
        "object_kind": "push", "event_name": "push", "before": before, "after": after, "ref": ref,
        "checkout_sha": after, "user_id": 7, "user_name": "Maintainer", "user_username": "maint",
        "project_id": 4242, "project": dict(PROJECT),
        "commits": [
            {"id": OLD_HEAD, "timestamp": "2026-03-02T08:00:00+00:00"},
            {"id": PUSHED, "timestamp": "2026-03-02T11:15:00+02:00"},  # 09:15 UTC, the newest
            {"id": HEAD, "timestamp": "2026-03-02T08:30:00Z"},
        ],
        "total_commits_count": 3,
    }  # fmt: skip


def parse_json(event: str, payload: Any) -> ParseOutcome:
    return parse({EVENT_HEADER: event}, json.dumps(payload).encode())


def sign(body: bytes, *, key: bytes = KEY, webhook_id: str = WEBHOOK_ID, sent: datetime = NOW) -> str:
    signed = f"{webhook_id}.{int(sent.timestamp())}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(body: bytes, *, sent: datetime = NOW, **overrides: str) -> dict[str, str]:
    headers = {
        TOKEN_HEADER: TOKEN,
        "webhook-id": WEBHOOK_ID,
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": sign(body, sent=sent),
        "Idempotency-Key": WEBHOOK_ID,
    }
    return headers | overrides


BODY = json.dumps(push_hook()).encode()


# --- the token ---------------------------------------------------------------------------------------------


def test_right_token_verifies_in_any_header_case() -> None:
    verify({TOKEN_HEADER: TOKEN}, BODY, TOKEN, None, NOW)
    verify({"x-gitlab-token": TOKEN}, BODY, TOKEN, None, NOW)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing X-Gitlab-Token header"),
        ({TOKEN_HEADER: ""}, "X-Gitlab-Token does not match"),
        ({TOKEN_HEADER: "wrong"}, "X-Gitlab-Token does not match"),
        ({TOKEN_HEADER: TOKEN[:-1] + "f"}, "X-Gitlab-Token does not match"),  # differs in the last character
        ({TOKEN_HEADER: TOKEN[:-1]}, "X-Gitlab-Token does not match"),  # a prefix
        ({TOKEN_HEADER: TOKEN + "0"}, "X-Gitlab-Token does not match"),  # one longer
        ({TOKEN_HEADER: TOKEN.upper()}, "X-Gitlab-Token does not match"),
        ({TOKEN_HEADER: f" {TOKEN}"}, "X-Gitlab-Token does not match"),
        ({TOKEN_HEADER: "t\u00f6ken \u2603 \udcff"}, "X-Gitlab-Token does not match"),  # not ASCII: no TypeError
    ],
)
def test_wrong_tokens_are_refused(headers: dict[str, str], message: str) -> None:
    with pytest.raises(TokenError, match=message):
        verify(headers, BODY, TOKEN, None, NOW)


@pytest.mark.parametrize("given", ["", "anything"])
def test_empty_configured_token_refuses_everything(given: str) -> None:
    with pytest.raises(TokenError, match="no webhook token is configured"):
        verify({TOKEN_HEADER: given}, BODY, "", None, NOW)
    with pytest.raises(TokenError, match="no webhook token is configured"):
        verify(signed_headers(BODY, **{TOKEN_HEADER: given}), BODY, "", SIGNING_TOKEN, NOW)


def test_token_error_never_quotes_either_token() -> None:
    with pytest.raises(TokenError) as info:
        verify({TOKEN_HEADER: "guess-1234"}, BODY, TOKEN, None, NOW)
    assert TOKEN not in str(info.value) and "guess-1234" not in str(info.value)


# --- the signature (when a signing token is configured) ----------------------------------------------------


def test_signed_delivery_verifies() -> None:
    verify(signed_headers(BODY), BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_any_one_v1_signature_may_match() -> None:
    # Several entries during a key rotation; other versions (v1a: ed25519) and junk are passed over.
    other = sign(BODY, key=b"k" * 32)
    field = f"v1a,AAAA {other} v1,not-base64!! {sign(BODY)}"
    verify(signed_headers(BODY, **{"webhook-signature": field}), BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_signature_does_not_replace_the_token() -> None:
    with pytest.raises(TokenError, match="X-Gitlab-Token does not match"):
        verify(signed_headers(BODY, **{TOKEN_HEADER: "wrong"}), BODY, TOKEN, SIGNING_TOKEN, NOW)


@pytest.mark.parametrize("missing", ["webhook-signature", "webhook-id", "webhook-timestamp"])
def test_missing_signing_header_is_refused(missing: str) -> None:
    headers = signed_headers(BODY)
    del headers[missing]
    with pytest.raises(TokenError, match=f"missing {missing} header"):
        verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_unsigned_delivery_is_refused_when_signing_is_configured() -> None:
    with pytest.raises(TokenError, match="missing webhook-id"):
        verify({TOKEN_HEADER: TOKEN}, BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_signature_under_another_key_is_refused() -> None:
    headers = signed_headers(BODY, **{"webhook-signature": sign(BODY, key=b"\x01" * 32)})
    with pytest.raises(TokenError, match="webhook-signature does not match"):
        verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b'"maint"', b'"admin"')
    assert tampered != BODY
    with pytest.raises(TokenError, match="webhook-signature does not match"):
        verify(signed_headers(BODY), tampered, TOKEN, SIGNING_TOKEN, NOW)


def test_valid_signature_reused_with_another_body_is_refused() -> None:
    other = json.dumps(note_hook()).encode()
    headers = signed_headers(BODY)
    verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)
    with pytest.raises(TokenError, match="webhook-signature does not match"):
        verify(headers, other, TOKEN, SIGNING_TOKEN, NOW)


def test_signature_over_another_webhook_id_is_refused() -> None:
    # A captured delivery replayed as a new one: new id (and Idempotency-Key to match), old signature.
    headers = signed_headers(BODY, **{"webhook-id": "another-id", "Idempotency-Key": "another-id"})
    with pytest.raises(TokenError, match="webhook-signature does not match"):
        verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_signature_over_another_timestamp_is_refused() -> None:
    headers = signed_headers(BODY, **{"webhook-timestamp": str(int(NOW.timestamp()) + 60)})
    with pytest.raises(TokenError, match="webhook-signature does not match"):
        verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_idempotency_key_must_be_the_signed_webhook_id() -> None:
    # Within the 5 minutes a signed delivery replayed under a new Idempotency-Key would be a new delivery.
    with pytest.raises(TokenError, match="Idempotency-Key is not the signed webhook-id"):
        verify(signed_headers(BODY, **{"Idempotency-Key": "fresh-key"}), BODY, TOKEN, SIGNING_TOKEN, NOW)
    headers = signed_headers(BODY)
    del headers["Idempotency-Key"]
    with pytest.raises(TokenError, match="Idempotency-Key is not the signed webhook-id"):
        verify(headers, BODY, TOKEN, SIGNING_TOKEN, NOW)


@pytest.mark.parametrize("seconds", [300, -300, 0])
def test_timestamp_within_five_minutes_verifies(seconds: int) -> None:
    sent = NOW - timedelta(seconds=seconds)
    verify(signed_headers(BODY, sent=sent), BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_timestamp_301_seconds_old_is_a_replay() -> None:
    sent = NOW - timedelta(seconds=301)
    with pytest.raises(TokenError, match="webhook-timestamp is 301 s old .*refused as a replay"):
        verify(signed_headers(BODY, sent=sent), BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_timestamp_301_seconds_in_the_future_is_refused() -> None:
    sent = NOW + timedelta(seconds=301)
    with pytest.raises(TokenError, match="webhook-timestamp is 301 s in the future"):
        verify(signed_headers(BODY, sent=sent), BODY, TOKEN, SIGNING_TOKEN, NOW)


def test_naive_now_is_read_as_utc() -> None:
    verify(signed_headers(BODY), BODY, TOKEN, SIGNING_TOKEN, NOW.replace(tzinfo=None))


@pytest.mark.parametrize("stamp", ["1772452800.5", "-1", "999999999999", "1e9", " 1772452800", ""])
def test_unreadable_timestamp_is_refused_even_when_signed(stamp: str) -> None:
    body = BODY
    signed = f"{WEBHOOK_ID}.{stamp}.".encode() + body
    signature = "v1," + base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    headers = signed_headers(body, **{"webhook-timestamp": stamp, "webhook-signature": signature})
    with pytest.raises(TokenError, match="webhook-timestamp"):
        verify(headers, body, TOKEN, SIGNING_TOKEN, NOW)


@pytest.mark.parametrize("field", ["", "v1,", "v1", "v2," + sign(BODY)[3:], sign(BODY).upper(), "v1," + "A" * 10_000])
def test_malformed_signature_fields_are_refused(field: str) -> None:
    with pytest.raises(TokenError):
        verify(signed_headers(BODY, **{"webhook-signature": field}), BODY, TOKEN, SIGNING_TOKEN, NOW)


@pytest.mark.parametrize("configured", ["", "whsec_", "whsec_not base64!", base64.b64encode(KEY).decode()])
def test_unusable_signing_token_refuses_everything(configured: str) -> None:
    with pytest.raises(TokenError, match="signing token is not whsec_<base64 key>"):
        verify(signed_headers(BODY), BODY, TOKEN, configured, NOW)


# --- headers -----------------------------------------------------------------------------------------------


def test_delivery_id_prefers_the_idempotency_key() -> None:
    both = {"Idempotency-Key": "key-1", "X-Gitlab-Event-UUID": "uuid-1"}
    assert delivery_id(both, BODY) == "key-1"
    assert delivery_id({"x-gitlab-event-uuid": " uuid-1 "}, BODY) == "uuid-1"


def test_delivery_id_without_headers_is_the_body_digest() -> None:
    # GitLab before 14.8 sends neither: a retry of the same body is still one delivery.
    assert delivery_id({}, BODY) == "sha256:" + hashlib.sha256(BODY).hexdigest()
    assert delivery_id({"Idempotency-Key": " "}, BODY) == delivery_id({}, BODY)
    assert delivery_id({}, BODY + b" ") != delivery_id({}, BODY)


@pytest.mark.parametrize("name", ["Idempotency-Key", "X-Gitlab-Event-UUID"])
def test_delivery_id_bounds(name: str) -> None:
    assert delivery_id({name: "k" * 200}, BODY) == "k" * 200
    with pytest.raises(MalformedPayload, match=f"{name} is longer than 200 characters"):
        delivery_id({name: "k" * 201}, BODY)
    with pytest.raises(MalformedPayload, match=f"{name} has a control character"):
        delivery_id({name: "key\x00nul"}, BODY)


def test_event_name() -> None:
    assert event_name({"x-gitlab-event": " Merge Request Hook "}) == "Merge Request Hook"
    for headers in ({}, {EVENT_HEADER: " "}):
        with pytest.raises(MalformedPayload, match="missing X-Gitlab-Event header"):
            event_name(headers)
    for bad in ("Push Hook\x00", "x" * 101):
        with pytest.raises(MalformedPayload, match="X-Gitlab-Event is not an event name"):
            event_name({EVENT_HEADER: bad})
    with pytest.raises(MalformedPayload, match="missing X-Gitlab-Event"):
        parse({}, BODY)


# --- merge requests ----------------------------------------------------------------------------------------


def test_opened_merge_request() -> None:
    outcome = parse_json("Merge Request Hook", merge_request_hook("open"))
    assert outcome == ParseOutcome(change("opened"), "merge request !12 open: change opened", at(9, 30))


@pytest.mark.parametrize(
    ("action", "ours", "merged"), [("reopen", "reopened", False), ("close", "closed", False), ("merge", "closed", True)]
)
def test_reopened_closed_merged(action: str, ours: ChangeAction, merged: bool) -> None:
    assert parse_json("Merge Request Hook", merge_request_hook(action)).event == change(ours, merged=merged)


def test_update_with_oldrev_is_new_commits() -> None:
    outcome = parse_json("Merge Request Hook", merge_request_hook("update", oldrev=OLD_HEAD))
    assert outcome.event == change("updated")
    assert outcome.reason == "merge request !12 update: change updated"


def test_update_without_oldrev_is_ignored() -> None:
    payload = merge_request_hook("update")
    payload["changes"] = {"title": {"previous": "mm: fix", "current": "mm: fix a leak in vmalloc"},
                          "labels": {"previous": [], "current": [{"title": "mm"}]}}  # fmt: skip
    outcome = parse_json("Merge Request Hook", payload)
    assert (outcome.event, outcome.reason) == (
        None, "update without new commits (title, labels, description): nothing to test"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "ours", "draft"),
    [
        ({"draft": {"previous": True, "current": False}}, "ready", False),
        ({"draft": {"previous": False, "current": True}}, "drafted", True),
        ({"target_branch": {"previous": "master", "current": "next"}}, "retargeted", False),
        # Both at once: the draft state decides (the event still carries the new base).
        ({"draft": {"previous": True, "current": False}, "target_branch": {"previous": "master", "current": "next"}},
         "ready", False),
    ],
)  # fmt: skip
def test_update_without_oldrev_that_matters(changes: dict[str, Any], ours: ChangeAction, draft: bool) -> None:
    base = changes.get("target_branch", {}).get("current", "master")
    payload = merge_request_hook("update", draft=draft, target_branch=base)
    payload["changes"] = changes
    assert parse_json("Merge Request Hook", payload).event == change(ours, draft=draft, base_ref=base)


def test_draft_change_that_changes_nothing_is_ignored() -> None:
    payload = merge_request_hook("update")
    payload["changes"] = {"draft": {"previous": False, "current": False}}
    assert parse_json("Merge Request Hook", payload).event is None


@pytest.mark.parametrize("action", ["approved", "unapproved", "approval", "unapproval", "label", "frobnicate"])
def test_other_actions_are_ignored_naming_the_action(action: str) -> None:
    outcome = parse_json("Merge Request Hook", merge_request_hook(action))
    assert (outcome.event, outcome.reason) == (None, f"merge request action {action!r} does not change what is tested")


def test_someone_else_acting_leaves_the_author_to_the_intake() -> None:
    outcome = parse_json("Merge Request Hook", merge_request_hook("close", user=MAINT))
    assert outcome.event == change("closed", author=Actor(""), sender=Actor("maint"))


def test_merge_request_from_the_same_project_and_from_a_deleted_fork() -> None:
    same = merge_request_hook("open", source=dict(PROJECT), source_project_id=4242)
    assert parse_json("Merge Request Hook", same).event == change("opened", head_repo="kernel/linux")
    deleted = merge_request_hook("close", source=None)
    assert parse_json("Merge Request Hook", deleted).event == change("closed", head_repo="")


def test_old_payload_says_work_in_progress() -> None:
    payload = merge_request_hook("open", work_in_progress=True)
    del payload["object_attributes"]["draft"]
    assert parse_json("Merge Request Hook", payload).event == change("opened", draft=True)
    del payload["object_attributes"]["work_in_progress"]
    with pytest.raises(MalformedPayload, match=r"^object_attributes\.draft: missing$"):
        parse_json("Merge Request Hook", payload)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013-12-03T17:23:34Z", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        ("2013-12-03 17:23:34 UTC", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),
        ("2019-06-05T14:32:20.211Z", datetime(2019, 6, 5, 14, 32, 20, 211000, tzinfo=UTC)),
        ("2012-01-03T23:36:29+02:00", datetime(2012, 1, 3, 21, 36, 29, tzinfo=UTC)),
        ("2013-12-03 17:23:34", datetime(2013, 12, 3, 17, 23, 34, tzinfo=UTC)),  # no zone: GitLab's is UTC
        ("yesterday", None),
        ("9999-12-31T23:59:59-01:00", None),  # past the end of datetime in UTC
    ],
)
def test_gitlab_time_styles(text: str, expected: datetime | None) -> None:
    assert read_time(text) == expected
    if expected is not None:
        payload = merge_request_hook("open", updated_at=text, created_at=text)
        event = parse_json("Merge Request Hook", payload).event
        assert isinstance(event, ChangeEvent) and event.updated_at == expected


def test_unreadable_updated_at_is_malformed_and_null_is_none() -> None:
    with pytest.raises(MalformedPayload, match=r"^object_attributes\.updated_at: not a time$"):
        parse_json("Merge Request Hook", merge_request_hook("open", updated_at="soon"))
    outcome = parse_json("Merge Request Hook", merge_request_hook("open", updated_at=None))
    assert outcome.event == change("opened", updated_at=None)
    assert outcome.event_time == at(9, 0)  # created_at is left


def test_project_id_mismatch_is_malformed() -> None:
    # Which tree's policy applies is decided by the project id: a payload naming two leaves no answer.
    with pytest.raises(MalformedPayload, match=r"^object_attributes\.target_project_id: 777, but project\.id is 4242$"):
        parse_json("Merge Request Hook", merge_request_hook("open", target_project_id=777))


@pytest.mark.parametrize("header", ["Service Hook", "System Hook", "Push Hook", "Merge Request Hook"])
def test_the_body_kind_decides_not_the_header(header: str) -> None:
    assert parse_json(header, merge_request_hook("open")).event == change("opened")


@pytest.mark.parametrize("header", ["Merge Request Hook", "Note Hook", "Confidential Note Hook", "Push Hook"])
def test_handled_header_without_a_kind_is_malformed(header: str) -> None:
    payload = merge_request_hook("open")
    del payload["object_kind"]
    with pytest.raises(MalformedPayload, match="^object_kind: missing$"):
        parse_json(header, payload)


def test_other_header_without_a_kind_is_ignored_naming_the_header() -> None:
    outcome = parse_json("System Hook", {"event_name": "project_create", "project_id": 74})
    assert outcome == ParseOutcome(None, "'System Hook' delivery without object_kind is not used by labgate")


# --- notes -------------------------------------------------------------------------------------------------

OK_TO_TEST = CommentEvent(repo=KERNEL, number=12, comment_id=31337, body="/ok-to-test", commenter=Actor("maint"),
                          created_at=at(10, 0), seen_head_sha=HEAD)  # fmt: skip


@pytest.mark.parametrize("header", ["Note Hook", "Confidential Note Hook"])
def test_new_note_on_a_merge_request(header: str) -> None:
    outcome = parse_json(header, note_hook())
    assert outcome == ParseOutcome(OK_TO_TEST, "note 31337 on merge request !12", at(10, 0))


def test_note_without_action_is_new() -> None:
    payload = note_hook()
    del payload["object_attributes"]["action"]  # GitLab before 16.11
    assert parse_json("Note Hook", payload).event == OK_TO_TEST


def test_edited_note_runs_nothing() -> None:
    outcome = parse_json("Note Hook", note_hook(action="update"))
    assert (outcome.event, outcome.reason) == (None, "an edited note runs no command")


def test_system_note_runs_nothing() -> None:
    # "added 1 commit: * 3e8d1a6b - /ok-to-test": GitLab writes it, under the name of whoever pushed.
    outcome = parse_json("Note Hook", note_hook("added 1 commit\n\n* 3e8d1a6b - /ok-to-test", system=True))
    assert (outcome.event, outcome.reason) == (None, "a system note runs no command")


@pytest.mark.parametrize("noteable", ["Commit", "Issue", "Snippet", "WikiPage"])
def test_notes_elsewhere_are_ignored_naming_the_type(noteable: str) -> None:
    outcome = parse_json("Note Hook", note_hook(noteable_type=noteable))
    assert (outcome.event, outcome.reason) == (None, f"note on a {noteable!r}, not a merge request")


def test_other_note_action_is_ignored() -> None:
    outcome = parse_json("Note Hook", note_hook(action="destroy"))
    assert (outcome.event, outcome.reason) == (None, "note action 'destroy': only new notes carry commands")


def test_note_project_mismatch_is_malformed() -> None:
    payload = note_hook()
    payload["merge_request"]["target_project_id"] = 1
    with pytest.raises(MalformedPayload, match=r"^merge_request\.target_project_id: 1, but project\.id is 4242$"):
        parse_json("Note Hook", payload)


def test_note_event_time_includes_the_merge_requests() -> None:
    payload = note_hook(created_at="2026-03-02 08:00:00 UTC", updated_at=None)
    assert parse_json("Note Hook", payload).event_time == at(9, 30)


# --- pushes ------------------------------------------------------------------------------------------------


def push(before: str = OLD_HEAD, after: str = PUSHED, **flags: bool) -> PushEvent:
    return PushEvent(repo=KERNEL, ref="refs/heads/staging", before=before, after=after, pusher=Actor("maint"),
                     **({"created": False, "deleted": False, "forced": False} | flags))  # fmt: skip


def test_a_push_carries_no_event_time() -> None:
    # Its commits' times are when they were written: a queue of weeks-old commits is a fresh push.
    outcome = parse_json("Push Hook", push_hook())
    assert outcome == ParseOutcome(push(), "push to refs/heads/staging", None)


def test_push_creating_and_deleting_a_branch() -> None:
    created = parse_json("Push Hook", push_hook(before="0" * 40))
    assert created.event == push(before="0" * 40, created=True)
    deleted = push_hook(after="0" * 40)
    deleted["commits"] = []
    outcome = parse_json("Push Hook", deleted)
    assert outcome.event == push(after="0" * 40, deleted=True)
    assert outcome.event_time is None


def test_push_project_mismatch_is_malformed() -> None:
    payload = push_hook() | {"project_id": 1}
    with pytest.raises(MalformedPayload, match=r"^project_id: 1, but project\.id is 4242$"):
        parse_json("Push Hook", payload)


# --- kinds we do not use -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "kind", "reason"),
    [
        ("Tag Push Hook", "tag_push", "tag pushes are not tested: branches and merge requests are"),
        ("Pipeline Hook", "pipeline", "GitLab pipelines are not followed; submissions from CI come through the API"),
        ("Job Hook", "build", "GitLab CI jobs are not followed; submissions from CI come through the API"),
        ("Issue Hook", "issue", "issues are not changes"),
        ("Emoji Hook", "emoji", "emoji reactions carry no commands"),
        ("Feature Flag Hook", "feature_flag", "object_kind 'feature_flag' is not used by labgate"),
        ("Push Hook", "x" * 500, f"object_kind {'x' * 60 + '...'!r} is not used by labgate"),
    ],
)
def test_unused_kinds_are_ignored_with_a_reason(header: str, kind: str, reason: str) -> None:
    assert parse_json(header, {"object_kind": kind}) == ParseOutcome(None, reason)


# --- missing fields, wrong types, hostile bodies -----------------------------------------------------------


def parent_of(payload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The object holding the last key of a dotted path, and that key."""
    *parents, last = path.split(".")
    return functools.reduce(operator.getitem, parents, payload), last


HOOKS: dict[str, Callable[[], dict[str, Any]]] = {
    "Merge Request Hook": lambda: merge_request_hook("open"),
    "Note Hook": note_hook,
    "Push Hook": push_hook,
}
NEEDED_FIELDS = {
    "Merge Request Hook": ["object_attributes.action", "object_attributes.last_commit.id",
                           "object_attributes.last_commit", "object_attributes.iid",
                           "object_attributes.target_project_id", "object_attributes.author_id",
                           "object_attributes.source_branch", "object_attributes.title", "project.id",
                           "project.git_http_url", "user.username", "user"],
    "Note Hook": ["object_attributes.noteable_type", "object_attributes.note", "merge_request.iid",
                  "merge_request.last_commit.id", "merge_request"],
    "Push Hook": ["after", "user_username", "project.path_with_namespace"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("header", "path"), [(header, path) for header, paths in NEEDED_FIELDS.items() for path in paths]
)
def test_missing_field_is_named_by_path(header: str, path: str) -> None:
    payload = HOOKS[header]()
    parent, key = parent_of(payload, path)
    del parent[key]
    with pytest.raises(MalformedPayload) as info:
        parse_json(header, payload)
    assert str(info.value) == f"{path}: missing"


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("iid", "12", "object_attributes.iid: not an integer"),
        ("iid", True, "object_attributes.iid: not an integer"),
        ("iid", 12.0, "object_attributes.iid: not an integer"),
        ("iid", 0, "object_attributes.iid: out of range"),
        ("iid", -12, "object_attributes.iid: out of range"),
        ("iid", 2**63, "object_attributes.iid: out of range"),
        ("title", 5, "object_attributes.title: not a string"),
        ("title", "a\x00b", "object_attributes.title: has a NUL character"),
        ("draft", "false", "object_attributes.draft: not a boolean"),
        ("last_commit", None, "object_attributes.last_commit: not an object"),
        ("last_commit", [HEAD], "object_attributes.last_commit: not an object"),
        ("last_commit", {"id": HEAD.upper()}, "object_attributes.last_commit.id: not a full commit id"),
        ("last_commit", {"id": HEAD[:12]}, "object_attributes.last_commit.id: not a full commit id"),
        ("last_commit", {"id": "--upload-pack=touch /tmp/x"}, "object_attributes.last_commit.id: not a full commit id"),
        ("source_branch", "--upload-pack=x", "object_attributes.source_branch: not a valid git ref name"),
        ("source_branch", "a..b", "object_attributes.source_branch: not a valid git ref name"),
        ("source_branch", "a b", "object_attributes.source_branch: not a valid git ref name"),
        ("source_branch", "", "object_attributes.source_branch: not a valid git ref name"),
        ("target_branch", "x\nInjected: 1", "object_attributes.target_branch: not a valid git ref name"),
        ("source", "alice/linux", "object_attributes.source: not an object"),
        ("oldrev", 5, "object_attributes.oldrev: not a string"),
    ],
)
def test_wrong_field_types_are_named(attribute: str, value: Any, message: str) -> None:
    payload = merge_request_hook("reopen" if attribute != "oldrev" else "update", **{attribute: value})
    with pytest.raises(MalformedPayload) as info:
        parse_json("Merge Request Hook", payload)
    assert str(info.value) == message


def test_sha256_repositories_have_64_digit_ids() -> None:
    long_head = "ab" * 32
    payload = merge_request_hook("open", last_commit={"id": long_head})
    assert parse_json("Merge Request Hook", payload).event == change("opened", head_sha=long_head)


def test_nul_in_a_note_is_malformed_not_stored() -> None:
    with pytest.raises(MalformedPayload, match=r"^object_attributes\.note: has a NUL character$"):
        parse_json("Note Hook", note_hook("/ok-to-test\x00"))


# Names that go to logs and records: a delivery with the clear-text token (anyone who has seen it) must not
# be able to write a line of its own into a log, or a path that climbs out of a directory named after it.
USER_PATHS = [("Merge Request Hook", "user.username"), ("Note Hook", "user.username"), ("Push Hook", "user_username")]
PROJECT_PATHS = [(hook, "project.path_with_namespace") for hook in HOOKS] + [
    ("Merge Request Hook", "object_attributes.source.path_with_namespace")
]
BAD_USERNAMES = ["maint\n2026-03-02 12:00:00 INFO approved by root", "maint\r", "ma int", "maint\x1b[2K", "",
                 "-maint", "maint/other", "ma\u202eint", "maint\u2028", "maint\x85", ".", "..", "m" * 256,
                 "mäint"]  # fmt: skip
BAD_PROJECT_PATHS = ["kernel/linux\nINFO forged", "kernel", "kernel//linux", "kernel/linux/", "/kernel/linux",
                     "kernel/../linux", "kernel/./linux", "../kernel", "kernel/-linux", "kernel/lin ux",
                     "kernel/" + "l" * 256, "kernel\\linux", "kernel/linux\u202e", ""]  # fmt: skip


def _with(header: str, path: str, value: Any) -> dict[str, Any]:
    payload = HOOKS[header]()
    parent, key = parent_of(payload, path)
    parent[key] = value
    return payload


BAD_NAMES = [
    (header, path, value, "not a GitLab username") for header, path in USER_PATHS for value in BAD_USERNAMES
] + [
    (header, path, value, "not a GitLab project path") for header, path in PROJECT_PATHS for value in BAD_PROJECT_PATHS
]


@pytest.mark.parametrize(("header", "path", "value", "reason"), BAD_NAMES)
def test_a_name_that_is_not_gitlabs_is_malformed(header: str, path: str, value: str, reason: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        parse_json(header, _with(header, path, value))
    assert str(info.value) == f"{path}: {reason}"


@pytest.mark.parametrize(("header", "path"), USER_PATHS)
@pytest.mark.parametrize("value", ["maint", "Maint.Ainer_2-x", "project_4242_bot_5f2a9c", "_x", "m" * 255])
def test_gitlab_usernames_are_read(header: str, path: str, value: str) -> None:
    event = parse_json(header, _with(header, path, value)).event
    if isinstance(event, PushEvent):
        assert event.pusher == Actor(value)
    elif isinstance(event, CommentEvent):
        assert event.commenter == Actor(value)
    else:
        assert isinstance(event, ChangeEvent) and event.sender == event.author == Actor(value)


@pytest.mark.parametrize("value", ["kernel/linux", "Kernel.Org/net/net-next_2/linux", "a/" * 21 + "b",
                                   "kernel/" + "l" * 255, "ns/.hidden", "ns/x.git.y"])  # fmt: skip
def test_gitlab_project_paths_are_read(value: str) -> None:
    payload = _with("Merge Request Hook", "project.path_with_namespace", value)
    payload["object_attributes"]["source"]["path_with_namespace"] = value
    event = parse_json("Merge Request Hook", payload).event
    assert isinstance(event, ChangeEvent) and event.repo.full_name == value and event.head_repo == value


@pytest.mark.parametrize("branch", ["fix\u2028INFO forged", "fix\x85", "fix\x9b2K", "fix\u202egnirts", "fix\u2066"])
def test_a_branch_with_a_line_separator_or_a_bidi_control_is_malformed(branch: str) -> None:
    with pytest.raises(MalformedPayload, match=r"^object_attributes\.source_branch: not a valid git ref name$"):
        parse_json("Merge Request Hook", merge_request_hook("open", source_branch=branch))


def test_a_branch_in_another_script_is_still_read() -> None:
    payload = merge_request_hook("open", source_branch="fix-überlauf-修正")
    assert parse_json("Merge Request Hook", payload).event == change("opened", head_ref="fix-überlauf-修正")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON we can read"),
        (b"", "body is not JSON we can read"),
        (b"\xff\xfe{}", "body is not JSON we can read"),
        (b'{"object_kind": "\xed\xa0\x80"}', "body is not JSON we can read"),  # a UTF-8 encoded surrogate
        (b'{"object_kind": "note\\ud800"}', "body is not JSON we can read"),  # a lone escaped surrogate
        (b'{"object_kind": "push"}\x00', "body is not JSON we can read"),
        (b"\x00" * 1000, "body is not JSON we can read"),
        (b"NaN", "body is not JSON we can read"),
        (b"[" * 100_000, "body is not JSON we can read"),
        (b'{"a":' * 100_000, "body is not JSON we can read"),
        (b"[1, 2]", "body is a JSON list, not an object"),
        (b'"push"', "body is a JSON str, not an object"),
        (b"null", "body is a JSON NoneType, not an object"),
        (b"7", "body is a JSON int, not an object"),
        (b'{"object_kind": 7}', "object_kind: not a string"),
        (b'{"object_kind": "push", "project": []}', "project: not an object"),
        (b'{"object_kind": "merge_request", "object_attributes": "open"}', "object_attributes: not an object"),
    ],
)
def test_hostile_bodies_are_malformed(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload) as info:
        parse({EVENT_HEADER: "Push Hook"}, body)
    assert str(info.value).startswith(message)


def test_twenty_megabytes_of_junk_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="body is not JSON we can read"):
        parse({EVENT_HEADER: "Push Hook"}, b'{"object_kind": "push", "x": "' + b"A" * 20_000_000)


def every_path(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        paths.append((*prefix, key))
        paths.extend(every_path(value, (*prefix, key)))
    return paths


HOSTILE_VALUES: list[Any] = [None, True, 0, -1, 2**64, 1.5, "", "x\x00", "\u202e", [], [{}], {}, {"id": None}]


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ("Merge Request Hook", merge_request_hook("open")),
        ("Merge Request Hook", merge_request_hook("update", oldrev=OLD_HEAD)),
        ("Note Hook", note_hook()),
        ("Push Hook", push_hook()),
    ],
    ids=["open", "update", "note", "push"],
)
def test_any_field_of_any_type_gives_an_outcome_or_malformed(header: str, payload: dict[str, Any]) -> None:
    """Every field, one at a time, set to each hostile value: nothing but an outcome or MalformedPayload."""
    for path in every_path(payload):
        for value in HOSTILE_VALUES:
            changed = json.loads(json.dumps(payload))
            parent, key = parent_of(changed, ".".join(path))
            parent[key] = value
            try:
                outcome = parse_json(header, changed)
            except MalformedPayload:
                continue
            assert isinstance(outcome, ParseOutcome), (path, value)


def test_malformed_message_does_not_include_the_payload() -> None:
    payload = merge_request_hook("open", title="secret plans " * 100)
    del payload["object_attributes"]["last_commit"]["id"]
    with pytest.raises(MalformedPayload) as info:
        parse_json("Merge Request Hook", payload)
    assert "secret plans" not in str(info.value) and len(str(info.value)) < 100
