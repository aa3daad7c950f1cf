"""POST /api/v1/submissions and GET /api/v1/submissions/{id} on the real store (SQLite and PostgreSQL), a real
Redis broker and the real policy; the verifier is injected (as bench/submissions.py does), except in the
end-to-end tests, which sign real tokens with FakeOidcIssuer's keys and verify them with OidcVerifier."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import event, func, select, text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from bot.host.config import Config, Tree, Web
from bot.host.stores import Runtime, open_runtime
from bot.intake.submissions import SUBMISSION_TASK, make_pipeline
from bot.oidc.keys import KeysUnavailable
from bot.oidc.settings import OidcIssuer, OidcSettings, SubmitRule
from bot.oidc.types import TokenRefused, VerifiedToken
from bot.store.ci_submissions import MAX_READ_TOKENS
from bot.store.models import CiSubmission, CiSubmissionReader, Pipeline
from bot.web import submissions
from bot.web.app import create_app
from bot.web.hooks import BodyBudget
from bot.web.submissions import open_submission_api
from tests.fakes.oidc_issuer import DROP, FakeOidcIssuer, github_claims
from workers.app import CONTROL_QUEUE, configure
from workers.errors import UserError
from workers.patchcheck import check_patch

ISSUER = "https://token.actions.githubusercontent.com"
AUDIENCE = "https://labgate.example"
REPOSITORY_ID = "588298808"  # github_claims' repository (nickolashkraus/flask-oidc)
SHA = "a501fa6b" + "0" * 32  # github_claims' sha
OPERATOR = "operator-0123456789-abcdef"
PUBLIC_URL = "https://ci.example.org"
PATH = "/api/v1/submissions"
TITLE_REFUSED = "title: one line of text: no control, line separator or bidirectional formatting character"
PATCH = (Path(__file__).resolve().parents[3] / "examples" / "hello" / "patches" / "pass.patch").read_text()


class FakeVerifier:
    """A verifier to inject, as the benchmark injects its constant one: each token it issued verifies to the
    documented GitHub claims (with overrides) or raises what it was told to; it records what it was asked."""

    def __init__(self) -> None:
        self.outcomes: dict[str, VerifiedToken | Exception] = {}
        self.asked: list[str] = []

    def issue(self, **overrides: Any) -> str:
        claims = github_claims(ISSUER, AUDIENCE, int(time.time()), **overrides)
        token = secrets.token_urlsafe(16)
        self.outcomes[token] = VerifiedToken(ISSUER, claims, claims["jti"], datetime.fromtimestamp(claims["exp"], UTC))
        return token

    def raising(self, exc: Exception) -> str:
        token = secrets.token_urlsafe(16)
        self.outcomes[token] = exc
        return token

    async def __call__(self, token: str) -> VerifiedToken:
        self.asked.append(token)
        outcome = self.outcomes.get(token)
        if outcome is None:
            raise TokenRefused("token", "not a compact JWT (header.payload.signature, base64url JSON)")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def make_config(root: Path, issuer: str = ISSUER) -> Config:
    rule = SubmitRule(issuer=issuer, tree="hello", tier="qemu", repository_ids=[REPOSITORY_ID])
    oidc = OidcSettings(audience=AUDIENCE, issuers=[OidcIssuer(url=issuer)], rules=[rule])
    trees = [Tree(name="hello", url=str(root / "origin"), branches=["main", "next"]),
             Tree(name="other", url=str(root / "other"), branches=["main"])]  # fmt: skip
    web = Web(public_url=PUBLIC_URL, operator_token_sha256=[hashlib.sha256(OPERATOR.encode()).hexdigest()])
    return Config(data_dir=root / "data", trees=trees, oidc=oidc, web=web)


@dataclass
class Api:
    runtime: Runtime
    client: TestClient
    broker: redis.Redis
    verifier: FakeVerifier = field(default_factory=FakeVerifier)

    def post(self, body: Any, token: str | None = None, **headers: str) -> httpx.Response:
        sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(PATH, content=content, headers={**sent, "Content-Type": "application/json", **headers})

    def get(self, submission_id: int | str, token: str | None, query: str = "") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.client.get(f"{PATH}/{submission_id}{query}", headers=headers)

    def queued(self) -> list[tuple[str, list[Any]]]:
        """Task names and args waiting in the control queue, oldest first, as kombu's Redis transport stores them."""
        found = []
        for raw in reversed(self.broker.lrange(CONTROL_QUEUE, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append((message["headers"]["task"], args))
        return found

    def submissions(self) -> list[CiSubmission]:
        with self.runtime.store.session() as session:
            return list(session.scalars(select(CiSubmission).order_by(CiSubmission.id)))

    def pipelines(self) -> int:
        with self.runtime.store.session() as session:
            return int(session.scalar(select(func.count()).select_from(Pipeline)) or 0)


def body(**fields: Any) -> dict[str, Any]:
    return {"tree": "hello", "base_branch": "main", "sha": SHA, **fields}


@pytest.fixture
def api(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[Api]:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    verifier = FakeVerifier()
    broker = redis.Redis.from_url(redis_db_url)
    with TestClient(create_app(runtime, submission_verifier=verifier)) as client:  # one event loop for the test
        yield Api(runtime, client, broker, verifier)
    broker.close()
    runtime.store.engine.dispose()


# ---- accepted ----------------------------------------------------------------------------------------------


def test_a_commit_is_stored_once_and_enqueued_and_answers_a_read_token(api: Api) -> None:
    answer = api.post(body(title="my change"), api.verifier.issue())
    assert answer.status_code == 201, answer.text
    got = answer.json()
    [row] = api.submissions()
    assert got == {"id": row.id, "status_url": f"{PUBLIC_URL}{PATH}/{row.id}", "read_token": got["read_token"]}
    assert len(got["read_token"]) >= 43 and answer.headers["cache-control"] == "no-store"
    assert api.queued() == [(SUBMISSION_TASK, [row.id])]
    assert (row.issuer, row.tree, row.tier, row.base_branch, row.pipeline_id) == (ISSUER, "hello", "qemu", "main", None)
    assert row.request == {"sha": SHA, "title": "my change"}
    assert row.identity.startswith(f"github repository nickolashkraus/flask-oidc (id {REPOSITORY_ID})")
    assert row.claims["repository_id"] == REPOSITORY_ID and row.claims["run_id"] == "3989419862"
    assert "actor_id" not in row.claims  # only what people recognise a submission by
    with api.runtime.store.session() as session:
        [digest] = session.scalars(select(CiSubmissionReader.token_sha256))
    assert digest == hashlib.sha256(got["read_token"].encode()).hexdigest()  # the token itself is not stored
    status = api.get(row.id, got["read_token"])
    assert status.status_code == 200
    assert status.json() | {"version": "-"} == {
        "id": row.id, "version": "-", "state": "queued", "verdict": None, "tree": "hello", "identity": row.identity,
        "pipeline_id": None, "page_url": None, "jobs": [],
        "summary": "labgate: queued (waiting for the control worker to make its pipeline)", "message": None,
    }  # fmt: skip


def test_a_ref_is_tested_at_the_tokens_commit(api: Api) -> None:
    answer = api.post({"tree": "hello", "base_branch": "next", "ref": "refs/heads/main"}, api.verifier.issue())
    assert answer.status_code == 201, answer.text
    [row] = api.submissions()
    assert row.request == {"ref": "refs/heads/main", "sha": SHA} and row.base_branch == "next"


def test_a_gitlab_ref_is_compared_with_ref_path() -> None:
    claims = {"ref": "main", "ref_path": "refs/heads/main", "sha": SHA}
    token = VerifiedToken("https://gitlab.com", claims, "j", datetime.now(UTC))
    wanted = submissions.SubmissionIn(tree="t", base_branch="main", ref="refs/heads/main")
    assert submissions.what_to_test(wanted, token) == {"ref": "refs/heads/main", "sha": SHA}
    with pytest.raises(submissions.Refused, match="not the ref the token was issued on"):
        submissions.what_to_test(submissions.SubmissionIn(tree="t", base_branch="main", ref="refs/heads/x"), token)


def test_patches_are_stored_for_the_checkout_worker(api: Api) -> None:
    sent = {"tree": "hello", "base_branch": "main", "patches": [{"name": "0001-pass.patch", "mbox": PATCH}]}
    answer = api.post(sent, api.verifier.issue())
    assert answer.status_code == 201, answer.text
    [row] = api.submissions()
    assert row.request == {"patches": [{"name": "0001-pass.patch", "mbox": PATCH}]}


# ---- refused: who ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc"])
def test_no_bearer_token_is_401_and_nothing_is_stored(api: Api, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    answer = api.client.post(PATH, content=json.dumps(body()).encode(), headers=headers)
    assert answer.status_code == 401 and answer.json()["error"].startswith("token: no bearer token")
    assert answer.headers["www-authenticate"] == "Bearer"
    assert api.verifier.asked == [] and api.submissions() == [] and api.queued() == []


def test_a_garbage_bearer_is_401_naming_the_check(api: Api) -> None:
    answer = api.post(body(), "garbage")
    assert answer.status_code == 401
    assert answer.json() == {"error": "token: not a compact JWT (header.payload.signature, base64url JSON)"}
    assert api.submissions() == [] and api.queued() == []


@pytest.mark.parametrize("check", ["token", "signature", "issuer", "audience", "expiry"])
def test_each_refused_token_is_401_with_its_message(api: Api, check: Any) -> None:
    answer = api.post(body(), api.verifier.raising(TokenRefused(check, f"what {check} said")))
    assert answer.status_code == 401
    assert answer.json() == {"error": f"{check}: what {check} said"}
    assert api.submissions() == [] and api.queued() == []


def test_a_jti_too_long_to_be_a_replay_key_is_401(api: Api) -> None:
    answer = api.post(body(), api.verifier.issue(jti="j" * 201))
    assert answer.status_code == 401 and answer.json() == {"error": "token: its jti is over 200 characters"}
    assert api.submissions() == []


def test_unreachable_keys_are_503_to_retry(api: Api) -> None:
    answer = api.post(body(), api.verifier.raising(KeysUnavailable(f"{ISSUER}: jwks did not answer within 5 s")))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "did not answer" in answer.json()["error"]
    assert api.submissions() == [] and api.queued() == []


def test_keys_not_current_yet_are_503_with_the_caches_retry_after(api: Api) -> None:
    # An unknown kid while the refetch is rate-limited: the key may be newer than labgate's (L1).
    not_current = KeysUnavailable(f'{ISSUER}: key "k2" is not among the keys fetched 10 s ago', retry_after_s=50)
    answer = api.post(body(), api.verifier.raising(not_current))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "50"
    assert api.submissions() == []


def test_a_token_no_rule_allows_is_403_naming_its_claims_not_the_rules(api: Api) -> None:
    answer = api.post(body(), api.verifier.issue(repository_id="999"))
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error.startswith("no rule lets this token submit to tree hello:") and "repository_id=999" in error
    assert REPOSITORY_ID not in error  # the rule's id is never shown
    assert api.submissions() == [] and api.queued() == []


def test_a_tree_the_rule_does_not_name_is_403(api: Api) -> None:
    answer = api.post(body(tree="other"), api.verifier.issue())
    assert answer.status_code == 403 and "tree other" in answer.json()["error"]


def test_an_unknown_tree_is_403_as_a_tree_no_rule_names_so_token_holders_cannot_list_trees(api: Api) -> None:
    token = api.verifier.issue()
    unknown, unnamed = api.post(body(tree="nosuch"), token), api.post(body(tree="other"), token)
    assert (unknown.status_code, unnamed.status_code) == (403, 403)
    assert unknown.json()["error"] == unnamed.json()["error"].replace("tree other:", "tree nosuch:")
    assert unknown.json()["error"].startswith("no rule lets this token submit to tree nosuch: repository_id=588298808")
    assert api.submissions() == []


def test_an_unknown_tree_name_is_quoted_in_the_refusal(api: Api) -> None:
    answer = api.post(body(tree="x\nrule 0 matched"), api.verifier.issue())
    assert answer.status_code == 403
    assert answer.json()["error"].startswith('no rule lets this token submit to tree "x\\nrule 0 matched": ')


# ---- refused: what -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["feature", SHA, "refs/heads/main", "main~1", "HEAD"])
def test_a_base_that_is_not_a_configured_branch_is_422_naming_the_allowed(api: Api, base: str) -> None:
    answer = api.post(body(base_branch=base), api.verifier.issue())
    assert answer.status_code == 422
    assert answer.json()["error"] == (f"base_branch {base}: not a branch labgate tests of hello (one of: main, next); "
                                      "labgate resolves it to a commit itself")  # fmt: skip
    assert api.submissions() == [] and api.queued() == []


def test_a_sha_other_than_the_tokens_is_403_naming_both(api: Api) -> None:
    other = "b" * 40
    answer = api.post(body(sha=other), api.verifier.issue())
    assert answer.status_code == 403
    assert answer.json()["error"] == f"sha {other} is not the commit the token was issued at (sha {SHA})"
    assert api.submissions() == []


def test_a_ref_other_than_the_tokens_is_403(api: Api) -> None:
    answer = api.post({"tree": "hello", "base_branch": "main", "ref": "refs/heads/other"}, api.verifier.issue())
    assert answer.status_code == 403
    assert answer.json()["error"] == "ref refs/heads/other is not the ref the token was issued on (refs/heads/main)"
    assert api.submissions() == []


def test_a_token_without_a_commit_may_send_patches_only(api: Api) -> None:
    token = api.verifier.issue(sha=DROP)
    assert api.post(body(), token).status_code == 403
    patches = {"tree": "hello", "base_branch": "main", "patches": [{"name": "p.patch", "mbox": PATCH}]}
    assert api.post(patches, token).status_code == 201


@pytest.mark.parametrize("sent, error", [
    ({"tree": "hello", "base_branch": "main", "sha": SHA, "patches": [{"name": "a.patch", "mbox": PATCH}]},
     "body: Value error, exactly one of sha, ref, patches is needed (sha, patches given)"),
    ({"tree": "hello", "base_branch": "main", "sha": SHA, "ref": "refs/heads/main"},
     "body: Value error, exactly one of sha, ref, patches is needed (sha, ref given)"),
    ({"tree": "hello", "base_branch": "main"},
     "body: Value error, exactly one of sha, ref, patches is needed (none given)"),
    ({"tree": "hello", "base_branch": "main", "sha": SHA, "plan_from": "head"}, "plan_from: unknown key"),
    ({"tree": "hello", "base_branch": "main", "patches": [{"name": "a.patch", "mbox": PATCH, "mode": "120000"}]},
     "patches.0.mode: unknown key"),
    ({"tree": "hello", "base_branch": "main", "sha": SHA.upper()}, "sha: String should match pattern "
     "'^[0-9a-f]{40}([0-9a-f]{24})?$'"),
    ({"tree": "hello", "base_branch": "main", "sha": 1}, "sha: Input should be a valid string"),
    ({"tree": "hello", "base_branch": "main", "sha": SHA, "title": "x\r\nBcc: all@example.org"},
     TITLE_REFUSED),
    ({"tree": "hello", "sha": SHA}, "base_branch: Field required"),
    ({"tree": "hello", "base_branch": "main", "patches": []}, "patches: List should have at least 1 item after "
     "validation, not 0"),
    ([], "body: Input should be an object"),
])  # fmt: skip
def test_a_malformed_body_is_422_naming_the_key(api: Api, sent: Any, error: str) -> None:
    answer = api.post(sent, api.verifier.issue())
    assert answer.status_code == 422 and answer.json() == {"error": error}
    assert api.submissions() == [] and api.queued() == []


def test_a_body_that_is_not_json_is_400(api: Api) -> None:
    answer = api.post(b'{"tree": "hello",', api.verifier.issue())
    assert answer.status_code == 400 and answer.json()["error"].startswith("body: not JSON")


def test_a_token_is_checked_before_the_body_is_read_as_json(api: Api) -> None:
    assert api.post(b"not json", "forged").status_code == 401


def test_an_oversized_body_is_413_declared_or_streamed(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    bearer = {"Authorization": f"Bearer {api.verifier.issue()}"}
    too_long = {"Content-Length": str(submissions.MAX_BODY_BYTES + 1)}
    declared = api.client.post(PATH, content=b"{}", headers=bearer | too_long)
    assert declared.status_code == 413 and api.verifier.asked == []  # told before anything else
    monkeypatch.setattr(submissions, "MAX_BODY_BYTES", 1000)
    streamed = api.client.post(PATH, content=iter([b"x" * 600, b"x" * 600]), headers=bearer)
    assert streamed.status_code == 413 and streamed.json() == {"error": "body over 1000 bytes"}
    assert len(api.verifier.asked) == 1 and api.submissions() == []  # the token first, then the body


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", ".hidden.patch", "a/b.patch", "x\n.patch", ""])
def test_a_patch_name_that_is_not_a_plain_file_name_is_422(api: Api, name: str) -> None:
    sent = {"tree": "hello", "base_branch": "main", "patches": [{"name": name, "mbox": PATCH}]}
    answer = api.post(sent, api.verifier.issue())
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("patches.0.name: a patch name is a plain file name")
    assert api.submissions() == []


def test_an_mbox_that_is_not_a_patch_is_422_before_the_worker_sees_it(api: Api) -> None:
    mbox = "From: a@example.org\nSubject: [PATCH] hello\n\nJust prose, no diff.\n"
    sent = {"tree": "hello", "base_branch": "main", "patches": [{"name": "0001-x.patch", "mbox": mbox}]}
    answer = api.post(sent, api.verifier.issue())
    assert answer.status_code == 422
    assert answer.json()["error"] == ("patches.0 (0001-x.patch): no diff in it: not a patch (git format-patch "
                                      "output is expected)")  # fmt: skip
    assert api.submissions() == []


def test_a_patch_over_the_cap_is_422(api: Api) -> None:
    cap = api.runtime.config.caps.max_patch_bytes = len(PATCH) + 10
    big = PATCH + "+" + "x" * 20 + "\n"
    sent = {"tree": "hello", "base_branch": "main", "patches": [{"name": "big.patch", "mbox": big}]}
    answer = api.post(sent, api.verifier.issue())
    assert answer.status_code == 422
    assert answer.json()["error"] == f"patches.0 (big.patch): {len(big)} bytes is over the {cap} byte patch cap"
    assert api.submissions() == []


def test_a_diff_leaving_the_tree_is_left_to_the_checkout_worker_which_refuses_it(api: Api) -> None:
    """The API reads a patch only to see that it is one; what it changes is the checkout worker's to judge,
    with the very checks `labgate try` gets (workers/patchcheck.py): it refuses, naming the path."""
    mbox = PATCH.replace("a/", "a/../../", 1).replace("b/", "b/../../", 1)
    sent = {"tree": "hello", "base_branch": "main", "patches": [{"name": "0001-escape.patch", "mbox": mbox}]}
    assert api.post(sent, api.verifier.issue()).status_code == 201
    with pytest.raises(UserError, match=r"\.\."):
        check_patch("0001-escape.patch", mbox.encode())


# ---- replays -----------------------------------------------------------------------------------------------


def test_the_same_token_again_is_the_same_submission_and_one_pipeline(api: Api) -> None:
    token = api.verifier.issue()
    first = api.post(body(), token)
    again = api.post(body(title="a different body changes nothing"), token)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["read_token"] != first.json()["read_token"]
    [row] = api.submissions()
    assert row.request == {"sha": SHA}
    # Still no pipeline: the replay enqueues again (the first message may be what was lost).
    assert api.queued() == [(SUBMISSION_TASK, [row.id])] * 2
    for _ in range(2):
        make_pipeline(api.runtime, row.id)  # each message runs the task once
    assert api.pipelines() == 1
    third = api.post(body(), token)
    assert third.status_code == 200 and third.json()["id"] == row.id
    assert third.json()["page_url"].startswith(f"{PUBLIC_URL}/pipelines/")
    assert [name for name, _ in api.queued()].count(SUBMISSION_TASK) == 2  # a pipeline: nothing more to enqueue
    for answer in (first, again, third):  # every read token handed out opens it
        assert api.get(row.id, answer.json()["read_token"]).status_code == 200


def test_concurrent_identical_posts_make_one_submission(tmp_path: Path, database_url: str, redis_db_url: str) -> None:
    """Two web processes (two APIs, two connections) taking the same token at once: the unique (issuer, jti)
    decides, no check-then-insert."""
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    verifier = FakeVerifier()
    token = verifier.issue()

    async def run() -> list[httpx.Response]:
        apis = [open_submission_api(runtime, verifier) for _ in range(2)]
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=a.routes)),
                                     base_url="http://t") for a in apis]  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"}
        answers = await asyncio.gather(*(clients[n % 2].post(PATH, json=body(), headers=headers) for n in range(12)))
        for client, one in zip(clients, apis, strict=True):
            await client.aclose()
            await one.close()
        return list(answers)

    answers = asyncio.run(run())
    assert sorted(a.status_code for a in answers) == [200] * 11 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    with runtime.store.session() as session:
        assert session.scalar(select(func.count()).select_from(CiSubmission)) == 1
        assert session.scalar(select(func.count()).select_from(CiSubmissionReader)) == 12
    submission_id = answers[0].json()["id"]
    with redis.Redis.from_url(redis_db_url) as broker:
        assert broker.llen(CONTROL_QUEUE) == 12  # each saw no pipeline yet; the task makes one of them all
    for _ in range(3):
        make_pipeline(runtime, submission_id)
    with runtime.store.session() as session:
        assert session.scalar(select(func.count()).select_from(Pipeline)) == 1
    runtime.store.engine.dispose()


# ---- reading -----------------------------------------------------------------------------------------------


def test_another_submissions_token_a_wrong_token_and_an_unknown_id_all_get_the_same_404(api: Api) -> None:
    mine = api.post(body(), api.verifier.issue()).json()
    theirs = api.post(body(), api.verifier.issue()).json()
    answers = [api.get(mine["id"], theirs["read_token"]), api.get(mine["id"], "wrong"),
               api.get(mine["id"], mine["read_token"] + "x"), api.get(999999, mine["read_token"]),
               api.get("abc", mine["read_token"]), api.get(2**40, mine["read_token"])]  # fmt: skip
    for answer in answers:
        assert (answer.status_code, answer.text) == (404, "not found\n")
        assert answer.headers["cache-control"] == "private, no-store"
    assert api.get(mine["id"], mine["read_token"]).status_code == 200
    assert api.get(theirs["id"], theirs["read_token"]).status_code == 200


def test_a_read_without_a_token_is_401_and_an_operator_token_opens_any(api: Api) -> None:
    made = api.post(body(), api.verifier.issue()).json()
    assert api.get(made["id"], None).status_code == 401
    assert api.get(made["id"], OPERATOR).status_code == 200


def test_the_oidc_token_itself_does_not_read(api: Api) -> None:
    token = api.verifier.issue()
    made = api.post(body(), token).json()
    assert api.get(made["id"], token).status_code == 404


@pytest.mark.parametrize("query", ["?wait=61", "?wait=-1", "?wait=x", "?wait=5&since=NOT-A-VERSION"])
def test_bad_wait_parameters_are_400(api: Api, query: str) -> None:
    made = api.post(body(), api.verifier.issue()).json()
    assert api.get(made["id"], made["read_token"], query).status_code == 400


def test_a_long_poll_returns_on_change(api: Api) -> None:
    made = api.post(body(), api.verifier.issue()).json()
    before = api.get(made["id"], made["read_token"]).json()
    timer = threading.Timer(0.8, make_pipeline, args=(api.runtime, made["id"]))
    started = time.monotonic()
    timer.start()
    after = api.get(made["id"], made["read_token"], f"?wait=20&since={before['version']}").json()
    took = time.monotonic() - started
    timer.join()
    assert 0.7 < took < 5
    assert after["version"] != before["version"] and after["pipeline_id"] is not None
    assert after["state"] == "queued" and after["page_url"] == f"{PUBLIC_URL}/pipelines/{after['pipeline_id']}"
    assert [(job["name"], job["kind"], job["state"]) for job in after["jobs"]] == [("checkout", "checkout", "queued")]


def test_a_long_poll_returns_on_timeout_and_at_once_when_the_version_is_old(api: Api) -> None:
    made = api.post(body(), api.verifier.issue()).json()
    version = api.get(made["id"], made["read_token"]).json()["version"]
    started = time.monotonic()
    same = api.get(made["id"], made["read_token"], f"?wait=1&since={version}")
    assert 1.0 <= time.monotonic() - started < 3 and same.json()["version"] == version
    started = time.monotonic()
    assert api.get(made["id"], made["read_token"], "?wait=30&since=0123").status_code == 200
    assert time.monotonic() - started < 1


def test_waiters_beyond_the_bound_get_503(tmp_path: Path, redis_db_url: str) -> None:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path))
    verifier = FakeVerifier()
    api = open_submission_api(runtime, verifier)
    api.max_waiters = 1

    async def run() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=api.routes)),
                                     base_url="http://t") as client:  # fmt: skip
            submitted = await client.post(PATH, json=body(), headers={"Authorization": f"Bearer {verifier.issue()}"})
            made = submitted.json()
            read = {"Authorization": f"Bearer {made['read_token']}"}
            version = (await client.get(f"{PATH}/{made['id']}", headers=read)).json()["version"]
            waiting = asyncio.ensure_future(client.get(f"{PATH}/{made['id']}?wait=2&since={version}", headers=read))
            await asyncio.sleep(0.3)
            beyond = await client.get(f"{PATH}/{made['id']}?wait=2&since={version}", headers=read)
            plain = await client.get(f"{PATH}/{made['id']}", headers=read)  # no wait: never refused
            codes = [(await waiting).status_code, beyond.status_code, plain.status_code]
        await api.close()
        return codes

    assert asyncio.run(run()) == [200, 503, 200]
    runtime.store.engine.dispose()


