"""FakeGitHub: GitHub's REST API for the calls labgate makes, served on 127.0.0.1, recording every request.

Shapes, status codes and required fields follow GitHub's OpenAPI description
(../shared/fixtures/github/openapi/); URLs in bodies are built on `base_url`
because PyGithub follows them (and refuses hosts other than its base URL's).
The fake clock (`advance_clock`) moves installation-token expiry and
rate-limit windows; JWTs are checked against the real clock, which is the one
the client signs them with.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.git_http import ServedRepo, serve_git

DOCS_URL = "https://docs.github.com/rest"
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)
DEFAULT_INSTALLATION_PERMISSIONS = {
    "checks": "write", "statuses": "write", "issues": "write", "pull_requests": "write",
    "contents": "read", "metadata": "read", "members": "read",
}  # fmt: skip
ROLES = ("admin", "maintain", "write", "triage", "read", "none")
# "permission" is the legacy base role: maintain -> write, triage -> read (operation description).
LEGACY_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read", "read": "read"}
CHECK_STATUSES = ("queued", "in_progress", "completed")
ACTIONS_ONLY_STATUSES = ("waiting", "requested", "pending")
CONCLUSIONS = ("action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out")
STATUS_STATES = ("error", "failure", "pending", "success")
MAX_TEXT = 65535
_LEVELS = {"read": 1, "write": 2, "admin": 3}
_SHA = re.compile(r"[0-9a-fA-F]{40}")
_UNPARSEABLE = object()
_REPO_URL_SUFFIXES = {
    "archive_url": "/{archive_format}{/ref}", "assignees_url": "/assignees{/user}",
    "blobs_url": "/git/blobs{/sha}", "branches_url": "/branches{/branch}",
    "collaborators_url": "/collaborators{/collaborator}", "comments_url": "/comments{/number}",
    "commits_url": "/commits{/sha}", "compare_url": "/compare/{base}...{head}", "contents_url": "/contents/{+path}",
    "contributors_url": "/contributors", "deployments_url": "/deployments", "downloads_url": "/downloads",
    "events_url": "/events", "forks_url": "/forks", "git_commits_url": "/git/commits{/sha}",
    "git_refs_url": "/git/refs{/sha}", "git_tags_url": "/git/tags{/sha}", "hooks_url": "/hooks",
    "issue_comment_url": "/issues/comments{/number}", "issue_events_url": "/issues/events{/number}",
    "issues_url": "/issues{/number}", "keys_url": "/keys{/key_id}", "labels_url": "/labels{/name}",
    "languages_url": "/languages", "merges_url": "/merges", "milestones_url": "/milestones{/number}",
    "notifications_url": "/notifications{?since,all,participating}", "pulls_url": "/pulls{/number}",
    "releases_url": "/releases{/id}", "stargazers_url": "/stargazers", "statuses_url": "/statuses/{sha}",
    "subscribers_url": "/subscribers", "subscription_url": "/subscription", "tags_url": "/tags",
    "teams_url": "/teams", "trees_url": "/git/trees{/sha}",
}  # fmt: skip


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    json: Any
    time: float  # fake-clock epoch seconds
    status: int


@dataclass(frozen=True)
class _Endpoint:
    method: str
    path: str  # OpenAPI template
    handler: Callable[[_Call], tuple[Any, ...]]
    auth: str  # "jwt", "installation" or "none"
    permission: tuple[str, str] | None  # ("issues|pull_requests", "write"): either permission will do


@dataclass
class _Call:
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    token: _Token | None
    path: str


@dataclass
class _Token:
    value: str
    installation_id: int
    expires_at: float
    permissions: dict[str, str]
    repos: frozenset[str]


@dataclass
class _Installation:
    id: int
    repos: list[str]
    permissions: dict[str, str]
    account: str


@dataclass
class _Repo:
    id: int
    full_name: str
    default_branch: str
    private: bool
    fork: bool = False


@dataclass
class _Pull:
    repo: str
    number: int
    head_sha: str
    head_ref: str
    base_ref: str
    base_sha: str
    user_login: str
    author_association: str
    head_repo_full_name: str
    title: str
    draft: bool
    state: str
    id: int
    created_at: str
    updated_at: str


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: Any
    remaining: int
    # True: the request takes effect and only its answer is replaced (a proxy's 502 after GitHub acted).
    after_effect: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


def _invalid(detail: str) -> _ApiError:
    # The Checks API answers schema violations with this message shape rather than "Validation Failed".
    return _ApiError(422, f"Invalid request.\n\n{detail}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, number: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{number}".encode()).decode()


def _key(full_name: str) -> str:
    return full_name.lower()  # GitHub owner and repository names are case-insensitive


@functools.cache
def _app_key_pair() -> tuple[str, rsa.RSAPublicKey]:
    """One RSA key per test process: generating it costs more than starting the server."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    return pem.decode(), key.public_key()


