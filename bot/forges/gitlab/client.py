"""GitLab API client: members, merge requests, notes and commit statuses through python-gitlab, paced and retried."""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import gitlab
import requests
from gitlab.exceptions import GitlabError, GitlabGetError, GitlabHttpError
from gitlab.v4.objects import Project

from bot.host.retrying import Verdict

ACCESS_LEVELS: dict[str, int] = {"guest": 10, "planner": 15, "reporter": 20, "developer": 30, "maintainer": 40,
                                 "owner": 50}  # fmt: skip
MAX_STATUS_TEXT = 255  # description and target_url: "Must be 255 characters or fewer" (doc/api/commits.md)

# Reads are retried by python-gitlab itself on 5xx and dropped connections: a GET repeated changes nothing.
# Writes never are (python-gitlab's default, kept): a 502 may come after GitLab created the note or the
# status, and posting again would make a second one. The task retries instead (classify_error).
_READ: dict[str, Any] = {"retry_transient_errors": True, "max_retries": 3}
_WRITE: dict[str, Any] = {"retry_transient_errors": False}
# GitLab answers a status already in the asked state with 400 "Cannot transition status via :enqueue from
# :pending" (or :run from :running): what a retried POST whose first answer was lost meets.
_SAME_STATE = re.compile(r"Cannot transition status via :(enqueue from :pending|run from :running)\b")


@dataclass(frozen=True)
class MergeRequestView:
    """What labgate reads of a merge request."""

    iid: int
    title: str
    state: str  # GitLab's: opened, closed, merged, locked
    head_sha: str
    target_branch: str
    source_project_id: int
    target_project_id: int
    author: str  # author.username
    author_id: int
    draft: bool


@dataclass(frozen=True)
class NoteView:
    """A merge request note as GitLab holds it."""

    id: int
    author: str  # author.username
    body: str
    system: bool  # written by GitLab itself ("added 1 commit", ...), under the name of whoever acted
    created_at: datetime  # GitLab's clock, aware UTC


@dataclass(frozen=True)
class Member:
    """A user's effective membership of a project."""

    username: str
    access_level: int  # the highest of its direct and inherited (ancestor groups') memberships
    is_bot: bool  # GitLab's bot users: project and group access tokens, service accounts


class GitLabRateLimited(GitlabHttpError):
    """A 429, with the wait GitLab asked for (Retry-After, else RateLimit-Reset)."""

    def __init__(self, wait_s: float | None, body: bytes) -> None:
        super().__init__("429 Too Many Requests", 429, body)
        self.wait_s = wait_s


def classify_error(exc: BaseException) -> Verdict | None:
    """GitLab's answers that mean "later": 5xx, 429 (with the wait it asked for), 409 (another update of
    the same commit status in progress). Other answers are final; exceptions not GitLab's are not ours."""
    if not isinstance(exc, GitlabError):
        return None
    for cause in (exc, exc.__cause__):  # python-gitlab re-raises an HTTP error as e.g. GitlabCreateError
        if isinstance(cause, GitLabRateLimited):
            return Verdict(True, cause.wait_s)
    code = exc.response_code
    if code is None:
        return Verdict(False)
    return Verdict(code >= 500 or code in (409, 429))


def _asked_wait(headers: Any) -> float | None:
    retry_after = str(headers.get("Retry-After", "")).strip()
    if retry_after.isdigit():
        return float(retry_after)
    if retry_after:
        try:
            return max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time())
        except (TypeError, ValueError):
            pass
    reset = str(headers.get("RateLimit-Reset", "")).strip()
    if reset.isdigit():
        return max(0.0, float(reset) - time.time())
    return None