def test_no_oidc_section_means_no_submission_api(tmp_path: Path) -> None:
    runtime = open_runtime(make_config(tmp_path).model_copy(update={"oidc": None}))
    with TestClient(create_app(runtime)) as client:
        assert client.post(PATH, json=body()).status_code == 404
    runtime.store.engine.dispose()


# ---- end to end: real tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["github", "gitlab"])
def test_a_real_signed_token_submits_and_an_expired_one_is_refused(tmp_path: Path, redis_db_url: str,
                                                                   flavour: Any) -> None:  # fmt: skip
    configure(redis_db_url, longest_job_s=60)
    with FakeOidcIssuer(flavour, audience=AUDIENCE) as issuer:
        config = make_config(tmp_path, issuer.url)
        if flavour == "gitlab":
            rule = SubmitRule(issuer=issuer.url, tree="hello", tier="hardware", project_ids=["20"])
            config = config.model_copy(update={"oidc": config.oidc.model_copy(update={"rules": [rule]})})  # type: ignore[union-attr]
        runtime = open_runtime(config)
        with TestClient(create_app(runtime)) as client:  # the real verifier, from the config
            token = issuer.mint()
            sha = issuer.claims()["sha"]
            sent = {"tree": "hello", "base_branch": "main", "sha": sha}
            made = client.post(PATH, json=sent, headers={"Authorization": f"Bearer {token}"})
            assert made.status_code == 201, made.text
            again = client.post(PATH, json=sent, headers={"Authorization": f"Bearer {token}"})
            assert again.status_code == 200 and again.json()["id"] == made.json()["id"]
            now = int(time.time())
            expired = issuer.mint({"iat": now - 900, "nbf": now - 900, "exp": now - 600})
            refused = client.post(PATH, json=sent, headers={"Authorization": f"Bearer {expired}"})
            assert refused.status_code == 401 and refused.json()["error"].startswith("expiry: token expired")
            # Signed by another key under the issuer's own kid: refused. Under a kid of its own, a moment after
            # the keys were fetched: labgate cannot tell it from a key rotated in since, so it is 503 to retry.
            stranger = issuer.stranger_key()
            forged = issuer.mint(key=stranger, header={"kid": issuer.signing_key.kid})
            assert client.post(PATH, json=sent, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
            unknown = client.post(PATH, json=sent, headers={"Authorization": f"Bearer {issuer.mint(key=stranger)}"})
            assert unknown.status_code == 503 and 0 < int(unknown.headers["retry-after"]) <= 60
        assert issuer.jwks_fetches == 1
        with runtime.store.session() as session:
            [row] = session.scalars(select(CiSubmission))
        assert row.issuer == issuer.url and row.tier == ("qemu" if flavour == "github" else "hardware")
        assert row.identity.startswith(f"{flavour} ")
        runtime.store.engine.dispose()


def test_an_issuer_whose_keys_cannot_be_read_gets_503_not_401(tmp_path: Path, redis_db_url: str) -> None:
    """The issuer's failure is ours to retry, not the job's token's fault: nothing is stored."""
    configure(redis_db_url, longest_job_s=60)
    with FakeOidcIssuer("github", audience=AUDIENCE) as issuer:
        runtime = open_runtime(make_config(tmp_path, issuer.url))
        issuer.answer_instead["jwks"] = (500, b"{}")
        with TestClient(create_app(runtime)) as client:
            sent = {"tree": "hello", "base_branch": "main", "sha": issuer.claims()["sha"]}
            answer = client.post(PATH, json=sent, headers={"Authorization": f"Bearer {issuer.mint()}"})
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
        assert answer.json()["error"].startswith(f"the issuer's keys cannot be read now: {issuer.url}")
        with runtime.store.session() as session:
            assert session.scalar(select(func.count()).select_from(CiSubmission)) == 0
        runtime.store.engine.dispose()


def test_a_connection_postgresql_dropped_is_replaced_and_no_submission_is_lost(tmp_path: Path, postgres_url: str,
                                                                                redis_db_url: str) -> None:  # fmt: skip
    """PostgreSQL restarted while the API's connection sat idle: the statement goes again on a new one (it is
    keyed by the jti, so sending it twice cannot store twice)."""
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=postgres_url)
    verifier = FakeVerifier()
    kill = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")  # fmt: skip

    async def run() -> list[int]:
        api = open_submission_api(runtime, verifier)
        transport = httpx.ASGITransport(app=Starlette(routes=api.routes))
        codes = []
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(2):
                sent = await client.post(PATH, json=body(), headers={"Authorization": f"Bearer {verifier.issue()}"})
                codes.append(sent.status_code)
                with runtime.store.engine.connect() as connection:
                    connection.execute(kill)
        await api.close()
        return codes

    assert asyncio.run(run()) == [201, 201]
    with runtime.store.session() as session:
        assert session.scalar(select(func.count()).select_from(CiSubmission)) == 2
    runtime.store.engine.dispose()


