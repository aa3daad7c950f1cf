"""GitHub sansio: signatures, every sample of ours parsed to its exact outcome, malformed deliveries.

The samples are the project's own (tests/samples/github); test_sansio_conformance.py checks the same
parser against octokit's examples and the published signature vectors."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

import pytest

from bot.core.events import (
    Actor,
    ChangeAction,
    ChangeEvent,
    CommentEvent,
    Event,
    InstallationEvent,
    PingEvent,
    PushEvent,
    RepoRef,
    RerunEvent,
)
from bot.forges.github.sansio import (
    MalformedPayload,
    ParseOutcome,
    SignatureError,
    delivery_id,
    event_name,
    parse,
    verify,
)
from tests.samples import github_body, github_payload, github_sample_names

# GitHub's documented example ("Validating webhook deliveries", "Testing the webhook payload validation").
DOCS_SECRET = "It's a Secret to Everybody"
DOCS_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

BASE = "5c1f0e3a9b7d2c4e6f8a0b1c3d5e7f9a2b4c6d8e"
OPENED_HEAD = "9f2b7c4d1e6a8b3c5d7e9f0a2b4c6d8e1f3a5b7c"
HEAD = "3e8d1a6b9c2f5e7a0b4d6c8e1f3a5b7d9c2e4f6a"  # after the synchronize
PUSHED = "7a4c2e9f1b3d5a7c9e0f2b4d6a8c1e3f5b7d9a0c"
HELLO = RepoRef("github", "octo-org/hello", "https://github.com/octo-org/hello.git", "main", 77)
MAINT = Actor("maint", None, False)


def at(hour: int, minute: int) -> datetime:
    return datetime(2026, 3, 2, hour, minute, tzinfo=UTC)


def change(action: ChangeAction, head: str, updated_at: datetime, draft: bool = False) -> ChangeEvent:
    """Every pull_request sample is PR #7 at a different moment."""
    return ChangeEvent(
        action=action,
        repo=HELLO,
        number=7,
        head_sha=head,
        head_ref="greet-null",
        head_repo="octo-org/hello",
        base_ref="main",
        base_sha=BASE,
        title="greet: treat a NULL name like an empty one",
        author=Actor("alice", "MEMBER", False),
        sender=Actor("alice", None, False),
        draft=draft,
        merged=False,
        updated_at=updated_at,
    )


def rerun(scope: Literal["run", "suite", "action"], *, check_id: int | None = 6100000001,
          action: str | None = None) -> RerunEvent:  # fmt: skip
    return RerunEvent(
        repo=HELLO,
        head_sha=HEAD,
        scope=scope,
        requester=MAINT,
        check_id=check_id,
        external_id="42" if check_id else None,
        action=action,
        numbers=(7,),
    )


def push(ref: str, before: str, *, created: bool) -> PushEvent:
    return PushEvent(repo=HELLO, ref=ref, before=before, after=PUSHED, created=created, deleted=False,
                     forced=False, pusher=Actor("maint"))  # fmt: skip


# The exact outcome of every sample: an event, or the reason it is ignored. A new sample without a row fails.
EXPECTED: dict[str, Event | str] = {
    "check_run/completed.json": "check_run 'completed': our own check run updates, nothing to do",
    "check_run/requested_action.json": rerun("action", action="retest-failed"),
    "check_run/rerequested.json": rerun("run"),
    "check_suite/rerequested.json": rerun("suite", check_id=None),
    "installation/created.json": InstallationEvent(
        action="created", installation_id=77, account="octo-org", repositories=("octo-org/hello",)
    ),
    "issue_comment/created.json": CommentEvent(
        repo=HELLO,
        number=7,
        comment_id=2100000001,
        body="/ok-to-test",
        commenter=Actor("maint", "MEMBER", False),
        created_at=at(10, 0),
    ),
    "issue_comment/created.on-issue.json": "comment on an issue, not a pull request",
    "ping/payload.json": PingEvent(
        repo=RepoRef("github", "octo-org/hello", "https://github.com/octo-org/hello.git", "main"),
        hook_id=480000001,
        zen="Keep it logically awesome.",
    ),
    "pull_request/closed.json": change("closed", HEAD, at(11, 0)),
    "pull_request/converted_to_draft.json": change("drafted", HEAD, at(12, 10), draft=True),
    "pull_request/opened.json": change("opened", OPENED_HEAD, at(9, 0)),
    "pull_request/ready_for_review.json": change("ready", HEAD, at(12, 20)),
    "pull_request/reopened.json": change("reopened", HEAD, at(12, 0)),
    "pull_request/synchronize.json": change("updated", HEAD, at(9, 30)),
    "push/new-branch.json": push("refs/heads/staging", "0" * 40, created=True),
    "push/payload.json": push("refs/heads/main", BASE, created=False),
    "status/payload.json": "commit statuses are reports (ours included), not triggers",
}