def _parse_time(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise _invalid(f'"{field}" is not a valid date-time: {value!r}.') from None
    return _iso(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp())


def _require_str(obj: dict[str, Any], field: str, where: str, max_len: int | None = None) -> None:
    if not isinstance(obj.get(field), str):
        raise _invalid(f'"{field}" wasn\'t supplied{where}.')
    if max_len is not None and len(obj[field]) > max_len:
        raise _invalid(f'"{field}"{where} is longer than {max_len} characters.')


def _validate_annotation(index: int, ann: Any) -> None:
    where = f" in annotation {index}"
    if not isinstance(ann, dict):
        raise _invalid(f"annotation {index} is not an object.")
    for field in ("path", "message"):
        _require_str(ann, field, where)
    for field in ("start_line", "end_line"):
        if not isinstance(ann.get(field), int) or isinstance(ann[field], bool):
            raise _invalid(f'"{field}" wasn\'t supplied{where}.')
    if ann.get("annotation_level") not in ("notice", "warning", "failure"):
        raise _invalid(f'"annotation_level"{where} must be one of notice, warning, failure.')
    has_columns = ann.get("start_column") is not None or ann.get("end_column") is not None
    if has_columns and ann["start_line"] != ann["end_line"]:
        raise _invalid(f"start_column and end_column{where} are only allowed when start_line equals end_line.")
    if len(ann["message"].encode()) > 64 * 1024 or len((ann.get("raw_details") or "").encode()) > 64 * 1024:
        raise _invalid(f"message and raw_details{where} are limited to 64 KB.")
    if len(ann.get("title") or "") > 255:
        raise _invalid(f"title{where} is limited to 255 characters.")


def _validate_check_run(body: Any, creating: bool) -> None:
    """The request rules of checks/create and checks/update, before anything is stored."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    if creating:
        _require_str(body, "name", "")
        _require_str(body, "head_sha", "")
    for field in ("name", "details_url", "external_id"):
        if field in body and not isinstance(body[field], str):
            raise _invalid(f'"{field}" must be a string.')
    status, conclusion = body.get("status"), body.get("conclusion")
    if status is not None and status not in CHECK_STATUSES:
        only = " Only GitHub Actions can set it." if status in ACTIONS_ONLY_STATUSES else ""
        raise _invalid(f'"status" {status!r} is not allowed.{only}')
    if conclusion is not None and conclusion not in CONCLUSIONS:
        raise _invalid(f'"conclusion" {conclusion!r} is not one of {", ".join(CONCLUSIONS)}.')
    if conclusion == "stale":
        raise _invalid('"conclusion" stale can only be set by GitHub.')
    if conclusion is None and (status == "completed" or body.get("completed_at") is not None):
        raise _invalid('"conclusion" wasn\'t supplied (required when status is completed or completed_at is given).')
    _parse_time(body, "started_at")
    _parse_time(body, "completed_at")
    output = body.get("output")
    if output is not None:
        if not isinstance(output, dict):
            raise _invalid('"output" must be an object.')
        _require_str(output, "title", " in output")
        _require_str(output, "summary", " in output", MAX_TEXT)
        if output.get("text") is not None:
            _require_str(output, "text", " in output", MAX_TEXT)
        annotations = output.get("annotations") or []
        if not isinstance(annotations, list) or len(annotations) > 50:
            raise _invalid("Only 50 annotations are allowed per request; send more with further updates.")
        for index, ann in enumerate(annotations):
            _validate_annotation(index, ann)
        for index, image in enumerate(output.get("images") or []):
            for field in ("alt", "image_url"):
                _require_str(image if isinstance(image, dict) else {}, field, f" in image {index}")
    actions = body.get("actions")
    if actions is not None:
        if not isinstance(actions, list) or len(actions) > 3:
            raise _invalid("At most 3 actions are allowed.")
        for index, action in enumerate(actions):
            for field, limit in (("label", 20), ("description", 40), ("identifier", 20)):
                _require_str(action if isinstance(action, dict) else {}, field, f" in action {index}", limit)


class FakeGitHub:
    """GitHub's REST API, in memory. `with FakeGitHub() as gh:` serves it at `gh.base_url`."""

    def __init__(self, app_id: int = 4242, app_slug: str = "labgate-test") -> None:
        self.app_id = app_id
        self.app_slug = app_slug
        self.client_id = f"Iv1.{app_id:016x}"
        self.private_key_pem, self._public_key = _app_key_pair()
        self.token_lifetime = 3600.0  # seconds; GitHub's installation tokens live one hour
        self.rate_limit = 5000  # per installation and hour, as for a non-Enterprise installation
        self.base_url = ""
        self._lock = threading.RLock()
        self._clock_offset = 0.0
        self._requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._ids = iter(range(1000, 10**9))
        self._stable_ids: dict[str, int] = {}
        self._users: set[str] = set()
        self._orgs: set[str] = set()
        self._repos: dict[str, _Repo] = {}
        self._branches: dict[str, dict[str, str]] = {}
        self._pulls: dict[tuple[str, int], _Pull] = {}
        self._roles: dict[tuple[str, str], str] = {}
        self._org_members: dict[str, set[str]] = {}
        self._teams: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self._installations: dict[int, _Installation] = {}
        self._tokens: dict[str, _Token] = {}
        self._buckets: dict[str, list[float]] = {}  # key -> [window reset epoch, used]
        self._check_runs: dict[int, dict[str, Any]] = {}
        self._suites: dict[tuple[str, str], int] = {}
        self._statuses: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._comments: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.tokens_issued = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[*self._routes(), Route("/{path:path}", self._asgi(None), methods=_ALL_METHODS)])

    # ---- running -------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeGitHub:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets, else Nagle costs 40 ms a response.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", server_header=False)
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("FakeGitHub did not start")
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.stop()
        self._thread.join(timeout=5)

    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the fake's clock: installation tokens expire and rate-limit windows reset by it."""
        with self._lock:
            self._clock_offset += seconds

    # ---- seeding -------------------------------------------------------------------------------------------

    def add_repo(self, full_name: str, default_branch: str = "main", private: bool = False,
                 owner_type: str = "Organization") -> None:  # fmt: skip
        with self._lock:
            owner = full_name.split("/")[0]
            self._add_user(owner, organization=owner_type == "Organization")
            self._repos[_key(full_name)] = _Repo(next(self._ids), full_name, default_branch, private)
            self._branches.setdefault(_key(full_name), {})

    def set_branch(self, repo: str, branch: str, sha: str) -> None:
        with self._lock:
            self._branches[_key(self._repo(repo).full_name)][branch] = sha.lower()

    def add_pull(self, repo: str, number: int, head_sha: str, head_ref: str, base_ref: str, base_sha: str,
                 user_login: str, author_association: str, head_repo_full_name: str | None = None, *,
                 title: str = "", draft: bool = False, state: str = "open") -> None:  # fmt: skip
        """Add or replace (e.g. after a push: new head_sha) a pull request; a different head repo is a fork."""
        with self._lock:
            full = self._repo(repo).full_name
            head_repo = head_repo_full_name or full
            old = self._pulls.get((_key(full), number))
            self._pulls[(_key(full), number)] = _Pull(
                full, number, head_sha.lower(), head_ref, base_ref, base_sha.lower(), user_login,
                author_association, head_repo, title or f"Pull request {number}", draft, state,
                old.id if old else next(self._ids), old.created_at if old else _iso(self.now()), _iso(self.now()),
            )  # fmt: skip
            self._add_user(user_login)
            self._branches[_key(full)][base_ref] = base_sha.lower()
            if _key(head_repo) == _key(full):
                self._branches[_key(full)][head_ref] = head_sha.lower()

    def set_permission(self, repo: str, login: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        with self._lock:
            self._roles[(_key(self._repo(repo).full_name), login.lower())] = role
            self._add_user(login)

    def add_org_member(self, org: str, login: str) -> None:
        with self._lock:
            self._org_members.setdefault(org.lower(), set()).add(login.lower())
            self._add_user(org, organization=True)
            self._add_user(login)

    def add_team_member(self, org: str, team_slug: str, login: str, role: str = "member",
                        state: str = "active") -> None:  # fmt: skip
        with self._lock:
            self._teams.setdefault((org.lower(), team_slug.lower()), {})[login.lower()] = {"role": role, "state": state}
            self._org_members.setdefault(org.lower(), set())
            self._add_user(org, organization=True)
            self._add_user(login)

    def add_installation(self, installation_id: int, repos: list[str],
                         permissions: dict[str, str] | None = None) -> None:  # fmt: skip
        with self._lock:
            names = [self._repo(r).full_name for r in repos]
            account = names[0].split("/")[0] if names else "octo-org"
            perms = dict(permissions or DEFAULT_INSTALLATION_PERMISSIONS)
            self._installations[installation_id] = _Installation(installation_id, names, perms, account)

    def serve_git(self, full_name: str, path: Path, *, private: bool = True) -> str:
        """Serve clones of `path` at `<base_url>/<full_name>.git`, as github.com does; its clone URL.
        A private repository needs an installation token that may read its contents."""
        served = ServedRepo(full_name, Path(path), private)

        async def handle(request: Request) -> Response:
            response = await serve_git(request, served, self._may_read)
            with self._lock:
                headers = {k.lower(): v for k, v in request.headers.items()}
                self._requests.append(RecordedRequest(request.method, request.url.path, dict(request.query_params),
                                                      headers, None, self.now(), response.status_code))  # fmt: skip
            return response

        route = Route(f"/{full_name}.git/{{rest:path}}", handle, methods=["GET", "POST"])
        self.app.router.routes.insert(0, route)
        return f"{self.base_url}/{full_name}.git"

    def _may_read(self, full_name: str, credentials: tuple[str, str] | None) -> bool:
        if credentials is None or credentials[0] != "x-access-token":
            return False
        with self._lock:
            token = self._tokens.get(credentials[1])
            return (token is not None and token.expires_at > self.now() and _key(full_name) in token.repos
                    and _LEVELS.get(token.permissions.get("contents", ""), 0) >= _LEVELS["read"])  # fmt: skip

    def tokens_for(self, full_name: str) -> list[dict[str, Any]]:
        """Tokens issued that reach this repository: their permissions and repositories (for assertions)."""
        with self._lock:
            return [{"value": t.value, "permissions": dict(t.permissions), "repos": sorted(t.repos)}
                    for t in self._tokens.values() if _key(full_name) in t.repos]  # fmt: skip

    # ---- assertions ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests with this method whose path fully matches the regex."""
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and pattern.fullmatch(r.path)]

    def check_runs(self, repo: str) -> list[dict[str, Any]]:
        with self._lock:
            runs = [r for r in self._check_runs.values() if _key(r["repo"]) == _key(repo)]
            return copy.deepcopy(sorted(runs, key=lambda r: r["id"]))

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._comments.get((_key(repo), number), []))

    def statuses(self, repo: str, sha: str) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._statuses.get((_key(repo), sha.lower()), []))

    def endpoints(self) -> list[tuple[str, str]]:
        """(method, OpenAPI path template) of every endpoint served."""
        return [(e.method, e.path) for e in self._endpoints()]

    # ---- failure injection ---------------------------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, headers: dict[str, str] | None = None,
                  body: Any = None, times: int = 1) -> None:  # fmt: skip
        """Answer the next `times` matching requests (method or "*", full path match) with this response.

        `body` may be a dict (sent as JSON), a str (sent as text, like a proxy's error page) or None
        (GitHub's error shape with the status phrase)."""
        if body is None:
            body = {"message": HTTPStatus(status).phrase, "documentation_url": DOCS_URL, "status": str(status)}
        failure = _Failure(method.upper(), re.compile(path_regex), status, dict(headers or {}), body, times)
        with self._lock:
            self._failures.append(failure)

    def lose_answer_next(self, method: str, path_regex: str, status: int = 502, times: int = 1) -> None:
        """Carry out the next `times` matching requests, then answer `status` as if the answer had been lost
        on the way back (GitHub acted; the client cannot know)."""
        self.fail_next(method, path_regex, status, times=times)
        with self._lock:
            self._failures[-1].after_effect = True

    def fail_primary_rate_limit(self, method: str, path_regex: str, reset_in: float = 60, times: int = 1) -> None:
        """GitHub's answer once the hourly budget is spent: 403, X-RateLimit-Remaining 0, reset epoch."""
        with self._lock:
            installation = next(iter(self._installations), 0)
        headers = {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Used": str(self.rate_limit), "X-RateLimit-Reset": str(int(self.now() + reset_in)),
                   "X-RateLimit-Resource": "core"}  # fmt: skip
        body = {"message": f"API rate limit exceeded for installation ID {installation}.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"}  # fmt: skip
        self.fail_next(method, path_regex, 403, headers, body, times)

    def fail_secondary_rate_limit(self, method: str, path_regex: str, retry_after: int = 1, status: int = 403,
                                  times: int = 1) -> None:  # fmt: skip
        """GitHub's secondary (abuse) limit: 403 or 429 with Retry-After and this message."""
        docs = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
        body = {"message": SECONDARY_RATE_LIMIT_MESSAGE, "documentation_url": docs}
        self.fail_next(method, path_regex, status, {"Retry-After": str(retry_after)}, body, times)

    # ---- HTTP plumbing -------------------------------------------------------------------------------------

    def _endpoints(self) -> list[_Endpoint]:
        repo = "/repos/{owner}/{repo}"
        installation, jwt_auth, none = "installation", "jwt", "none"
        return [_Endpoint(*spec) for spec in (
            ("POST", "/app/installations/{installation_id}/access_tokens", self._create_token, jwt_auth, None),
            ("GET", "/app", self._get_app, jwt_auth, None),
            ("GET", "/app/installations/{installation_id}", self._get_installation, jwt_auth, None),
            ("GET", repo + "/installation", self._get_repo_installation, jwt_auth, None),
            ("GET", "/rate_limit", self._get_rate_limit, none, None),
            ("GET", repo, self._get_repo, installation, ("metadata", "read")),
            ("GET", repo + "/pulls", self._list_pulls, installation, ("pull_requests", "read")),
            ("GET", repo + "/pulls/{pull_number}", self._get_pull, installation, ("pull_requests", "read")),
            ("GET", repo + "/issues/{issue_number}", self._get_issue, installation, ("issues|pull_requests", "read")),
            ("POST", repo + "/issues/{issue_number}/comments", self._create_comment, installation,
             ("issues|pull_requests", "write")),
            ("GET", repo + "/issues/{issue_number}/comments", self._list_comments, installation,
             ("issues|pull_requests", "read")),
            ("POST", repo + "/check-runs", self._create_check_run, installation, ("checks", "write")),
            ("GET", repo + "/check-runs/{check_run_id}", self._get_check_run, installation, ("checks", "read")),
            ("PATCH", repo + "/check-runs/{check_run_id}", self._update_check_run, installation, ("checks", "write")),
            ("GET", repo + "/check-runs/{check_run_id}/annotations", self._list_annotations, installation,
             ("checks", "read")),
            ("GET", repo + "/commits/{ref}/check-runs", self._list_check_runs, installation, ("checks", "read")),
            ("GET", repo + "/commits/{ref}/status", self._combined_status, installation, ("statuses", "read")),
            ("GET", repo + "/commits/{ref}", self._get_commit, installation, ("contents", "read")),
            ("POST", repo + "/statuses/{sha}", self._create_status, installation, ("statuses", "write")),
            ("GET", repo + "/collaborators/{username}/permission", self._get_permission, installation,
             ("metadata", "read")),
            ("GET", "/users/{username}", self._get_user, installation, None),
            ("GET", "/orgs/{org}", self._get_org, installation, None),
            ("GET", "/orgs/{org}/members/{username}", self._check_member, installation, ("members", "read")),
            ("GET", "/orgs/{org}/teams/{team_slug}", self._get_team, installation, ("members", "read")),
            ("GET", "/orgs/{org}/teams/{team_slug}/memberships/{username}", self._get_team_membership, installation,
             ("members", "read")),
        )]  # fmt: skip

    def _routes(self) -> list[Route]:
        # {ref} may hold a branch name with slashes; more specific paths come first.
        return [Route(e.path.replace("{ref}", "{ref:path}"), self._asgi(e), methods=[e.method])
                for e in self._endpoints()]  # fmt: skip

    def _asgi(self, endpoint: _Endpoint | None) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = _UNPARSEABLE
            headers = {k.lower(): v for k, v in request.headers.items()}
            query = dict(request.query_params)
            with self._lock:
                received = self.now()
                status, payload, extra = self._respond(request.method, request.url.path, endpoint,
                                                       dict(request.path_params), query, headers, body)  # fmt: skip
                parsed = None if body is _UNPARSEABLE else body
                record = RecordedRequest(request.method, request.url.path, query, headers, parsed, received, status)
                self._requests.append(record)
            return _to_response(status, payload, extra)

        return handle

    def _respond(self, method: str, path: str, endpoint: _Endpoint | None, params: dict[str, str],
                 query: dict[str, str], headers: dict[str, str], body: Any,
                 ) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        bucket = "ip"
        try:
            lost = None
            for failure in self._failures:
                if failure.method in ("*", method) and failure.pattern.fullmatch(path):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    if failure.after_effect:
                        lost = failure
                        break
                    return failure.status, failure.body, _merge(self._rate_headers(bucket), failure.headers)
            if body is _UNPARSEABLE:
                raise _ApiError(400, "Problems parsing JSON")
            if endpoint is None:
                raise _ApiError(404, "Not Found")
            token, bucket = self._authenticate(endpoint, headers)
            if endpoint.auth != "none":  # GET /rate_limit is free
                self._spend(bucket, token)
            self._authorize(endpoint, token, params)
            result = endpoint.handler(_Call(params, query, body, token, path))
            if lost is not None:
                return lost.status, lost.body, _merge(self._rate_headers(bucket), lost.headers)
            status, payload, extra = (*result, {})[:3]
            return status, payload, _merge(self._rate_headers(bucket), extra)
        except (KeyError, TypeError, ValueError, AttributeError) as bug:  # in the fake: say so, and record it
            return 500, {"message": f"FakeGitHub bug: {bug!r}", "documentation_url": DOCS_URL}, {}
        except _ApiError as error:
            payload = {"message": error.message, "documentation_url": DOCS_URL, "status": str(error.status)}
            if error.errors is not None:
                payload["errors"] = error.errors
            return error.status, payload, self._rate_headers(bucket)

    def _authenticate(self, endpoint: _Endpoint, headers: dict[str, str]) -> tuple[_Token | None, str]:
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        scheme, credential = scheme.lower(), credential.strip()
        if endpoint.auth == "jwt":
            if scheme != "bearer":
                raise _ApiError(401, "A JSON web token could not be decoded")
            self._verify_jwt(credential)
            return None, "app"
        token = self._tokens.get(credential) if scheme in ("token", "bearer") else None
        if token is not None and token.expires_at > self.now():
            return token, f"installation:{token.installation_id}"
        if endpoint.auth == "installation" or scheme:
            raise _ApiError(401, "Bad credentials")
        return None, "ip"

    def _verify_jwt(self, credential: str) -> None:
        try:
            claims = jwt.decode(credential, self._public_key, algorithms=["RS256"],
                                options={"verify_exp": False, "verify_iat": False, "verify_iss": False,
                                         "require": ["iat", "exp", "iss"]})  # fmt: skip
        except jwt.PyJWTError:
            raise _ApiError(401, "A JSON web token could not be decoded") from None
        now = time.time()
        if str(claims["iss"]) not in (str(self.app_id), self.client_id):
            raise _ApiError(401, "A JSON web token could not be decoded")
        if not isinstance(claims["exp"], int) or claims["exp"] <= now:
            raise _ApiError(401, "'Expiration time' claim ('exp') must be a numeric value representing the "
                                 "future time at which the assertion expires")  # fmt: skip
        if claims["exp"] > now + 600:
            raise _ApiError(401, "'Expiration time' claim ('exp') is too far in the future")
        if not isinstance(claims["iat"], int) or claims["iat"] > now:
            raise _ApiError(401, "'Issued at' claim ('iat') must be an Integer representing the time that "
                                 "the assertion was issued")  # fmt: skip

    def _spend(self, bucket: str, token: _Token | None) -> None:
        if bucket == "ip":
            return
        window = self._window(bucket)
        if window[1] >= self._limit(bucket):
            who = f"installation ID {token.installation_id}" if token else f"app ID {self.app_id}"
            raise _ApiError(403, f"API rate limit exceeded for {who}.")
        window[1] += 1

    def _window(self, bucket: str) -> list[float]:
        window = self._buckets.setdefault(bucket, [self.now() + 3600, 0])
        if window[0] <= self.now():
            window[:] = [self.now() + 3600, 0]
        return window

    def _limit(self, bucket: str) -> int:
        return 60 if bucket == "ip" else self.rate_limit if bucket.startswith("installation") else 5000

    def _rate_headers(self, bucket: str) -> dict[str, str]:
        reset, used = self._window(bucket)
        limit = self._limit(bucket)
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(max(limit - int(used), 0)),
                "X-RateLimit-Reset": str(int(reset)), "X-RateLimit-Used": str(int(used)),
                "X-RateLimit-Resource": "core", "X-GitHub-Request-Id": uuid.uuid4().hex[:20].upper(),
                "X-GitHub-Api-Version-Selected": "2022-11-28",
                "X-GitHub-Media-Type": "github.v3; format=json"}  # fmt: skip

    def _authorize(self, endpoint: _Endpoint, token: _Token | None, params: dict[str, str]) -> None:
        if token is None:
            return
        if "repo" in params:
            full = f"{params['owner']}/{params['repo']}"
            if _key(full) not in self._repos or _key(full) not in token.repos:
                raise _ApiError(404, "Not Found")
        if endpoint.permission is not None:
            names, level = endpoint.permission
            if not any(_LEVELS.get(token.permissions.get(n, ""), 0) >= _LEVELS[level] for n in names.split("|")):
                raise _ApiError(403, "Resource not accessible by integration")

    # ---- state helpers -------------------------------------------------------------------------------------

    def _stable_id(self, name: str) -> int:
        return self._stable_ids.setdefault(name.lower(), next(self._ids))

    def _add_user(self, login: str, organization: bool = False) -> None:
        self._users.add(login.lower())
        if organization:
            self._orgs.add(login.lower())

    def _repo(self, full_name: str) -> _Repo:
        try:
            return self._repos[_key(full_name)]
        except KeyError:
            raise KeyError(f"unknown repository {full_name!r}: add_repo() it first") from None

    def _call_repo(self, call: _Call) -> _Repo:
        return self._repos[_key(f"{call.params['owner']}/{call.params['repo']}")]

    def _resolve(self, repo: _Repo, ref: str) -> str:
        if _SHA.fullmatch(ref):
            return ref.lower()
        branch = ref.removeprefix("refs/").removeprefix("heads/")
        sha = self._branches.get(_key(repo.full_name), {}).get(branch)
        if sha is None:
            raise _ApiError(422, f"No commit found for SHA: {ref}")
        return sha

    def _page(self, call: _Call, items: list[Any], default: int = 30) -> tuple[list[Any], dict[str, str]]:
        """Slice one page and build GitHub's Link header (first/prev/next/last) on base_url."""
        try:
            per_page = min(max(int(call.query.get("per_page", default)), 1), 100)
            page = max(int(call.query.get("page", 1)), 1)
        except ValueError:
            per_page, page = default, 1
        last = max((len(items) + per_page - 1) // per_page, 1)

        def link(number: int, rel: str) -> str:
            query = urlencode({**call.query, "per_page": per_page, "page": number})
            return f'<{self.base_url}{call.path}?{query}>; rel="{rel}"'

        links = []
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return items[(page - 1) * per_page : page * per_page], ({"Link": ", ".join(links)} if links else {})

    # ---- JSON shapes ---------------------------------------------------------------------------------------

    def _user_json(self, login: str) -> dict[str, Any]:
        uid, api = self._stable_id(f"user:{login}"), f"{self.base_url}/users/{login}"
        kind = "Bot" if login.endswith("[bot]") else "Organization" if login.lower() in self._orgs else "User"
        return {"login": login, "id": uid, "node_id": _node_id("User", uid),
                "avatar_url": f"https://avatars.githubusercontent.com/u/{uid}?v=4", "gravatar_id": "",
                "url": api, "html_url": f"https://github.com/{login}", "followers_url": f"{api}/followers",
                "following_url": f"{api}/following{{/other_user}}", "gists_url": f"{api}/gists{{/gist_id}}",
                "starred_url": f"{api}/starred{{/owner}}{{/repo}}", "subscriptions_url": f"{api}/subscriptions",
                "organizations_url": f"{api}/orgs", "repos_url": f"{api}/repos",
                "events_url": f"{api}/events{{/privacy}}", "received_events_url": f"{api}/received_events",
                "type": kind, "site_admin": False}  # fmt: skip

    def _repo_json(self, repo: _Repo) -> dict[str, Any]:
        api, owner = f"{self.base_url}/repos/{repo.full_name}", repo.full_name.split("/")[0]
        created = "2020-01-01T00:00:00Z"
        return {"id": repo.id, "node_id": _node_id("Repository", repo.id), "name": repo.full_name.split("/")[1],
                "full_name": repo.full_name, "owner": self._user_json(owner), "private": repo.private,
                "visibility": "private" if repo.private else "public", "html_url": f"https://github.com/{repo.full_name}",
                "description": None, "fork": repo.fork, "url": api, "default_branch": repo.default_branch,
                "clone_url": f"https://github.com/{repo.full_name}.git", "git_url": f"git://github.com/{repo.full_name}.git",
                "ssh_url": f"git@github.com:{repo.full_name}.git", "archived": False, "disabled": False,
                "created_at": created, "updated_at": created, "pushed_at": created,
                **{name: api + suffix for name, suffix in _REPO_URL_SUFFIXES.items()}}  # fmt: skip

    def _app_json(self) -> dict[str, Any]:
        return {"id": self.app_id, "slug": self.app_slug, "client_id": self.client_id,
                "node_id": _node_id("Integration", self.app_id), "owner": self._user_json("labgate-dev"),
                "name": self.app_slug, "description": "", "external_url": "https://labgate.example.org",
                "html_url": f"https://github.com/apps/{self.app_slug}", "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z", "permissions": DEFAULT_INSTALLATION_PERMISSIONS,
                "events": ["check_run", "check_suite", "issue_comment", "pull_request", "push"],
                "installations_count": len(self._installations)}  # fmt: skip

    def _installation_json(self, inst: _Installation) -> dict[str, Any]:
        api = f"{self.base_url}/app/installations/{inst.id}"
        account = self._user_json(inst.account)
        return {"id": inst.id, "account": account, "repository_selection": "selected", "access_tokens_url":
                f"{api}/access_tokens", "repositories_url": f"{self.base_url}/installation/repositories",
                "html_url": f"https://github.com/settings/installations/{inst.id}", "app_id": self.app_id,
                "app_slug": self.app_slug, "client_id": self.client_id, "target_id": account["id"],
                "target_type": account["type"], "permissions": inst.permissions, "events": self._app_json()["events"],
                "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z",
                "single_file_name": None, "has_multiple_single_files": False, "single_file_paths": [],
                "suspended_by": None, "suspended_at": None}  # fmt: skip

    def _pull_json(self, pull: _Pull) -> dict[str, Any]:
        repo = self._repos[_key(pull.repo)]
        api, html = f"{self.base_url}/repos/{repo.full_name}", f"https://github.com/{repo.full_name}"
        fork_id = self._stable_id(f"repo:{pull.head_repo_full_name}")
        head_repo = self._repos.get(_key(pull.head_repo_full_name)) or _Repo(
            fork_id, pull.head_repo_full_name, pull.head_ref, repo.private, fork=True
        )
        head_owner = pull.head_repo_full_name.split("/")[0]

        def side(ref: str, sha: str, side_repo: _Repo, owner: str) -> dict[str, Any]:
            return {"label": f"{owner}:{ref}", "ref": ref, "sha": sha, "user": self._user_json(owner),
                    "repo": self._repo_json(side_repo)}  # fmt: skip

        return {"url": f"{api}/pulls/{pull.number}", "id": pull.id, "node_id": _node_id("PullRequest", pull.id),
                "html_url": f"{html}/pull/{pull.number}", "diff_url": f"{html}/pull/{pull.number}.diff",
                "patch_url": f"{html}/pull/{pull.number}.patch", "issue_url": f"{api}/issues/{pull.number}",
                "commits_url": f"{api}/pulls/{pull.number}/commits",
                "review_comments_url": f"{api}/pulls/{pull.number}/comments",
                "review_comment_url": f"{api}/pulls/comments{{/number}}",
                "comments_url": f"{api}/issues/{pull.number}/comments",
                "statuses_url": f"{api}/statuses/{pull.head_sha}",
                "number": pull.number, "state": pull.state, "locked": False, "title": pull.title,
                "user": self._user_json(pull.user_login), "body": None, "labels": [], "milestone": None,
                "created_at": pull.created_at, "updated_at": pull.updated_at, "closed_at": None, "merged_at": None,
                "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
                "requested_teams": [], "head": side(pull.head_ref, pull.head_sha, head_repo, head_owner),
                "base": side(pull.base_ref, pull.base_sha, repo, repo.full_name.split("/")[0]),
                "author_association": pull.author_association, "auto_merge": None, "draft": pull.draft,
                "merged": False, "mergeable": None, "mergeable_state": "unknown", "merged_by": None,
                "comments": len(self._comments.get((_key(repo.full_name), pull.number), [])),
                "review_comments": 0, "maintainer_can_modify": False, "commits": 1, "additions": 0, "deletions": 0,
                "changed_files": 0}  # fmt: skip

    def _check_run_json(self, run: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.base_url}/repos/{run['repo']}/check-runs/{run['id']}"
        repo = self._repos[_key(run["repo"])]
        pulls = [p for p in self._pulls.values() if _key(p.repo) == _key(repo.full_name)
                 and p.head_sha == run["head_sha"] and _key(p.head_repo_full_name) == _key(p.repo)]  # fmt: skip
        brief_repo = {"id": repo.id, "url": f"{self.base_url}/repos/{repo.full_name}",
                      "name": repo.full_name.split("/")[1]}  # fmt: skip
        out = run["output"]
        return {"id": run["id"], "node_id": _node_id("CheckRun", run["id"]), "head_sha": run["head_sha"],
                "external_id": run["external_id"], "url": api,
                "html_url": f"https://github.com/{run['repo']}/runs/{run['id']}",
                "details_url": run["details_url"] or "https://labgate.example.org", "status": run["status"],
                "conclusion": run["conclusion"], "started_at": run["started_at"], "completed_at": run["completed_at"],
                "output": {"title": out["title"], "summary": out["summary"], "text": out["text"],
                           "annotations_count": len(out["annotations"]), "annotations_url": f"{api}/annotations"},
                "name": run["name"], "check_suite": {"id": run["check_suite_id"]}, "app": self._app_json(),
                "pull_requests": [{"url": f"{self.base_url}/repos/{p.repo}/pulls/{p.number}", "id": p.id,
                                   "number": p.number,
                                   "head": {"ref": p.head_ref, "sha": p.head_sha, "repo": brief_repo},
                                   "base": {"ref": p.base_ref, "sha": p.base_sha, "repo": brief_repo}}
                                  for p in pulls]}  # fmt: skip

    def _status_json(self, repo: str, record: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"{self.base_url}/repos/{repo}/statuses/{record['sha']}",
                "avatar_url": f"https://avatars.githubusercontent.com/in/{self.app_id}?v=4", "id": record["id"],
                "node_id": _node_id("StatusContext", record["id"]), "state": record["state"],
                "description": record["description"], "target_url": record["target_url"],
                "context": record["context"], "created_at": record["created_at"], "updated_at": record["created_at"],
                "creator": self._user_json(f"{self.app_slug}[bot]")}  # fmt: skip

    def _comment_json(self, repo: str, number: int, record: dict[str, Any]) -> dict[str, Any]:
        api = f"{self.base_url}/repos/{repo}/issues"
        return {"id": record["id"], "node_id": _node_id("IssueComment", record["id"]),
                "url": f"{api}/comments/{record['id']}",
                "html_url": f"https://github.com/{repo}/pull/{number}#issuecomment-{record['id']}",
                "body": record["body"], "user": self._user_json(record["user"]), "created_at": record["created_at"],
                "updated_at": record["updated_at"], "issue_url": f"{api}/{number}", "author_association": "NONE",
                "performed_via_github_app": self._app_json(), "pin": None, "minimized": None}  # fmt: skip

    # ---- handlers: app and installation --------------------------------------------------------------------

    def _find_installation(self, call: _Call) -> _Installation:
        number = call.params["installation_id"]
        inst = self._installations.get(int(number) if number.isdigit() else -1)
        if inst is None:
            raise _ApiError(404, "Not Found")
        return inst

    def _create_token(self, call: _Call) -> tuple[Any, ...]:
        inst = self._find_installation(call)
        body = call.body if isinstance(call.body, dict) else {}
        asked = body.get("permissions") or {}
        for name, level in asked.items():
            if _LEVELS.get(inst.permissions.get(name, ""), 0) < _LEVELS.get(level, 9):
                raise _ApiError(422, "The permissions requested are not granted to this installation.")
        repos = inst.repos
        if body.get("repositories"):
            by_name = {r.split("/")[1].lower(): r for r in inst.repos}
            if any(str(name).lower() not in by_name for name in body["repositories"]):
                raise _ApiError(422, "There is at least one repository that does not exist or is not accessible "
                                     "to the parent installation.")  # fmt: skip
            repos = [by_name[str(name).lower()] for name in body["repositories"]]
        token = _Token("ghs_" + secrets.token_hex(18), inst.id, self.now() + self.token_lifetime,
                       dict(asked or inst.permissions), frozenset(_key(r) for r in repos))  # fmt: skip
        self._tokens[token.value] = token
        self.tokens_issued += 1
        return 201, {"token": token.value, "expires_at": _iso(token.expires_at), "permissions": token.permissions,
                     "repository_selection": "selected"}  # fmt: skip

    def _get_app(self, call: _Call) -> tuple[Any, ...]:
        return 200, self._app_json()

    def _get_installation(self, call: _Call) -> tuple[Any, ...]:
        return 200, self._installation_json(self._find_installation(call))

    def _get_repo_installation(self, call: _Call) -> tuple[Any, ...]:
        full = _key(f"{call.params['owner']}/{call.params['repo']}")
        for inst in self._installations.values():
            if full in (_key(r) for r in inst.repos):
                return 200, self._installation_json(inst)
        raise _ApiError(404, "Not Found")

    def _get_rate_limit(self, call: _Call) -> tuple[Any, ...]:
        bucket = f"installation:{call.token.installation_id}" if call.token else "ip"
        headers = self._rate_headers(bucket)
        core = {"limit": int(headers["X-RateLimit-Limit"]), "remaining": int(headers["X-RateLimit-Remaining"]),
                "reset": int(headers["X-RateLimit-Reset"]), "used": int(headers["X-RateLimit-Used"]),
                "resource": "core"}  # fmt: skip
        return 200, {"resources": {"core": core}, "rate": core}

    # ---- handlers: repository, pulls, issues, commits ------------------------------------------------------

    def _get_repo(self, call: _Call) -> tuple[Any, ...]:
        return 200, self._repo_json(self._call_repo(call))

    def _find_pull(self, call: _Call, param: str) -> _Pull:
        number = call.params[param]
        pull = self._pulls.get((_key(self._call_repo(call).full_name), int(number) if number.isdigit() else -1))
        if pull is None:
            raise _ApiError(404, "Not Found")
        return pull

    def _list_pulls(self, call: _Call) -> tuple[Any, ...]:
        # "pull-request-simple" items: the full object less what only GET /pulls/{n} computes.
        repo = self._call_repo(call)
        state = call.query.get("state", "open")
        if state not in ("open", "closed", "all"):
            raise _invalid(f"state: {state!r} is not one of open, closed, all")
        pulls = sorted((p for p in self._pulls.values() if _key(p.repo) == _key(repo.full_name)
                        and state in ("all", p.state)), key=lambda p: -p.number)  # fmt: skip
        page, headers = self._page(call, pulls)
        detail_only = ("merged", "mergeable", "mergeable_state", "merged_by", "comments", "review_comments",
                       "maintainer_can_modify", "commits", "additions", "deletions", "changed_files")  # fmt: skip
        items = [{k: v for k, v in self._pull_json(p).items() if k not in detail_only} for p in page]
        return 200, items, headers

    def _get_pull(self, call: _Call) -> tuple[Any, ...]:
        return 200, self._pull_json(self._find_pull(call, "pull_number"))

    def _get_issue(self, call: _Call) -> tuple[Any, ...]:
        pull = self._pull_json(self._find_pull(call, "issue_number"))
        keep = ("id", "node_id", "number", "title", "user", "labels", "state", "locked", "assignee", "assignees",
                "milestone", "comments", "created_at", "updated_at", "closed_at", "author_association",
                "body")  # fmt: skip
        api = pull["issue_url"]
        return 200, {**{k: pull[k] for k in keep}, "url": api, "html_url": pull["html_url"],
                     "repository_url": pull["base"]["repo"]["url"], "comments_url": f"{api}/comments",
                     "events_url": f"{api}/events", "labels_url": f"{api}/labels{{/name}}",
                     "pull_request": {"url": pull["url"], "html_url": pull["html_url"], "diff_url": pull["diff_url"],
                                      "patch_url": pull["patch_url"], "merged_at": None}}  # fmt: skip

    def _create_comment(self, call: _Call) -> tuple[Any, ...]:
        pull = self._find_pull(call, "issue_number")
        body = call.body if isinstance(call.body, dict) else {}
        error = {"resource": "IssueComment", "field": "body"}
        if not isinstance(body.get("body"), str):
            raise _ApiError(422, "Validation Failed", [{**error, "code": "missing_field"}])
        if len(body["body"]) > 65536:
            too_long = "body is too long (maximum is 65536 characters)"
            raise _ApiError(422, "Validation Failed", [{**error, "code": "custom", "message": too_long}])
        now = _iso(self.now())
        record = {"id": next(self._ids), "body": body["body"], "user": f"{self.app_slug}[bot]", "created_at": now,
                  "updated_at": now}  # fmt: skip
        self._comments.setdefault((_key(pull.repo), pull.number), []).append(record)
        payload = self._comment_json(pull.repo, pull.number, record)
        return 201, payload, {"Location": payload["url"]}

    def _list_comments(self, call: _Call) -> tuple[Any, ...]:
        pull = self._find_pull(call, "issue_number")
        records = self._comments.get((_key(pull.repo), pull.number), [])
        since = call.query.get("since")
        if since:
            records = [r for r in records if r["updated_at"] >= _parse_time({"since": since}, "since")]
        page, headers = self._page(call, [self._comment_json(pull.repo, pull.number, r) for r in records])
        return 200, page, headers

    def _get_commit(self, call: _Call) -> tuple[Any, ...]:
        repo = self._call_repo(call)
        sha = self._resolve(repo, call.params["ref"])
        api = f"{self.base_url}/repos/{repo.full_name}"
        person = {"name": "Example Dev", "email": "dev@example.org", "date": "2026-01-01T00:00:00Z"}
        return 200, {"sha": sha, "node_id": _node_id("Commit", int(sha[:8], 16)), "url": f"{api}/commits/{sha}",
                     "html_url": f"https://github.com/{repo.full_name}/commit/{sha}",
                     "comments_url": f"{api}/commits/{sha}/comments",
                     "commit": {"url": f"{api}/git/commits/{sha}", "author": person, "committer": person,
                                "message": "", "tree": {"sha": sha, "url": f"{api}/git/trees/{sha}"},
                                "comment_count": 0},
                     "author": None, "committer": None, "parents": [], "files": [],
                     "stats": {"additions": 0, "deletions": 0, "total": 0}}  # fmt: skip

    def _get_user(self, call: _Call) -> tuple[Any, ...]:
        login = call.params["username"]
        if login.lower() not in self._users:
            raise _ApiError(404, "Not Found")
        return 200, self._user_json(login)

    # ---- handlers: checks ----------------------------------------------------------------------------------

    def _create_check_run(self, call: _Call) -> tuple[Any, ...]:
        repo = self._call_repo(call)
        _validate_check_run(call.body, creating=True)
        if not _SHA.fullmatch(call.body["head_sha"]):
            raise _ApiError(422, f"No commit found for SHA: {call.body['head_sha']}")
        sha = call.body["head_sha"].lower()
        suite = self._suites.setdefault((_key(repo.full_name), sha), next(self._ids))
        run = {"id": next(self._ids), "repo": repo.full_name, "name": "", "head_sha": sha, "status": "queued",
               "conclusion": None, "details_url": None, "external_id": "", "started_at": _iso(self.now()),
               "completed_at": None, "output": {"title": None, "summary": None, "text": None, "annotations": [],
                                                "images": []},
               "actions": [], "check_suite_id": suite, "app_id": self.app_id}  # fmt: skip
        self._apply_check_run(run, call.body)
        self._check_runs[run["id"]] = run
        return 201, self._check_run_json(run)

    def _apply_check_run(self, run: dict[str, Any], body: dict[str, Any]) -> None:
        for field in ("name", "details_url", "external_id", "actions"):
            if field in body:
                run[field] = body[field]
        if body.get("started_at") is not None:
            run["started_at"] = _parse_time(body, "started_at")
        if body.get("output") is not None:
            out = body["output"]
            run["output"].update(title=out["title"], summary=out["summary"])
            if "text" in out:
                run["output"]["text"] = out["text"]
            if "images" in out:
                run["output"]["images"] = list(out["images"] or [])
            # GitHub appends the annotations of every update to those already there.
            run["output"]["annotations"] += [dict(a) for a in out.get("annotations") or []]
        if body.get("conclusion") is not None:  # a conclusion completes the run
            completed_at = _parse_time(body, "completed_at") or run["completed_at"] or _iso(self.now())
            run.update(status="completed", conclusion=body["conclusion"], completed_at=completed_at)
        elif body.get("status") is not None:
            run.update(status=body["status"], conclusion=None, completed_at=None)

    def _find_check_run(self, call: _Call) -> dict[str, Any]:
        run_id = call.params["check_run_id"]
        run = self._check_runs.get(int(run_id) if run_id.isdigit() else -1)
        if run is None or _key(run["repo"]) != _key(self._call_repo(call).full_name):
            raise _ApiError(404, "Not Found")
        return run

    def _get_check_run(self, call: _Call) -> tuple[Any, ...]:
        return 200, self._check_run_json(self._find_check_run(call))

    def _update_check_run(self, call: _Call) -> tuple[Any, ...]:
        run = self._find_check_run(call)
        _validate_check_run(call.body, creating=False)
        self._apply_check_run(run, call.body)
        return 200, self._check_run_json(run)

    def _list_annotations(self, call: _Call) -> tuple[Any, ...]:
        run = self._find_check_run(call)
        blob = f"https://github.com/{run['repo']}/blob/{run['head_sha']}"
        items = [{"path": a["path"], "start_line": a["start_line"], "end_line": a["end_line"],
                  "start_column": a.get("start_column"), "end_column": a.get("end_column"),
                  "annotation_level": a["annotation_level"], "title": a.get("title"), "message": a["message"],
                  "raw_details": a.get("raw_details"), "blob_href": f"{blob}/{a['path']}"}
                 for a in run["output"]["annotations"]]  # fmt: skip
        page, headers = self._page(call, items)
        return 200, page, headers

    def _list_check_runs(self, call: _Call) -> tuple[Any, ...]:
        repo = self._call_repo(call)
        sha = self._resolve(repo, call.params["ref"])
        runs = sorted((r for r in self._check_runs.values()
                       if _key(r["repo"]) == _key(repo.full_name) and r["head_sha"] == sha),
                      key=lambda r: -r["id"])  # fmt: skip
        if call.query.get("filter", "latest") == "latest":
            newest: dict[str, dict[str, Any]] = {}
            for run in runs:
                newest.setdefault(run["name"], run)
            runs = list(newest.values())
        if "check_name" in call.query:
            runs = [r for r in runs if r["name"] == call.query["check_name"]]
        if "status" in call.query:
            runs = [r for r in runs if r["status"] == call.query["status"]]
        if "app_id" in call.query:
            runs = [r for r in runs if str(r["app_id"]) == call.query["app_id"]]
        page, headers = self._page(call, runs)
        return 200, {"total_count": len(runs), "check_runs": [self._check_run_json(r) for r in page]}, headers

    # ---- handlers: commit statuses -------------------------------------------------------------------------

    def _create_status(self, call: _Call) -> tuple[Any, ...]:
        repo, sha = self._call_repo(call), call.params["sha"]
        body = call.body if isinstance(call.body, dict) else {}

        def failed(field: str, code: str, message: str | None = None) -> _ApiError:
            error = {"resource": "Status", "code": code, "field": field, **({"message": message} if message else {})}
            return _ApiError(422, "Validation Failed", [error])

        if body.get("state") not in STATUS_STATES:
            raise failed("state", "missing_field" if "state" not in body else "invalid")
        if len(body.get("description") or "") > 140:
            raise failed("description", "custom", "description is too long (maximum is 140 characters)")
        if not _SHA.fullmatch(sha):
            raise _ApiError(422, f"No commit found for SHA: {sha}")
        context = body.get("context") or "default"
        records = self._statuses.setdefault((_key(repo.full_name), sha.lower()), [])
        if sum(r["context"].lower() == context.lower() for r in records) >= 1000:
            raise failed("context", "custom", "This SHA and context has reached the maximum number of statuses.")
        record = {"id": next(self._ids), "sha": sha.lower(), "state": body["state"], "context": context,
                  "description": body.get("description"), "target_url": body.get("target_url"),
                  "created_at": _iso(self.now())}  # fmt: skip
        records.append(record)
        payload = self._status_json(repo.full_name, record)
        return 201, payload, {"Location": payload["url"]}

    def _combined_status(self, call: _Call) -> tuple[Any, ...]:
        repo = self._call_repo(call)
        try:
            sha = self._resolve(repo, call.params["ref"])
        except _ApiError:
            raise _ApiError(404, "Not Found") from None
        latest: dict[str, dict[str, Any]] = {}
        for record in self._statuses.get((_key(repo.full_name), sha), []):
            latest[record["context"].lower()] = record  # contexts are case-insensitive; the newest wins
        states = [r["state"] for r in latest.values()]
        state = ("failure" if {"error", "failure"} & set(states) else
                 "pending" if not states or "pending" in states else "success")  # fmt: skip
        page, headers = self._page(call, sorted(latest.values(), key=lambda r: r["id"]))
        api = f"{self.base_url}/repos/{repo.full_name}/commits/{sha}"
        return 200, {"state": state, "statuses": [self._status_json(repo.full_name, r) for r in page], "sha": sha,
                     "total_count": len(latest), "repository": self._repo_json(repo), "commit_url": api,
                     "url": f"{api}/status"}, headers  # fmt: skip

    # ---- handlers: trust ---------------------------------------------------------------------------------

    def _get_permission(self, call: _Call) -> tuple[Any, ...]:
        repo, login = self._call_repo(call), call.params["username"]
        if login.lower() not in self._users:
            raise _ApiError(404, "Not Found")
        role = self._roles.get((_key(repo.full_name), login.lower()))
        if role is None:  # an outside user: anyone may read a public repository
            role = "none" if repo.private else "read"
        rank = ROLES[::-1].index(role)  # none 0, read 1, triage 2, write 3, maintain 4, admin 5
        flags = {flag: rank >= needed for flag, needed in (("pull", 1), ("triage", 2), ("push", 3), ("maintain", 4),
                                                             ("admin", 5))}  # fmt: skip
        user = {**self._user_json(login), "permissions": flags, "role_name": role}
        return 200, {"permission": LEGACY_PERMISSION.get(role, "none"), "role_name": role, "user": user}

    def _find_org(self, call: _Call) -> str:
        org = call.params["org"].lower()
        if org not in self._org_members and not any(k.startswith(org + "/") for k in self._repos):
            raise _ApiError(404, "Not Found")
        return org

    def _get_org(self, call: _Call) -> tuple[Any, ...]:
        self._find_org(call)
        user = self._user_json(call.params["org"])
        return 200, {**user, "type": "Organization", "url": f"{self.base_url}/orgs/{call.params['org']}",
                     "repos_url": f"{self.base_url}/orgs/{call.params['org']}/repos", "description": None}  # fmt: skip

    def _check_member(self, call: _Call) -> tuple[Any, ...]:
        org = self._find_org(call)
        if call.params["username"].lower() in self._org_members.get(org, set()):
            return 204, None
        raise _ApiError(404, "User does not exist or is not a member of the organization")

    def _find_team(self, call: _Call) -> dict[str, dict[str, str]]:
        team = self._teams.get((self._find_org(call), call.params["team_slug"].lower()))
        if team is None:
            raise _ApiError(404, "Not Found")
        return team

    def _get_team(self, call: _Call) -> tuple[Any, ...]:
        self._find_team(call)
        org, slug = call.params["org"], call.params["team_slug"]
        team_id = self._stable_id(f"team:{org}/{slug}")
        return 200, {"id": team_id, "node_id": _node_id("Team", team_id), "slug": slug, "name": slug,
                     "url": f"{self.base_url}/orgs/{org}/teams/{slug}", "html_url": f"https://github.com/orgs/{org}/teams/{slug}",
                     "privacy": "closed", "permission": "pull", "description": None, "parent": None,
                     "members_url": f"{self.base_url}/orgs/{org}/teams/{slug}/members{{/member}}",
                     "repositories_url": f"{self.base_url}/orgs/{org}/teams/{slug}/repos"}  # fmt: skip

    def _get_team_membership(self, call: _Call) -> tuple[Any, ...]:
        membership = self._find_team(call).get(call.params["username"].lower())
        if membership is None:
            raise _ApiError(404, "Not Found")
        url = f"{self.base_url}{call.path}"
        return 200, {"url": url, "role": membership["role"], "state": membership["state"]}


class _Server(uvicorn.Server):
    """uvicorn that stops when told, not at its next 100 ms poll, and without a grace period."""

    _stopping: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        ticks = 0
        while not await self.on_tick(ticks):  # on_tick refreshes the Date header when ticks % 10 == 0
            ticks += 10
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close now; asyncio.run cancels the rest

    def stop(self) -> None:
        self.should_exit = True
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)


_ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]


def _merge(base: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """Header dicts merged with case-insensitive names, `extra` winning."""
    merged = {k.lower(): (k, v) for k, v in base.items()}
    merged.update({k.lower(): (k, v) for k, v in extra.items()})
    return dict(merged.values())


def _to_response(status: int, payload: Any, headers: dict[str, str]) -> Response:
    if status == 204 or payload is None:
        return Response(status_code=status, headers=headers)
    if isinstance(payload, str):
        return Response(payload, status_code=status, headers=headers, media_type="text/plain; charset=utf-8")
    return Response(json.dumps(payload), status_code=status, headers=headers,
                    media_type="application/json; charset=utf-8")  # fmt: skip