def _refuse_rate_limited(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    # python-gitlab would sleep out a 429 itself (for as long as Retry-After says, in this thread) and
    # lose the headers when it gives up; the task's retry waits instead, told how long by classify_error.
    if response.status_code == 429:
        body = response.content
        response.close()
        raise GitLabRateLimited(_asked_wait(response.headers), body)


class GitLabClient:
    """One GitLab instance as one user (labgate's token). Writes are paced `write_interval_s` apart."""

    def __init__(self, url: str, token: str, *, write_interval_s: float = 0.0, conflict_retries: int = 5,
                 timeout_s: float = 30.0) -> None:  # fmt: skip
        session = requests.Session()
        session.hooks["response"].append(_refuse_rate_limited)
        self._url = url.rstrip("/")
        self._gl = gitlab.Gitlab(self._url, private_token=token, timeout=timeout_s, session=session, per_page=100,
                                 retry_transient_errors=False)  # fmt: skip
        self._write_interval_s = write_interval_s
        self._conflict_retries = conflict_retries
        self._pace = threading.Lock()
        self._last_write = 0.0
        self._own_username: str | None = None

    def __repr__(self) -> str:
        return f"GitLabClient({self._url!r})"  # never the token

    def close(self) -> None:
        self._gl.session.close()

    def _project(self, project_id: int) -> Project:
        return self._gl.projects.get(project_id, lazy=True)  # lazy: no GET of the project first

    def _before_write(self) -> None:
        with self._pace:
            wait = self._last_write + self._write_interval_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_write = time.monotonic()

    # ---- look-ups ------------------------------------------------------------------------------------------

    def own_username(self) -> str:
        """labgate's own user on the instance (its notes come back as Note Hooks, and are no one's commands)."""
        if self._own_username is None:
            self._gl.auth()
            assert self._gl.user is not None
            self._own_username = str(self._gl.user.username)
        return self._own_username

    def member(self, project_id: int, username: str) -> Member | None:
        """The user's effective membership of the project (inherited ones included), or None when they
        are not a member, are blocked, or their membership awaits a seat."""
        if not username:
            return None
        wanted = username.lower()
        # `query` matches names and usernames by substring ("bob" finds "bobby"): only the exact username counts.
        hits = self._project(project_id).members_all.list(query=username, get_all=True, **_READ)
        found = next((m for m in hits if str(m.username).lower() == wanted), None)
        if found is None:
            return None
        if found.attributes.get("state") != "active" or found.attributes.get("membership_state", "active") != "active":
            return None  # a blocked user, or a membership still awaiting a seat
        # Members carry no bot flag; the user does (GET /users/:id, `bot`).
        user = self._gl.users.get(int(found.id), **_READ)
        return Member(str(found.username), int(found.access_level), bool(user.attributes.get("bot", False)))

    def merge_request(self, project_id: int, iid: int) -> MergeRequestView:
        mr = self._project(project_id).mergerequests.get(iid, **_READ)
        return _view(mr.asdict())

    def note(self, project_id: int, iid: int, note_id: int) -> NoteView | None:
        """Note `note_id` of the merge request, None when it has no such note."""
        mr = self._project(project_id).mergerequests.get(iid, lazy=True)
        try:
            found = mr.notes.get(note_id, **_READ).asdict()
        except GitlabGetError as exc:
            if exc.response_code == 404:
                return None
            raise
        return NoteView(int(found["id"]), str(found["author"]["username"]), str(found["body"]), bool(found["system"]),
                        _api_time(str(found["created_at"])))  # fmt: skip

    def head_pushed_at(self, project_id: int, iid: int, head_sha: str) -> datetime | None:
        """When GitLab first made `head_sha` a head of the merge request (its diff versions), None if never."""
        mr = self._project(project_id).mergerequests.get(iid, lazy=True)
        versions = mr.diffs.list(get_all=True, **_READ)
        times = [_api_time(str(v.created_at)) for v in versions if str(v.head_commit_sha) == head_sha]
        return min(times, default=None)

    def branch_head(self, project_id: int, branch: str) -> str | None:
        """The commit the project's branch points at now, None when there is no such branch."""
        try:
            found = self._project(project_id).branches.get(branch, **_READ).asdict()
        except GitlabGetError as exc:
            if exc.response_code == 404:
                return None
            raise
        return str(found["commit"]["id"])

    def open_merge_requests(self, project_id: int) -> list[MergeRequestView]:
        """Every open merge request of the project, all pages."""
        found = self._project(project_id).mergerequests.list(state="opened", get_all=True, **_READ)
        return [_view(mr.asdict()) for mr in found]

    def statuses(self, project_id: int, sha: str, *, name: str | None = None) -> list[dict[str, Any]]:
        """The commit's latest statuses (one per name and ref), as GitLab shows them."""
        query: dict[str, Any] = {**_READ, **({"name": name} if name is not None else {})}
        commit = self._project(project_id).commits.get(sha, lazy=True)
        return [s.asdict() for s in commit.statuses.list(get_all=True, **query)]

    # ---- writes --------------------------------------------------------------------------------------------

    def create_note(self, project_id: int, iid: int, body: str) -> int:
        """A note on the merge request; its id."""
        self._before_write()
        mr = self._project(project_id).mergerequests.get(iid, lazy=True)
        return int(mr.notes.create({"body": body}, **_WRITE).id)

    def edit_note(self, project_id: int, iid: int, note_id: int, body: str) -> None:
        self._before_write()
        mr = self._project(project_id).mergerequests.get(iid, lazy=True)
        mr.notes.update(note_id, {"body": body}, **_WRITE)

    def commit_comment(self, project_id: int, sha: str, body: str) -> None:
        """A comment on the commit (POST .../repository/commits/:sha/comments)."""
        self._before_write()
        self._project(project_id).commits.get(sha, lazy=True).comments.create({"note": body}, **_WRITE)

    def set_status(self, project_id: int, sha: str, *, state: str, name: str, target_url: str | None,
                   description: str, ref: str | None = None) -> int:  # fmt: skip
        """Set the commit's status `name`; the status' id. The description is cut to GitLab's 255
        characters; a longer target_url is refused (a cut URL would lead somewhere else).

        A 409 (another update of this commit's statuses holds GitLab's lock) is tried again. Asking for the
        state the status is already in (a retry after a lost answer) gives that status' id: GitLab refuses
        the repeat with a 400 and keeps the status as it was, description included."""
        if target_url is not None and len(target_url) > MAX_STATUS_TEXT:
            raise ValueError(f"target_url is {len(target_url)} characters, GitLab takes {MAX_STATUS_TEXT}")
        data: dict[str, Any] = {"state": state, "name": name, "description": description[:MAX_STATUS_TEXT]}
        if target_url is not None:
            data["target_url"] = target_url
        if ref is not None:
            data["ref"] = ref
        commit = self._project(project_id).commits.get(sha, lazy=True)
        for attempt in range(self._conflict_retries + 1):
            self._before_write()
            try:
                return int(commit.statuses.create(data, **_WRITE).id)
            except GitlabError as exc:
                if exc.response_code == 400 and _SAME_STATE.search(str(exc.error_message)):
                    same = self._same_state_status(project_id, sha, name, ref, state)
                    if same is not None:
                        return same
                if exc.response_code != 409 or attempt == self._conflict_retries:
                    raise
            # 409: another update of a status of this commit holds GitLab's lock (held for milliseconds).
            time.sleep(random.uniform(0.05, 0.1 * 2**attempt))
        raise AssertionError("unreachable")

    def _same_state_status(self, project_id: int, sha: str, name: str, ref: str | None, state: str) -> int | None:
        for status in self.statuses(project_id, sha, name=name):
            if status.get("status") == state and (ref is None or status.get("ref") == ref):
                return int(status["id"])
        return None


def _view(data: dict[str, Any]) -> MergeRequestView:
    author = data["author"]
    return MergeRequestView(
        iid=int(data["iid"]), title=str(data["title"]), state=str(data["state"]), head_sha=str(data["sha"]),
        target_branch=str(data["target_branch"]), source_project_id=int(data["source_project_id"]),
        target_project_id=int(data["target_project_id"]), author=str(author["username"]), author_id=int(author["id"]),
        draft=bool(data.get("draft", data.get("work_in_progress", False))),
    )  # fmt: skip


def _api_time(text: str) -> datetime:
    """A time as GitLab's API writes it ("2026-12-07T12:00:00.000Z"), aware UTC."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