def headers_for(event: str, **extra: str) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", **extra}


def load(name: str) -> dict[str, Any]:
    return github_payload(name)


def parse_json(event: str, payload: dict[str, Any]) -> ParseOutcome:
    return parse(headers_for(event), json.dumps(payload).encode())


def pr_comment(body: str = "/retest") -> dict[str, Any]:
    payload = load("issue_comment/created.json")
    payload["comment"]["body"] = body
    return payload


def signed(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- signature ---------------------------------------------------------------------------------------------


def test_githubs_documented_example_verifies() -> None:
    verify({"X-Hub-Signature-256": DOCS_SIGNATURE}, b"Hello, World!", DOCS_SECRET)
    with pytest.raises(SignatureError, match="does not match"):
        verify({"X-Hub-Signature-256": DOCS_SIGNATURE}, b"Hello, World?", DOCS_SECRET)


def test_signature_header_lookup_ignores_case() -> None:
    verify({"x-hub-signature-256": DOCS_SIGNATURE}, b"Hello, World!", DOCS_SECRET)


def test_signature_is_over_raw_bytes_not_reserialised_json() -> None:
    # A JSON escape and a non-ASCII character: both change bytes when the JSON is written out again.
    body = github_body("issue_comment/created.json").replace(b'"/ok-to-test"', '"/ok \\u001b[0m \u2665"'.encode())
    signature = signed(body, "s3cret")
    verify({"X-Hub-Signature-256": signature}, body, "s3cret")
    reserialised = json.dumps(json.loads(body)).encode()  # same JSON, other bytes
    assert reserialised != body
    with pytest.raises(SignatureError, match="does not match"):
        verify({"X-Hub-Signature-256": signature}, reserialised, "s3cret")


def test_uppercase_hex_is_the_same_digest() -> None:
    upper = "sha256=" + DOCS_SIGNATURE.removeprefix("sha256=").upper()
    verify({"X-Hub-Signature-256": upper}, b"Hello, World!", DOCS_SECRET)


@pytest.mark.parametrize(
    ("headers", "secret", "message"),
    [
        ({}, "s", "missing X-Hub-Signature-256"),
        ({"X-Hub-Signature-256": "sha1=" + "0" * 40}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 63}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "0" * 64}, "s", "not of the form"),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, "s", "does not match"),
        ({"X-Hub-Signature-256": "sha256=" + hmac.new(b"", b"x", hashlib.sha256).hexdigest()}, "", "no webhook secret"),
    ],
)
def test_signature_failures(headers: dict[str, str], secret: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(headers, b"x", secret)


def test_legacy_sha1_header_alone_is_refused() -> None:
    body = b"Hello, World!"
    sha1 = "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureError, match="missing"):
        verify({"X-Hub-Signature": sha1}, body, "k")


def test_signature_error_never_quotes_the_secret_or_body() -> None:
    secret, body = "hunter2-very-secret", b'{"token": "payload-content"}'
    with pytest.raises(SignatureError) as info:
        verify({"X-Hub-Signature-256": "sha256=" + "a" * 64}, body, secret)
    assert secret not in str(info.value) and "payload-content" not in str(info.value)


# --- every sample of ours ---------------------------------------------------------------------------------


def test_every_sample_has_an_expectation() -> None:
    assert sorted(EXPECTED) == github_sample_names()


@pytest.mark.parametrize("name", github_sample_names())
def test_sample_parses_to_expected_outcome(name: str) -> None:
    assert name in EXPECTED, f"no expected outcome for new sample {name}"
    event = name.split("/")[0]  # the directory is the X-GitHub-Event value
    outcome = parse(headers_for(event), github_body(name))
    expected = EXPECTED[name]
    if isinstance(expected, str):
        assert (outcome.event, outcome.reason) == (None, expected)
    else:
        assert outcome.event == expected
        assert outcome.reason


def test_accepted_reasons_say_what_was_accepted() -> None:
    assert parse_json("pull_request", load("pull_request/synchronize.json")).reason == (
        "pull request #7 synchronize: change updated"
    )
    assert parse_json("check_run", load("check_run/rerequested.json")).reason == "re-run of check run 6100000001"
    assert parse_json("push", load("push/new-branch.json")).reason == "push to refs/heads/staging"


# --- pull_request ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["labeled", "edited", "assigned", "review_requested", "auto_merge_enabled"])
def test_other_pull_request_actions_are_ignored(action: str) -> None:
    payload = load("pull_request/opened.json") | {"action": action}
    outcome = parse_json("pull_request", payload)
    assert (outcome.event, outcome.reason) == (None, f"pull_request action {action!r} does not change what is tested")


def test_a_new_base_branch_is_a_retarget_and_a_title_edit_is_not() -> None:
    payload = load("pull_request/opened.json") | {"action": "edited"}
    payload["changes"] = {"title": {"from": "old title"}}
    assert parse_json("pull_request", payload).event is None
    payload["changes"] = {"base": {"ref": {"from": "main"}, "sha": {"from": "5c1f0e3a" + "0" * 32}}}
    payload["pull_request"]["base"]["ref"] = "next"
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent) and (event.action, event.base_ref) == ("retargeted", "next")


