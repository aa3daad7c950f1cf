"""GitHub App client: installation tokens through PyGithub's auth classes, retries, rate limits."""

from __future__ import annotations

import threading
from typing import Any

from github import Auth, Github, GithubRetry
from github.PullRequest import PullRequest
from github.Repository import Repository

# Check updates must be retried too (PATCH), and 429 like 403: both are how GitHub
# says "slow down"; GithubRetry reads Retry-After and X-RateLimit-Reset for them.
RETRY_STATUSES = [429, *range(500, 600)]
RETRY_METHODS = frozenset({"GET", "POST", "PATCH"})


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