# ---- the body budget is for proven jobs (M6) -------------------------------------------------------------


def test_stalled_bodies_without_a_valid_token_hold_nothing_an_authenticated_submission_needs(
        tmp_path: Path, redis_db_url: str) -> None:  # fmt: skip
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path))
    verifier = FakeVerifier()
    api = open_submission_api(runtime, verifier)
    api.budget = BodyBudget(1800)  # room for two of the attackers' declared bodies, and nothing more
    release = asyncio.Event()
    pulled: list[int] = []

    async def stalled(index: int) -> AsyncIterator[bytes]:
        pulled.append(index)  # the app asked for the body's first bytes
        await release.wait()
        yield b" " * 900

    async def run() -> tuple[list[int], int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=api.routes)),
                                     base_url="http://t") as client:  # fmt: skip
            attackers = [asyncio.ensure_future(client.post(PATH, content=stalled(n), headers={
                "Content-Length": "900", **({"Authorization": "Bearer forged"} if n % 2 else {})}))
                for n in range(6)]  # fmt: skip
            await asyncio.sleep(0.3)
            honest = await client.post(PATH, json=body(), headers={"Authorization": f"Bearer {verifier.issue()}"})
            release.set()
            codes = [(await attacker).status_code for attacker in attackers]
        await api.close()
        return codes, honest.status_code

    codes, honest = asyncio.run(run())
    assert honest == 201 and codes == [401] * 6
    assert pulled == [] and api.budget.held == 0  # not a byte of theirs was read or held
    runtime.store.engine.dispose()