def test_pull_request_from_fork_and_by_bot() -> None:
    payload = load("pull_request/opened.json")
    payload["pull_request"]["head"]["repo"]["full_name"] = "someone/hello"
    payload["pull_request"]["user"] = {"login": "dependabot[bot]", "type": "Bot"}
    payload["pull_request"]["author_association"] = "NONE"
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent)
    assert event.head_repo == "someone/hello"
    assert event.author == Actor("dependabot[bot]", "NONE", True)


def test_pull_request_from_deleted_fork_has_empty_head_repo() -> None:
    payload = load("pull_request/closed.json")
    payload["pull_request"]["head"]["repo"] = None
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent) and event.head_repo == ""


def test_merged_pull_request() -> None:
    payload = load("pull_request/closed.json")
    payload["pull_request"]["merged"] = True
    event = parse_json("pull_request", payload).event
    assert isinstance(event, ChangeEvent) and event.merged and event.action == "closed"


# --- issue_comment -----------------------------------------------------------------------------------------


def test_comment_on_pull_request() -> None:
    outcome = parse_json("issue_comment", pr_comment("/ok-to-test\n"))
    assert outcome.event == CommentEvent(
        repo=HELLO,
        number=7,
        comment_id=2100000001,
        body="/ok-to-test\n",
        commenter=Actor("maint", "MEMBER", False),
        created_at=at(10, 0),  # the sample's comment.created_at
    )
    assert outcome.reason == "comment 2100000001 on pull request #7"


def test_comment_by_bot_and_null_body() -> None:
    payload = pr_comment()
    payload["comment"]["user"]["type"] = "Bot"
    payload["comment"]["body"] = None
    event = parse_json("issue_comment", payload).event
    assert isinstance(event, CommentEvent)
    assert event.commenter.is_bot and event.body == ""


def test_edited_comment_on_pull_request_is_ignored() -> None:
    payload = pr_comment() | {"action": "edited"}
    assert parse_json("issue_comment", payload).event is None


# --- check_run / check_suite -------------------------------------------------------------------------------


def test_check_run_keeps_our_external_id() -> None:
    payload = load("check_run/rerequested.json")
    payload["check_run"]["external_id"] = "job-42"
    event = parse_json("check_run", payload).event
    assert isinstance(event, RerunEvent) and event.external_id == "job-42"


def test_requested_action_without_identifier_is_malformed() -> None:
    payload = load("check_run/requested_action.json")
    del payload["requested_action"]["identifier"]
    with pytest.raises(MalformedPayload, match=r"missing field requested_action\.identifier"):
        parse_json("check_run", payload)


# --- ping, installation, unknown ---------------------------------------------------------------------------


def test_organisation_ping_has_no_repository() -> None:
    payload = load("ping/payload.json")
    del payload["repository"]
    assert parse_json("ping", payload).event == PingEvent(None, 480000001, "Keep it logically awesome.")


def test_installation_deleted_without_repositories() -> None:
    payload = load("installation/created.json") | {"action": "deleted"}
    del payload["repositories"]
    assert parse_json("installation", payload).event == InstallationEvent("deleted", 77, "octo-org", ())


