"""FakeGitHub, driven by the real PyGithub client and checked against GitHub's OpenAPI description."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from github import Auth, Github, GithubIntegration
from github.GithubException import (
    BadCredentialsException,
    GithubException,
    RateLimitExceededException,
    UnknownObjectException,
)

from tests.fakes.github_api import SECONDARY_RATE_LIMIT_MESSAGE, FakeGitHub
from tests.shared_fixtures import shared_fixture

REPO = "octo-org/hello"
HEAD = "ce587453ced02b1526dfb4cb910479d431683101"  # the head_sha of GitHub's request examples
BASE = "e7fdf7640066d71ad16a86fbcbb9c6a10a18af4f"
FORK_HEAD = "3dca65fa3e8d4b3da3f3d056c59aee1c50f41390"
INSTALLATION = 11


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        fake.add_repo("octo-org/secret", private=True)
        fake.add_repo("octo-org/elsewhere")
        fake.add_pull(REPO, 7, HEAD, "feature", "main", BASE, "alice", "CONTRIBUTOR")
        fake.add_pull(REPO, 8, FORK_HEAD, "fix", "main", BASE, "mallory", "FIRST_TIME_CONTRIBUTOR", "mallory/hello")
        fake.add_installation(INSTALLATION, repos=[REPO, "octo-org/secret"])
        for login, role in (("bob", "maintain"), ("carol", "triage"), ("dave", "admin"), ("erin", "none")):
            fake.set_permission(REPO, login, role)
        fake.add_org_member("octo-org", "bob")
        fake.add_team_member("octo-org", "kernel", "bob", role="maintainer")
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as shared:
        yield shared


def client(gh: FakeGitHub, installation: int = INSTALLATION, **kwargs: Any) -> Github:
    """PyGithub as labgate configures it: App installation auth, base_url the fake, no client-side throttling."""
    auth = Auth.AppAuth(gh.app_id, gh.private_key_pem).get_installation_auth(installation)
    return Github(base_url=gh.base_url, auth=auth, seconds_between_requests=0, seconds_between_writes=0, **kwargs)


def app_jwt(gh: FakeGitHub, key_pem: str | None = None, iat: int = -60, exp: int = 540, iss: Any = None) -> str:
    now = int(time.time())
    claims = {"iat": now + iat, "exp": now + exp, "iss": str(gh.app_id) if iss is None else iss}
    return jwt.encode(claims, key_pem or gh.private_key_pem, algorithm="RS256")


def installation_token(gh: FakeGitHub, http: httpx.Client) -> str:
    url = f"{gh.base_url}/app/installations/{INSTALLATION}/access_tokens"
    response = http.post(url, headers={"Authorization": f"Bearer {app_jwt(gh)}"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


def make_annotations(count: int, start: int = 1) -> list[dict[str, Any]]:
    return [{"path": "drivers/net/foo.c", "start_line": n, "end_line": n, "start_column": 1, "end_column": 4,
             "annotation_level": "warning", "message": f"warning {n}", "title": "W=1"}
            for n in range(start, start + count)]  # fmt: skip


# ---- serving and recording ----------------------------------------------------------------------------------


def test_starts_fast_on_loopback_and_stops() -> None:
    started = time.monotonic()
    with FakeGitHub() as fake:
        elapsed = time.monotonic() - started
        assert fake.base_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{fake.base_url}/rate_limit").status_code == 200
    assert elapsed < 1.0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{fake.base_url}/rate_limit", timeout=1)


def test_records_every_request_including_unknown_paths_and_bad_json(gh: FakeGitHub, http: httpx.Client) -> None:
    token = installation_token(gh, http)
    headers = {"Authorization": f"token {token}", "X-Custom": "1"}
    assert http.get(f"{gh.base_url}/nowhere?x=1", headers=headers).json()["message"] == "Not Found"
    response = http.post(f"{gh.base_url}/repos/{REPO}/check-runs", headers=headers, content=b"{nope")
    assert (response.status_code, response.json()["message"]) == (400, "Problems parsing JSON")

    unknown = gh.requests_to("GET", "/nowhere")[0]
    assert (unknown.status, unknown.query, unknown.headers["x-custom"]) == (404, {"x": "1"}, "1")
    assert [r.status for r in gh.requests_to("POST", r"/repos/.*/check-runs")] == [400]
    token_request = gh.requests_to("POST", r"/app/installations/\d+/access_tokens")[0]
    assert token_request.headers["authorization"].startswith("Bearer ")
    assert abs(token_request.time - time.time()) < 5


# ---- App authentication and installation tokens -------------------------------------------------------------


def test_installation_token_is_fetched_once_and_used_as_token_header(gh: FakeGitHub) -> None:
    g = client(gh)
    assert g.get_repo(REPO).full_name == REPO
    assert g.get_repo(REPO).get_pull(7).number == 7
    assert gh.tokens_issued == 1
    token_request, *repo_requests = gh.requests
    assert token_request.path == f"/app/installations/{INSTALLATION}/access_tokens"
    assert token_request.json == {"permissions": {}}
    assert {r.headers["authorization"].split()[0] for r in repo_requests} == {"token"}
    assert all(r.headers["authorization"].split()[1].startswith("ghs_") for r in repo_requests)


def test_pygithub_refreshes_a_token_that_is_about_to_expire(gh: FakeGitHub) -> None:
    gh.token_lifetime = 10  # PyGithub renews tokens with less than 20 s left
    g = client(gh)
    g.get_repo(REPO)
    g.get_repo(REPO)
    assert gh.tokens_issued == 2


def test_token_expired_on_the_server_is_bad_credentials_until_a_new_one_is_made(gh: FakeGitHub) -> None:
    g = client(gh)
    g.get_repo(REPO)
    gh.advance_clock(3601)
    with pytest.raises(BadCredentialsException):
        g.get_repo(REPO)  # PyGithub trusts the expires_at it was given and does not refetch on 401
    assert client(gh).get_repo(REPO).full_name == REPO
    assert gh.tokens_issued == 2


def test_unknown_token_is_401_bad_credentials(gh: FakeGitHub) -> None:
    g = Github(base_url=gh.base_url, auth=Auth.Token("ghs_" + "0" * 36), retry=None)
    with pytest.raises(BadCredentialsException) as raised:
        g.get_repo(REPO)
    assert raised.value.status == 401
    assert raised.value.data["message"] == "Bad credentials"
    assert gh.requests[-1].status == 401


@functools.cache
def _other_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode()


@pytest.mark.parametrize(
    ("make_auth", "message"),
    [
        (lambda gh, http: f"Bearer {app_jwt(gh, key_pem=_other_key())}", "could not be decoded"),
        (lambda gh, http: f"Bearer {app_jwt(gh, exp=700)}", "too far in the future"),
        (lambda gh, http: f"Bearer {app_jwt(gh, iat=-700, exp=-100)}", "future time at which the assertion expires"),
        (lambda gh, http: f"Bearer {app_jwt(gh, iat=30)}", "'Issued at' claim"),
        (lambda gh, http: f"Bearer {app_jwt(gh, iss='1')}", "could not be decoded"),
        (lambda gh, http: f"token {installation_token(gh, http)}", "could not be decoded"),
        (lambda gh, http: "", "could not be decoded"),
    ],
    ids=["wrong-key", "exp-too-far", "expired", "iat-in-future", "wrong-iss", "installation-token", "none"],
)
def test_access_token_endpoint_refuses_bad_jwts(gh: FakeGitHub, http: httpx.Client, make_auth: Any,
                                                message: str) -> None:  # fmt: skip
    url = f"{gh.base_url}/app/installations/{INSTALLATION}/access_tokens"
    authorization = make_auth(gh, http)
    response = http.post(url, headers={"Authorization": authorization} if authorization else {})
    assert response.status_code == 401
    assert message in response.json()["message"]


def test_access_token_checks_installation_and_requested_scope(gh: FakeGitHub, http: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {app_jwt(gh)}"}
    url = f"{gh.base_url}/app/installations/{{}}/access_tokens"
    assert http.post(url.format(999), headers=headers).status_code == 404
    too_much = http.post(url.format(INSTALLATION), headers=headers, json={"permissions": {"administration": "write"}})
    assert too_much.status_code == 422
    narrow = http.post(url.format(INSTALLATION), headers=headers,
                        json={"repositories": ["hello"], "permissions": {"checks": "write"}})  # fmt: skip
    assert narrow.status_code == 201
    body = narrow.json()
    assert body["permissions"] == {"checks": "write"}
    assert body["repository_selection"] == "selected" and body["expires_at"].endswith("Z")
    token_headers = {"Authorization": f"token {body['token']}"}
    assert http.get(f"{gh.base_url}/repos/octo-org/secret", headers=token_headers).status_code == 404
    assert http.get(f"{gh.base_url}/repos/{REPO}/pulls/7", headers=token_headers).status_code == 403


def test_installation_sees_only_its_repositories_and_permissions(gh: FakeGitHub) -> None:
    with pytest.raises(UnknownObjectException):
        client(gh).get_repo("octo-org/elsewhere")
    gh.add_installation(12, repos=[REPO], permissions={"metadata": "read", "checks": "read"})
    repo = client(gh, installation=12).get_repo(REPO)
    with pytest.raises(GithubException) as raised:
        repo.create_check_run(name="build", head_sha=HEAD)
    assert (raised.value.status, raised.value.data["message"]) == (403, "Resource not accessible by integration")


def test_app_level_calls_through_github_integration(gh: FakeGitHub) -> None:
    integration = GithubIntegration(auth=Auth.AppAuth(gh.app_id, gh.private_key_pem), base_url=gh.base_url,
                                    seconds_between_requests=0, seconds_between_writes=0)  # fmt: skip
    assert integration.get_app().slug == gh.app_slug
    assert integration.get_repo_installation("octo-org", "hello").id == INSTALLATION
    with pytest.raises(UnknownObjectException):
        integration.get_repo_installation("octo-org", "elsewhere")
    g = integration.get_github_for_installation(INSTALLATION)
    assert g.get_repo(REPO).private is False
    assert [r.path for r in gh.requests] == [
        "/app",
        f"/repos/{REPO}/installation",
        "/repos/octo-org/elsewhere/installation",
        f"/app/installations/{INSTALLATION}/access_tokens",
        f"/repos/{REPO}",
    ]


# ---- check runs ---------------------------------------------------------------------------------------------


def test_check_run_created_then_updated_with_annotations_in_batches(gh: FakeGitHub) -> None:
    repo = client(gh, lazy=True).get_repo(REPO)
    run = repo.create_check_run(
        name="build (x86_64)", head_sha=HEAD, status="in_progress", external_id="job-17",
        details_url="https://labgate.example.org/jobs/17",
        output={"title": "Building", "summary": "50 warnings so far", "annotations": make_annotations(50)},
    )  # fmt: skip
    assert (run.status, run.conclusion, run.output.annotations_count) == ("in_progress", None, 50)
    run.edit(output={"title": "Building", "summary": "100 warnings", "annotations": make_annotations(50, 51)})
    rerun = {"label": "Re-run", "description": "Build this revision again", "identifier": "rerun"}
    final = {"title": "Build failed", "summary": "**120** new warnings", "annotations": make_annotations(20, 101)}
    run.edit(status="completed", conclusion="failure", output=final, actions=[rerun])

    assert run.conclusion == "failure" and run.output.annotations_count == 120 and run.completed_at is not None
    [stored] = gh.check_runs(REPO)
    assert (stored["name"], stored["head_sha"], stored["external_id"]) == ("build (x86_64)", HEAD, "job-17")
    assert stored["output"]["title"] == "Build failed"
    assert [a["start_line"] for a in stored["output"]["annotations"]] == list(range(1, 121))
    assert stored["actions"][0]["identifier"] == "rerun"
    listed = list(repo.get_check_run(run.id).get_annotations())  # 4 pages of 30: follows Link headers
    assert [a.message for a in listed] == [f"warning {n}" for n in range(1, 121)]
    assert len(gh.requests_to("GET", rf"/repos/{REPO}/check-runs/{run.id}/annotations")) == 4
    assert len(gh.requests_to("PATCH", rf"/repos/{REPO}/check-runs/{run.id}")) == 2


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": "b", "head_sha": HEAD, "output": {"title": "t", "summary": "s", "annotations": make_annotations(51)}},
         "Only 50 annotations"),
        ({"name": "b", "head_sha": HEAD, "output": {"title": "t", "summary": "s", "annotations": [
            {**make_annotations(1)[0], "end_line": 3}]}}, "only allowed when start_line equals end_line"),
        ({"name": "b", "head_sha": HEAD, "output": {"title": "t", "summary": "x" * 65536}}, "longer than 65535"),
        ({"name": "b", "head_sha": HEAD, "output": {"title": "t", "summary": "s", "text": "x" * 65536}},
         "longer than 65535"),
        ({"name": "b", "head_sha": HEAD, "output": {"summary": "s"}}, '"title" wasn\'t supplied'),
        ({"name": "b", "head_sha": HEAD, "status": "completed"}, '"conclusion" wasn\'t supplied'),
        ({"name": "b", "head_sha": HEAD, "conclusion": "stale"}, "only be set by GitHub"),
        ({"name": "b", "head_sha": HEAD, "status": "waiting"}, "Only GitHub Actions"),
        ({"head_sha": HEAD}, '"name" wasn\'t supplied'),
        ({"name": "b"}, '"head_sha" wasn\'t supplied'),
        ({"name": "b", "head_sha": "main"}, "No commit found for SHA"),
        ({"name": "b", "head_sha": HEAD, "actions": [{"label": "x" * 21, "description": "d", "identifier": "i"}]},
         "longer than 20"),
    ],
    ids=["51-annotations", "columns-across-lines", "long-summary", "long-text", "no-title", "completed-no-conclusion",
         "stale", "actions-only-status", "no-name", "no-head-sha", "not-a-sha", "long-action-label"],
)  # fmt: skip
def test_check_run_requests_github_refuses_are_422(gh: FakeGitHub, http: httpx.Client, body: dict[str, Any],
                                                   detail: str) -> None:  # fmt: skip
    headers = {"Authorization": f"token {installation_token(gh, http)}"}
    response = http.post(f"{gh.base_url}/repos/{REPO}/check-runs", headers=headers, json=body)
    assert response.status_code == 422
    assert detail in response.json()["message"]
    assert gh.check_runs(REPO) == []


def test_check_run_update_is_validated_the_same_way(gh: FakeGitHub) -> None:
    repo = client(gh, lazy=True).get_repo(REPO)
    run = repo.create_check_run(name="boot", head_sha=HEAD)
    with pytest.raises(GithubException) as raised:
        run.edit(output={"title": "t", "summary": "s", "annotations": make_annotations(51)})
    assert raised.value.status == 422
    assert gh.check_runs(REPO)[0]["output"]["annotations"] == []
    assert gh.check_runs(REPO)[0]["status"] == "queued"


def test_list_check_runs_for_a_ref(gh: FakeGitHub) -> None:
    repo = client(gh).get_repo(REPO)
    first = repo.create_check_run(name="build", head_sha=HEAD, conclusion="failure")
    rerun = repo.create_check_run(name="build", head_sha=HEAD, status="in_progress")
    repo.create_check_run(name="boot", head_sha=HEAD)
    repo.create_check_run(name="build", head_sha=BASE)
    commit = repo.get_commit(HEAD)

    assert sorted(r.name for r in commit.get_check_runs()) == ["boot", "build"]
    assert rerun.id in [r.id for r in commit.get_check_runs()] and first.status == "completed"
    assert len(list(commit.get_check_runs(filter="all"))) == 3
    assert [r.name for r in commit.get_check_runs(check_name="boot")] == ["boot"]
    assert [r.id for r in commit.get_check_runs(status="completed", filter="all")] == [first.id]
    assert [r.head_sha for r in repo.get_commit("feature").get_check_runs()] == [HEAD, HEAD]
    [pull] = rerun.pull_requests
    assert pull.number == 7
    fork_run = repo.create_check_run(name="build", head_sha=FORK_HEAD)
    assert fork_run.pull_requests == []  # GitHub leaves PRs from forks out


# ---- commit statuses, comments, pull requests -----------------------------------------------------------------


def test_commit_statuses_and_combined_status(gh: FakeGitHub) -> None:
    commit = client(gh).get_repo(REPO).get_commit(HEAD)
    commit.create_status("pending", description="queued", context="labgate/build")
    commit.create_status("success", target_url="https://labgate.example.org/17", context="labgate/build")
    commit.create_status("failure", description="2 new failures", context="labgate/boot")
    combined = commit.get_combined_status()
    assert (combined.state, combined.total_count, combined.sha) == ("failure", 2, HEAD)
    assert {s.context: s.state for s in combined.statuses} == {"labgate/build": "success", "labgate/boot": "failure"}
    assert [s["state"] for s in gh.statuses(REPO, HEAD)] == ["pending", "success", "failure"]
    with pytest.raises(GithubException) as raised:
        commit.create_status("success", description="x" * 141)
    assert raised.value.status == 422


def test_comment_on_a_pull_request(gh: FakeGitHub) -> None:
    repo = client(gh).get_repo(REPO)
    comment = repo.get_pull(7).create_issue_comment("**labgate**: 1 new failure")
    assert comment.user.login == f"{gh.app_slug}[bot]"
    assert [c.body for c in repo.get_issue(7).get_comments()] == ["**labgate**: 1 new failure"]
    assert [c["body"] for c in gh.comments(REPO, 7)] == ["**labgate**: 1 new failure"]
    with pytest.raises(UnknownObjectException):
        repo.get_pull(99)


def test_pull_request_from_a_fork(gh: FakeGitHub) -> None:
    pull = client(gh).get_repo(REPO).get_pull(8)
    assert (pull.head.sha, pull.head.ref, pull.base.ref, pull.base.sha) == (FORK_HEAD, "fix", "main", BASE)
    assert (pull.head.repo.full_name, pull.head.repo.fork, pull.base.repo.full_name) == ("mallory/hello", True, REPO)
    assert (pull.user.login, pull.author_association, pull.draft) == ("mallory", "FIRST_TIME_CONTRIBUTOR", False)


# ---- trust --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("repo", "login", "permission", "role_name"),
    [
        (REPO, "dave", "admin", "admin"),
        (REPO, "bob", "write", "maintain"),
        (REPO, "carol", "read", "triage"),
        (REPO, "erin", "none", "none"),
        (REPO, "alice", "read", "read"),  # an outsider can read a public repository
        ("octo-org/secret", "alice", "none", "none"),
    ],
)
def test_collaborator_permission(gh: FakeGitHub, repo: str, login: str, permission: str, role_name: str) -> None:
    github_repo = client(gh).get_repo(repo)
    assert github_repo.get_collaborator_permission(login) == permission
    assert github_repo.get_collaborator_role_name(login) == role_name


def test_permission_of_an_unknown_user_is_404(gh: FakeGitHub) -> None:
    with pytest.raises(UnknownObjectException):
        client(gh).get_repo(REPO).get_collaborator_permission("nobody")


def test_org_and_team_membership(gh: FakeGitHub) -> None:
    g = client(gh)
    org = g.get_organization("octo-org")
    assert org.has_in_members(g.get_user("bob")) is True
    assert org.has_in_members(g.get_user("alice")) is False
    membership = org.get_team_by_slug("kernel").get_team_membership("bob")
    assert (membership.role, membership.state) == ("maintainer", "active")
    with pytest.raises(UnknownObjectException):
        org.get_team_by_slug("kernel").get_team_membership("alice")


# ---- rate limits and outages --------------------------------------------------------------------------------


def test_normal_responses_carry_rate_limit_headers_and_the_budget_runs_out(gh: FakeGitHub) -> None:
    gh.rate_limit = 3
    g = client(gh, retry=None)
    repo = g.get_repo(REPO)
    assert g.rate_limiting == (2, 3)
    headers = gh.requests[-1]
    assert headers.status == 200
    repo.get_pull(7)
    repo.get_pull(8)
    with pytest.raises(RateLimitExceededException) as raised:
        repo.get_pull(7)
    assert raised.value.status == 403
    assert (raised.value.headers or {})["x-ratelimit-remaining"] == "0"
    assert int((raised.value.headers or {})["x-ratelimit-reset"]) > time.time()


def test_injected_primary_rate_limit_is_seen_by_the_client(gh: FakeGitHub) -> None:
    gh.fail_primary_rate_limit("GET", rf"/repos/{REPO}/pulls/\d+", reset_in=120)
    repo = client(gh, retry=None).get_repo(REPO)
    with pytest.raises(RateLimitExceededException) as raised:
        repo.get_pull(7)
    assert (raised.value.headers or {})["x-ratelimit-remaining"] == "0"
    assert raised.value.data["message"].startswith("API rate limit exceeded for installation ID")
    assert repo.get_pull(7).number == 7  # times=1


def test_secondary_rate_limit_is_retried_by_pygithub_after_retry_after(gh: FakeGitHub) -> None:
    gh.fail_secondary_rate_limit("POST", rf"/repos/{REPO}/issues/7/comments", retry_after=1)
    pull = client(gh, lazy=True).get_repo(REPO).get_pull(7)
    started = time.monotonic()
    pull.create_issue_comment("hello")  # default GithubRetry sleeps Retry-After, then retries
    assert time.monotonic() - started >= 1
    assert [r.status for r in gh.requests_to("POST", r".*/comments")] == [403, 201]
    assert gh.requests_to("POST", r".*/comments")[0].json == {"body": "hello"}


def test_secondary_rate_limit_429_surfaces_without_retry_and_is_retried_with_it(gh: FakeGitHub) -> None:
    gh.fail_secondary_rate_limit("POST", r".*/check-runs", status=429, retry_after=0)
    with pytest.raises(GithubException) as raised:
        client(gh, lazy=True, retry=None).get_repo(REPO).create_check_run(name="build", head_sha=HEAD)
    assert raised.value.status == 429
    assert raised.value.data["message"] == SECONDARY_RATE_LIMIT_MESSAGE
    assert (raised.value.headers or {})["retry-after"] == "0"
    gh.fail_secondary_rate_limit("POST", r".*/check-runs", status=429, retry_after=0)
    # urllib3 retries 413/429/503 that carry Retry-After, even outside GithubRetry's status list.
    client(gh, lazy=True).get_repo(REPO).create_check_run(name="build", head_sha=HEAD)
    assert [r.status for r in gh.requests_to("POST", r".*/check-runs")] == [429, 429, 201]


def test_outage_is_retried_for_get_and_post_but_not_for_patch(gh: FakeGitHub) -> None:
    repo = client(gh, lazy=True).get_repo(REPO)
    gh.fail_next("GET", rf"/repos/{REPO}/pulls/7", 502, body="<html>Bad gateway</html>", times=2)
    assert repo.get_pull(7).head.sha == HEAD
    assert [r.status for r in gh.requests_to("GET", rf"/repos/{REPO}/pulls/7")] == [502, 502, 200]
    gh.fail_next("POST", r".*/check-runs", 503)
    run = repo.create_check_run(name="build", head_sha=HEAD)
    gh.fail_next("PATCH", r".*/check-runs/\d+", 503)
    with pytest.raises(GithubException) as raised:
        run.edit(status="in_progress")  # urllib3 does not retry PATCH: a lost update must be retried by labgate
    assert raised.value.status == 503


# ---- conformance with GitHub's API description ----------------------------------------------------------------


def _schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """The parts of OpenAPI 3.0 that describe these responses: type, nullable, required, enum, oneOf/anyOf/allOf."""
    if value is None:
        return [] if schema.get("nullable") or not schema else [f"{where} is null"]
    for key in ("oneOf", "anyOf"):
        if key in schema and all(_schema_errors(value, s, where) for s in schema[key]):
            return [f"{where} matches no {key} branch"]
    errors = [e for s in schema.get("allOf", []) for e in _schema_errors(value, s, where)]
    types: dict[str, type | tuple[type, ...]] = {
        "object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float),
    }  # fmt: skip
    kind = schema.get("type")
    if kind in types and (not isinstance(value, types[kind]) or (kind in ("integer", "number") and value is True)):
        return [*errors, f"{where} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}={value!r} not in enum")
    if isinstance(value, dict):
        errors += [f"{where}.{name} missing" for name in schema.get("required", []) if name not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _schema_errors(value[name], sub, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            errors += _schema_errors(item, schema["items"], f"{where}[{index}]")
    return errors


def test_every_described_endpoint_answers_as_described(gh: FakeGitHub, http: httpx.Client) -> None:
    """Conformance with GitHub's OpenAPI description (../shared/fixtures: skipped without it, failed under CI)."""
    openapi = shared_fixture("github/openapi")
    operations = json.loads((openapi / "checks-statuses-comments.operations.json").read_text())
    requests = json.loads((openapi / "checks-statuses-comments.requests.json").read_text())
    served = set(gh.endpoints())
    described = {tuple(key.split(" ", 1)) for key in operations}
    not_served = {f"{m} {p}" for m, p in described - served}
    # Not served because labgate does not call them (yet); serve them here before it does.
    assert not_served == {"POST /repos/{owner}/{repo}/check-runs/{check_run_id}/rerequest",
                          "POST /repos/{owner}/{repo}/check-suites/{check_suite_id}/rerequest"}  # fmt: skip

    headers = {"Authorization": f"token {installation_token(gh, http)}"}
    run_id = http.post(f"{gh.base_url}/repos/{REPO}/check-runs", headers=headers,
                        json={"name": "seed", "head_sha": HEAD}).json()["id"]  # fmt: skip
    values = {"owner": "octo-org", "repo": "hello", "ref": HEAD, "sha": HEAD, "check_run_id": str(run_id),
              "issue_number": "7", "username": "bob"}  # fmt: skip
    checked = 0
    for key, operation in operations.items():
        method, template = key.split(" ", 1)
        if (method, template) not in served:
            continue
        url = gh.base_url + template.format(**values)
        examples = requests[key]["requestExamples"] or {"no body": {"value": None}}
        for name, example in examples.items():
            response = http.request(method, url, headers=headers, json=example["value"])
            assert str(response.status_code) in operation["responses"], (key, name, response.text)
            schema = operation["responses"][str(response.status_code)]["content"]["application/json"]["schema"]
            assert _schema_errors(response.json(), schema) == [], (key, name)
            assert response.headers["X-RateLimit-Resource"] == "core"
            checked += 1
    assert checked == 8  # create x2, update, status, comment examples; list-for-ref, combined status, permission