# ---- one submission cannot starve the others (M5) ----------------------------------------------------------


def test_a_token_replayed_past_the_read_token_cap_is_429_and_stores_nothing(api: Api) -> None:
    token = api.verifier.issue()
    answers = [api.post(body(), token) for _ in range(MAX_READ_TOKENS)]
    assert [a.status_code for a in answers] == [201] + [200] * (MAX_READ_TOKENS - 1)
    queued = len(api.queued())
    beyond = api.post(body(), token)
    assert beyond.status_code == 429
    assert beyond.json() == {
        "error": f"this token has been used {MAX_READ_TOKENS} times: a submission hands out "
        f"at most {MAX_READ_TOKENS} read tokens; read it with one an earlier answer gave"
    }
    with api.runtime.store.session() as session:
        assert session.scalar(select(func.count()).select_from(CiSubmissionReader)) == MAX_READ_TOKENS
    assert len(api.queued()) == queued and len(api.submissions()) == 1
    for answer in answers:  # every read token handed out still opens it
        assert api.get(answer.json()["id"], answer.json()["read_token"]).status_code == 200
    assert api.post(body(), api.verifier.issue()).status_code == 201  # another job's token is another submission


def test_a_read_token_is_looked_up_by_its_digest_not_compared_with_every_one(api: Api) -> None:
    made = api.post(body(), api.verifier.issue()).json()
    sent: list[Any] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append((statement, parameters))

    event.listen(api.runtime.store.engine, "before_cursor_execute", record)
    try:
        assert api.get(made["id"], made["read_token"]).status_code == 200
    finally:
        event.remove(api.runtime.store.engine, "before_cursor_execute", record)
    digest = hashlib.sha256(made["read_token"].encode()).hexdigest()
    [(statement, parameters)] = [(s, p) for s, p in sent if "ci_submission_reader" in s]
    assert digest in str(parameters) and "token_sha256" in statement.split("WHERE", 1)[1]