def test_unknown_event_is_ignored_with_reason() -> None:
    assert parse_json("star", {"action": "created"}) == ParseOutcome(None, "event 'star' is not used by labgate")


# --- headers and malformed bodies --------------------------------------------------------------------------


def test_header_helpers() -> None:
    headers = {"x-github-event": "push", "X-GITHUB-DELIVERY": " 72d3162e "}
    assert event_name(headers) == "push"
    assert delivery_id(headers) == "72d3162e"
    with pytest.raises(MalformedPayload, match="X-GitHub-Delivery"):
        delivery_id({})
    with pytest.raises(MalformedPayload, match="X-GitHub-Event"):
        event_name({"X-GitHub-Event": " "})
    with pytest.raises(MalformedPayload, match="X-GitHub-Event"):
        parse({}, b"{}")


def test_form_encoded_delivery() -> None:
    body = github_body("ping/payload.json").decode()
    form = urlencode({"payload": body}).encode()
    outcome = parse(headers_for("ping", **{"Content-Type": "application/x-www-form-urlencoded"}), form)
    assert outcome.event == EXPECTED["ping/payload.json"]
    with pytest.raises(MalformedPayload, match="no `payload` field"):
        parse(headers_for("ping", **{"Content-Type": "application/x-www-form-urlencoded"}), b"other=1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not JSON"),
        (b"\xff\xfe", "body is not UTF-8"),
        (b"[1, 2]", "JSON list, not an object"),
        (b"", "body is not JSON"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPayload, match=message):
        parse(headers_for("push"), body)


def drop(path: str, payload: dict[str, Any]) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    del node[last]
    return payload


@pytest.mark.parametrize(
    ("event", "sample", "path"),
    [
        ("pull_request", "pull_request/opened.json", "action"),
        ("pull_request", "pull_request/opened.json", "pull_request.head.sha"),
        ("pull_request", "pull_request/opened.json", "pull_request.base.ref"),
        ("pull_request", "pull_request/opened.json", "pull_request.user.login"),
        ("pull_request", "pull_request/opened.json", "pull_request.author_association"),
        ("pull_request", "pull_request/opened.json", "repository.clone_url"),
        ("pull_request", "pull_request/opened.json", "sender"),
        ("issue_comment", "issue_comment/created.json", "issue.number"),
        ("issue_comment", "issue_comment/created.json", "comment.author_association"),
        ("check_run", "check_run/rerequested.json", "check_run.head_sha"),
        ("check_run", "check_run/rerequested.json", "check_run.pull_requests"),
        ("check_suite", "check_suite/rerequested.json", "check_suite.head_sha"),
        ("push", "push/payload.json", "after"),
        ("push", "push/payload.json", "pusher.name"),
        ("ping", "ping/payload.json", "zen"),
        ("installation", "installation/created.json", "installation.account"),
    ],
)
def test_missing_field_is_named_by_path(event: str, sample: str, path: str) -> None:
    payload = drop(path, load(sample))
    with pytest.raises(MalformedPayload) as info:
        parse_json(event, payload)
    assert str(info.value) == f"missing field {path}"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("pull_request.number", "2", "field pull_request.number is not an integer"),
        ("pull_request.number", True, "field pull_request.number is not an integer"),
        ("pull_request.draft", "false", "field pull_request.draft is not a boolean"),
        ("pull_request.head", None, "field pull_request.head is not an object"),
        ("installation", {"id": "1"}, "field installation.id is not an integer"),
    ],
)
def test_wrong_field_types_are_named(path: str, value: Any, message: str) -> None:
    payload = load("pull_request/opened.json")
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    node[last] = value
    with pytest.raises(MalformedPayload) as info:
        parse_json("pull_request", payload)
    assert str(info.value) == message


def test_bad_list_item_is_named_by_index() -> None:
    payload = load("check_suite/rerequested.json")
    payload["check_suite"]["pull_requests"] = [{"number": 2}, "3"]
    with pytest.raises(MalformedPayload, match=r"check_suite\.pull_requests\[1\] is not an object"):
        parse_json("check_suite", payload)


def test_malformed_message_does_not_include_the_payload() -> None:
    payload = load("pull_request/opened.json")
    del payload["pull_request"]["head"]["sha"]
    with pytest.raises(MalformedPayload) as info:
        parse_json("pull_request", payload)
    assert "Update the README" not in str(info.value) and len(str(info.value)) < 100
