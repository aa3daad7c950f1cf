"""GitHub App client: installation tokens through PyGithub's auth classes, retries, rate limits."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlencode

from github import Auth, Github, GithubException, GithubIntegration, GithubRetry, RateLimitExceededException
from github.PullRequest import PullRequest
from github.Repository import Repository

from bot.host.retrying import Verdict

# Check updates must be retried too (PATCH), and 429 like 403: both are how GitHub
# says "slow down"; GithubRetry reads Retry-After and X-RateLimit-Reset for them.
# POST is not retried here: a 502 may come after GitHub created the check run or comment, and
# posting again would make a second one. The task retries instead, and looks before it creates
# (bot/forges/github/reporter.py).
RETRY_STATUSES = [429, *range(500, 600)]
RETRY_METHODS = frozenset({"GET", "PATCH"})


def make_retry(
    *, total: int = 5, backoff_s: float = 0.5, secondary_wait_s: float = 60, max_wait_s: float = 900
) -> GithubRetry:
    return GithubRetry(
        total=total,
        backoff_factor=backoff_s,
        secondary_rate_wait=secondary_wait_s,
        max_rate_limit_wait=max_wait_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=RETRY_METHODS,
    )


def mint_read_token(app_id: int, private_key: str, api_url: str, full_name: str,
                    installation_id: int | None = None) -> str:  # fmt: skip
    """A fresh installation token that can only read the contents of this one repository (1 h life).

    PyGithub's get_access_token cannot narrow a token to one repository, so this is one
    POST with the App's JWT (and, when the installation is not known, one GET to find it).
    """
    import httpx

    api = api_url.rstrip("/")
    headers = {"Authorization": f"Bearer {Auth.AppAuth(app_id, private_key).token}",
               "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}  # fmt: skip
    with httpx.Client(headers=headers, timeout=30) as client:
        if installation_id is None:
            found = client.get(f"{api}/repos/{full_name}/installation")
            found.raise_for_status()
            installation_id = int(found.json()["id"])
        body = {"repositories": [full_name.split("/", 1)[1]], "permissions": {"contents": "read"}}
        minted = client.post(f"{api}/app/installations/{installation_id}/access_tokens", json=body)
        minted.raise_for_status()
        return str(minted.json()["token"])


def classify_error(exc: BaseException) -> Verdict | None:
    """GitHub's answers that mean "later": 5xx, 429, and a rate limit's 403 (with when to come back)."""
    if isinstance(exc, RateLimitExceededException):
        return Verdict(True, _asked_wait(exc))
    if not isinstance(exc, GithubException):
        return None
    limited = exc.status == 429 or (exc.status == 403 and _is_rate_limit(exc))
    return Verdict(exc.status >= 500 or limited, _asked_wait(exc) if limited else None)


def _headers(exc: GithubException) -> dict[str, str]:
    return {k.lower(): v for k, v in (exc.headers or {}).items()}


def _is_rate_limit(exc: GithubException) -> bool:
    headers = _headers(exc)
    message = str(exc.data.get("message", "")) if isinstance(exc.data, dict) else ""
    return headers.get("x-ratelimit-remaining") == "0" or "retry-after" in headers or "rate limit" in message.lower()


def _asked_wait(exc: GithubException) -> float | None:
    headers = _headers(exc)
    retry_after = headers.get("retry-after", "")
    if retry_after.isdigit():
        return float(retry_after)
    reset = headers.get("x-ratelimit-reset", "")
    if headers.get("x-ratelimit-remaining") == "0" and reset.isdigit():
        return max(0.0, float(reset) - time.time() + 1)
    return None


class GitHubApp:
    """One App; a cached `Github` per installation. PyGithub's AppInstallationAuth keeps the
    installation token and renews it shortly before it expires, so tokens never leave this object."""

    def __init__(
        self,
        app_id: int,
        private_key: str,
        api_url: str,
        retry: GithubRetry | None = None,
        write_interval_s: float = 1.0,
    ) -> None:
        self._auth = Auth.AppAuth(app_id, private_key)
        self._app_id = app_id
        self._api_url = api_url.rstrip("/")
        self._retry = retry or make_retry()
        self._write_interval_s = write_interval_s
        self._clients: dict[int, Github] = {}
        self._lock = threading.Lock()

    def installation(self, installation_id: int) -> Github:
        with self._lock:
            client = self._clients.get(installation_id)
            if client is None:
                auth = self._auth.get_installation_auth(installation_id)
                client = Github(
                    base_url=self._api_url,
                    auth=auth,
                    retry=self._retry,
                    per_page=100,
                    seconds_between_requests=0,
                    seconds_between_writes=self._write_interval_s,
                )
                self._clients[installation_id] = client
            return client

    def installation_for(self, full_name: str) -> int | None:
        """The App's installation on the repository (GET /repos/{owner}/{repo}/installation, as the
        App), or None when the App is not installed there."""
        owner, _, name = full_name.partition("/")
        integration = GithubIntegration(auth=self._auth, base_url=self._api_url, retry=self._retry)
        try:
            return int(integration.get_repo_installation(owner, name).id)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise
        finally:
            integration.close()

    def repo(self, installation_id: int, full_name: str) -> Repository:
        # lazy=True: no GET /repos/{owner}/{repo} before every call.
        return self.installation(installation_id).get_repo(full_name, lazy=True)

    def pull(self, installation_id: int, full_name: str, number: int) -> PullRequest:
        return self.repo(installation_id, full_name).get_pull(number)

    def permission(self, installation_id: int, full_name: str, login: str) -> str | None:
        """The user's permission on the repository (admin, maintain, write, triage, read, none)."""
        from github import GithubException

        try:
            return self.repo(installation_id, full_name).get_collaborator_permission(login)
        except GithubException as exc:
            if exc.status == 404:
                return None
            raise

    def _call(self, installation_id: int, verb: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # One request, no GET of the object first (PyGithub's .edit() would fetch it).
        requester = self.installation(installation_id).requester
        _, data = requester.requestJsonAndCheck(verb, f"{self._api_url}{path}", input=body)
        return dict(data)

    def create_check(self, installation_id: int, full_name: str, body: dict[str, Any]) -> int:
        """POST a check run (name, head_sha, status, ...); its id."""
        return int(self._call(installation_id, "POST", f"/repos/{full_name}/check-runs", body)["id"])

    def find_check(self, installation_id: int, full_name: str, head_sha: str, name: str,
                   external_id: str) -> int | None:  # fmt: skip
        """The id of this App's check run `name` on `head_sha` carrying `external_id`, if GitHub has one:
        a create whose answer was lost may still have made it."""
        path = f"/repos/{full_name}/commits/{head_sha}/check-runs"
        query = urlencode({"check_name": name, "filter": "all", "per_page": 100})
        data = self._get(installation_id, f"{path}?{query}")
        for run in data.get("check_runs", []):
            if run.get("external_id") == external_id and (run.get("app") or {}).get("id") == self._app_id:
                return int(run["id"])
        return None

    def open_pulls(self, installation_id: int, full_name: str) -> list[PullRequest]:
        """Every open pull request of the repository (GET /pulls, paginated by PyGithub)."""
        return list(self.repo(installation_id, full_name).get_pulls(state="open"))

    def update_check(self, installation_id: int, full_name: str, check_id: int, body: dict[str, Any]) -> None:
        self._call(installation_id, "PATCH", f"/repos/{full_name}/check-runs/{check_id}", body)

    def comment(self, installation_id: int, full_name: str, number: int, body: str) -> None:
        self._call(installation_id, "POST", f"/repos/{full_name}/issues/{number}/comments", {"body": body})

    def is_team_member(self, installation_id: int, team: str, login: str) -> bool:
        """Active member of `org/team`."""
        from github import GithubException

        org, _, slug = team.partition("/")
        try:
            data = self._get(installation_id, f"/orgs/{org}/teams/{slug}/memberships/{login}")
        except GithubException as exc:
            if exc.status == 404:
                return False
            raise
        return data.get("state") == "active"

    def _get(self, installation_id: int, path: str) -> dict[str, Any]:
        requester = self.installation(installation_id).requester
        _, data = requester.requestJsonAndCheck("GET", f"{self._api_url}{path}")
        return dict(data)