def test_waiters_beyond_the_bound_of_one_submission_get_429_and_others_still_wait(
    tmp_path: Path, redis_db_url: str
) -> None:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path))
    verifier = FakeVerifier()
    api = open_submission_api(runtime, verifier)

    async def run() -> tuple[list[int], httpx.Response, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=api.routes)),
                                     base_url="http://t") as client:  # fmt: skip

            async def made() -> tuple[str, dict[str, str]]:
                answer = await client.post(PATH, json=body(), headers={"Authorization": f"Bearer {verifier.issue()}"})
                read = {"Authorization": f"Bearer {answer.json()['read_token']}"}
                version = (await client.get(f"{PATH}/{answer.json()['id']}", headers=read)).json()["version"]
                return f"{PATH}/{answer.json()['id']}?wait=1.5&since={version}", read

            (greedy, greedy_read), (other, other_read) = await made(), await made()
            waiting = [asyncio.ensure_future(client.get(greedy, headers=greedy_read))
                       for _ in range(submissions.MAX_WAITERS_PER_SUBMISSION)]  # fmt: skip
            await asyncio.sleep(0.3)
            beyond = await client.get(greedy, headers=greedy_read)
            started = time.monotonic()
            other_answer = await client.get(other, headers=other_read)
            assert time.monotonic() - started >= 1.0  # it waited: the greedy submission's waiters left room
            codes = [(await one).status_code for one in waiting]
        await api.close()
        return codes, beyond, other_answer.status_code

    codes, beyond, other = asyncio.run(run())
    assert codes == [200] * submissions.MAX_WAITERS_PER_SUBMISSION and other == 200
    assert beyond.status_code == 429 and beyond.headers["retry-after"] == "5"
    assert beyond.json()["error"].startswith(f"{submissions.MAX_WAITERS_PER_SUBMISSION} requests are waiting "
                                             "for this submission already")  # fmt: skip
    assert api.waiting == 0 and api.waiting_for == {}
    runtime.store.engine.dispose()


# ---- a title is one line, read as sent (L4) ----------------------------------------------------------------


@pytest.mark.parametrize("character", ["\x85", "\x9b", "\u2028", "\u2029", "\u202a", "\u202b", "\u202c", "\u202d",
                                       "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"])  # fmt: skip
def test_a_title_with_a_line_break_python_sees_or_a_bidi_control_is_422(api: Api, character: str) -> None:
    # splitlines() breaks on NEL and U+2028/9; bidi controls make "fix: rm -rf" read as something else.
    answer = api.post(body(title=f"fix{character}Bcc: all@example.org"), api.verifier.issue())
    assert answer.status_code == 422 and answer.json() == {"error": TITLE_REFUSED}
    assert api.submissions() == []


def test_a_title_in_any_script_is_accepted(api: Api) -> None:
    title = "net: fix Überlauf in 日本語 driver — עברית (v2)"
    assert api.post(body(title=title), api.verifier.issue()).status_code == 201
    assert api.submissions()[0].request["title"] == title
