"""FakeGitLab: GitLab's v4 REST API for the calls labgate makes, served on 127.0.0.1, recording every request.

Shapes and rules follow GitLab's documentation and code (doc/api/members.md, merge_requests.md, notes.md,
commits.md; lib/api/commit_statuses.rb and app/services/ci/create_commit_status_service.rb) and the objects
in ../shared/fixtures/gitlab/go-gitlab/: `PRIVATE-TOKEN` (or `Authorization: Bearer`) authenticates; a bad
token is 401 everywhere, no token reads public projects only; a project the user cannot see is 404; lists
are paged with X-Page/X-Next-Page/X-Total/X-Total-Pages and a Link header, 20 a page by default, 100 at most.

Commit statuses are jobs of an external pipeline, as GitLab keeps them: a POST finds the live (pending or
running) status of the same name, ref and user and moves it (a repeated state, or running back to pending,
is 400 "Cannot transition status via :run from :running ..."); with no live one it starts a new status and
marks the older ones of that name and ref retried. A finished status is never changed again. Without `ref`
GitLab takes the first branch holding the commit, and answers 404 when none does (a fork merge request's
head lives in the target project only under refs/merge-requests/IID/head).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.served import RequestLog, ServedFake

GUEST, PLANNER, REPORTER, DEVELOPER, MAINTAINER, OWNER = 10, 15, 20, 30, 40, 50
STATUS_STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
FINISHED = ("success", "failed", "canceled", "skipped")
MR_STATES = ("opened", "closed", "merged", "locked")
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_STATUS_TEXT = 255  # description, target_url, ref: "Must be 255 characters or fewer" (doc/api/commits.md)
CONFLICT_MESSAGE = "Another update to this commit status is in progress"
# The state machine events GitLab's CreateCommitStatusService fires for each requested state, and the
# states each event leaves from (CommitStatus' state_machine; `created` is a status not saved yet).
_EVENTS = {"pending": "enqueue", "running": "run", "success": "success", "failed": "drop", "canceled": "cancel",
           "skipped": "skip"}  # fmt: skip
_FROM = {"enqueue": ("created",), "run": ("pending",), "success": ("created", "pending", "running"),
         "drop": ("created", "pending", "running"), "cancel": ("created", "pending", "running"),
         "skip": ("created", "pending")}  # fmt: skip
_API = re.compile(r"/api/v4(?P<rest>/.*)")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, with the user its token named and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    json: Any
    user: str | None  # username of the token's user; None when anonymous or refused
    status: int


@dataclass
class _User:
    id: int
    username: str
    name: str
    bot: bool
    state: str  # active, blocked, deactivated, banned, blocked_pending_approval


@dataclass
class _Group:
    id: int
    full_path: str
    parent_id: int | None
    members: dict[int, tuple[int, str]] = field(default_factory=dict)  # user id -> (level, membership_state)


@dataclass
class _Project:
    id: int
    path_with_namespace: str
    group_id: int | None
    visibility: str  # public, internal, private
    forked_from_id: int | None
    default_branch: str
    created_at: str
    members: dict[int, tuple[int, str]] = field(default_factory=dict)
    refs: dict[str, set[str]] = field(default_factory=dict)  # sha -> refs holding it (branch names, refs/...)
    tips: dict[str, str] = field(default_factory=dict)  # branch -> the commit it points at


@dataclass
class _MergeRequest:
    id: int
    iid: int
    project_id: int
    source_project_id: int
    source_branch: str
    target_branch: str
    head_sha: str
    author_id: int
    title: str
    state: str
    draft: bool
    created_at: str
    updated_at: str
    # Each head the merge request has had, with when GitLab made it (its diff versions), oldest first.
    versions: list[tuple[int, str, str]] = field(default_factory=list)  # (version id, head sha, created_at)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    remaining: int
    after_effect: bool = False  # the request takes effect, only its answer is replaced


class _Answer(Exception):
    """An answer other than 2xx, with GitLab's body ({"message": ...} or {"error": ...})."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _message(status: int, text: str | None = None) -> _Answer:
    return _Answer(status, {"message": text or f"{status} {HTTPStatus(status).phrase}"})


def _not_found(what: str) -> _Answer:
    return _message(404, f"404 {what} Not Found")


class FakeGitLab(ServedFake):
    """GitLab, in memory. `with FakeGitLab() as gl:` serves it at `gl.base_url` (the API at `gl.api_url`)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clock = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
        self._next_ids: dict[str, int] = {}
        self._requests: RequestLog[RecordedRequest] = RequestLog()
        self._failures: list[_Failure] = []
        self._conflicts = 0
        self._users: dict[int, _User] = {}
        self._tokens: dict[str, int] = {}
        self._groups: dict[int, _Group] = {}
        self._projects: dict[int, _Project] = {}
        self._mrs: dict[tuple[int, int], _MergeRequest] = {}
        self._statuses: list[dict[str, Any]] = []  # every status ever created, oldest first
        self._notes: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._commit_comments: dict[tuple[int, str], list[dict[str, Any]]] = {}
        methods = ["GET", "POST", "PUT", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])
        self.serve(self.app, "FakeGitLab")

    # ---- running -------------------------------------------------------------------------------------------


    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/v4"

    # ---- seeding -------------------------------------------------------------------------------------------

    def _id(self, kind: str) -> int:
        self._next_ids[kind] = self._next_ids.get(kind, 0) + 1
        return self._next_ids[kind]

    def _stamp(self) -> str:
        self._clock += timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def add_user(self, username: str, *, bot: bool = False, state: str = "active", name: str | None = None) -> int:
        with self._lock:
            uid = self._id("user")
            self._users[uid] = _User(uid, username, name or username.replace("_", " ").title(), bot, state)
            return uid

    def add_token(self, username: str) -> str:
        """A new personal (or project/group access) token of the user."""
        with self._lock:
            token = f"glpat-{secrets.token_urlsafe(15)}"
            self._tokens[token] = self._user(username).id
            return token

    def add_group(self, full_path: str, *, parent: int | None = None) -> int:
        with self._lock:
            gid = self._id("namespace")
            self._groups[gid] = _Group(gid, full_path, parent)
            return gid

    def add_project(self, path_with_namespace: str, *, group: int | None = None, forked_from: int | None = None,
                    visibility: str = "private", default_branch: str = "main") -> int:  # fmt: skip
        """A project; the members of `group` and its ancestors are its members too (inherited)."""
        if visibility not in ("public", "internal", "private"):
            raise ValueError(f"visibility {visibility!r}")
        with self._lock:
            pid = self._id("project")
            self._projects[pid] = _Project(pid, path_with_namespace, group, visibility, forked_from, default_branch,
                                           self._stamp())  # fmt: skip
            return pid

    def add_member(self, username: str, level: int, *, project: int | None = None, group: int | None = None,
                   membership_state: str = "active") -> None:  # fmt: skip
        """A direct membership of a project or a group (`membership_state` "awaiting": waiting for a seat)."""
        if (project is None) == (group is None):
            raise ValueError("add_member needs exactly one of project= or group=")
        with self._lock:
            uid = self._user(username).id
            target = self._projects[project] if project is not None else self._groups[group]  # type: ignore[index]
            target.members[uid] = (level, membership_state)

    def push_commit(self, project: int, sha: str, ref: str | None = None) -> None:
        """The commit exists in the project, held by `ref` (a branch name, or a full ref; default branch)."""
        with self._lock:
            proj = self._projects[project]
            proj.refs.setdefault(sha, set()).add(ref or proj.default_branch)
            if not (ref or "").startswith("refs/"):
                proj.tips[ref or proj.default_branch] = sha  # a push to a branch moves its tip

    def add_note(self, project: int, iid: int, author: str, body: str, *, system: bool = False) -> int:
        """A note someone wrote on merge request `iid` (as a Note Hook then tells of it); its id."""
        with self._lock:
            mr = self._mrs[(project, iid)]
            now = self._stamp()
            note: dict[str, Any] = {"id": self._id("note"), "body": body, "author_id": self._user(author).id,
                                    "created_at": now, "updated_at": now, "noteable_id": mr.id,
                                    "noteable_iid": mr.iid, "project_id": project, "system": system}  # fmt: skip
            self._notes.setdefault((project, iid), []).append(note)
            return int(note["id"])

    def add_merge_request(self, project: int, iid: int, *, head_sha: str, author: str,
                          source_project: int | None = None, source_branch: str = "feature",
                          target_branch: str = "main", title: str = "", state: str = "opened",
                          draft: bool = False) -> None:  # fmt: skip
        """Add or replace (a new head after a push) merge request `iid` of `project`. The head exists in
        the source project on its branch and, as GitLab fetches it there, in the target project as
        refs/merge-requests/IID/head."""
        if state not in MR_STATES:
            raise ValueError(f"state {state!r}")
        with self._lock:
            source = project if source_project is None else source_project
            old = self._mrs.get((project, iid))
            now = self._stamp()
            self._mrs[(project, iid)] = _MergeRequest(
                old.id if old else self._id("merge_request"), iid, project, source, source_branch, target_branch,
                head_sha, self._user(author).id, title or f"Merge request {iid}", state, draft,
                old.created_at if old else now, now, list(old.versions) if old else [],
            )  # fmt: skip
            versions = self._mrs[(project, iid)].versions
            if not versions or versions[-1][1] != head_sha:  # a push makes a new diff version
                versions.append((self._id("version"), head_sha, now))
            self.push_commit(source, head_sha, source_branch)
            self.push_commit(project, head_sha, f"refs/merge-requests/{iid}/head")

    def _user(self, username: str) -> _User:
        for user in self._users.values():
            if user.username.lower() == username.lower():
                return user
        raise KeyError(f"unknown user {username!r}: add_user() it first")

    # ---- assertions ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._requests.all()

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests of this method whose path (with /api/v4) fully matches the regex."""
        return self._requests.matching(method, path_regex)

    def statuses_of(self, project: int, sha: str) -> list[dict[str, Any]]:
        """Every status of the commit in the project, oldest first, retried ones included (`retried`)."""
        with self._lock:
            return [{**self._status_json(s), "retried": s["retried"]} for s in self._statuses
                    if s["project_id"] == project and s["sha"] == sha]  # fmt: skip

    def notes_of(self, project: int, iid: int) -> list[dict[str, Any]]:
        with self._lock:
            return [self._note_json(n) for n in self._notes.get((project, iid), [])]

    def commit_comments_of(self, project: int, sha: str) -> list[dict[str, Any]]:
        with self._lock:
            return [self._comment_json(c) for c in self._commit_comments.get((project, sha), [])]

    # ---- failure injection ---------------------------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, *, body: Any = None,
                  headers: dict[str, str] | None = None, times: int = 1) -> None:  # fmt: skip
        """Answer the next `times` matching requests (method or "*", full match of the path with /api/v4)
        with this; `body` a dict (JSON), a str (text, like a proxy's page) or None (GitLab's message)."""
        if body is None:
            body = {"message": f"{status} {HTTPStatus(status).phrase}"}
        with self._lock:
            self._failures.append(_Failure(method.upper(), re.compile(path_regex), status, body, dict(headers or {}),
                                           times))  # fmt: skip

    def lose_answer_next(self, method: str, path_regex: str, status: int = 502, times: int = 1) -> None:
        """Carry out the next matching requests, then answer `status` as if the answer were lost on the way."""
        self.fail_next(method, path_regex, status, body="<html><body><h1>502 Bad Gateway</h1></body></html>",
                       times=times)  # fmt: skip
        with self._lock:
            self._failures[-1].after_effect = True

    def fail_statuses_with_409(self, times: int) -> None:
        """The next `times` status POSTs meet another update in progress: 409, nothing changed."""
        with self._lock:
            self._conflicts += times

    def _take_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method in ("*", method) and failure.pattern.fullmatch(path):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    # ---- HTTP plumbing -------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = {k: v[-1] for k, v in parse_qs(request.url.query, keep_blank_values=True).items()}
        multi = parse_qs(request.url.query, keep_blank_values=True)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {k: v[-1] for k, v in parse_qs(raw.decode(errors="replace")).items()}
        with self._lock:
            user: _User | None = None
            try:
                user = self._authenticate(headers)
                status, payload, extra = self._respond(request, user, query, multi, body)
            except _Answer as answer:
                status, payload, extra = answer.status, answer.body, {}
            self._requests.append(RecordedRequest(request.method, request.url.path, query, headers, body,
                                                  user.username if user else None, status))  # fmt: skip
        return _to_response(status, payload, extra)

    def _authenticate(self, headers: dict[str, str]) -> _User | None:
        token = headers.get("private-token")
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer":
            token = bearer.strip()
        if token is None:
            return None
        uid = self._tokens.get(token)
        if uid is None or self._users[uid].state != "active":
            raise _message(401)
        return self._users[uid]

    def _respond(self, request: Request, user: _User | None, query: dict[str, str], multi: dict[str, list[str]],
                 body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        method, path = request.method, request.url.path
        lost = None
        failure = self._take_failure(method, path)
        if failure is not None:
            if not failure.after_effect:
                return failure.status, failure.body, failure.headers
            lost = failure
        api = _API.fullmatch(path)
        if api is None:
            raise _message(404, "404 Not Found")
        try:
            answer = self._route(method, api["rest"], request, user, query, multi, body or {})
        except _Answer:
            if lost is None:
                raise
            answer = (0, None, {})
        except (KeyError, TypeError, ValueError, AttributeError) as bug:  # in the fake: say so, and record it
            answer = (500, {"message": f"FakeGitLab bug: {bug!r}"}, {})
        if lost is not None:
            return lost.status, lost.body, {}
        return answer

    def _route(self, method: str, rest: str, request: Request, user: _User | None, query: dict[str, str],
               multi: dict[str, list[str]], body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        if rest == "/user" and method == "GET":  # the token's own user (doc/api/users.md "Get the current user")
            if user is None:
                raise _message(401)
            return 200, self._full_user_json(user), {}
        if (m := re.fullmatch(r"/users/(\d+)", rest)) and method == "GET":
            found = self._users.get(int(m[1]))
            if found is None or user is None:
                raise _not_found("User") if user else _message(401)
            return 200, self._full_user_json(found), {}
        m = re.fullmatch(r"/projects/([^/]+)(/.*)?", rest)
        if m is None:
            raise _message(404, "404 Not Found")
        project = self._visible_project(m[1], user)
        sub = m[2] or ""
        if sub == "" and method == "GET":
            return 200, self._project_json(project), {}
        if sub == "/members/all" and method == "GET":
            return self._page(request, query, self._members_all(project, query, multi))
        if sub == "/merge_requests" and method == "GET":
            self._need_mr_access(project, user)
            mrs = [mr for (pid, _), mr in sorted(self._mrs.items(), key=lambda kv: -kv[1].id) if pid == project.id]
            if query.get("state", "all") != "all":
                mrs = [mr for mr in mrs if mr.state == query["state"]]
            return self._page(request, query, [self._mr_json(mr, single=False) for mr in mrs])
        if (m2 := re.fullmatch(r"/merge_requests/(\d+)/versions", sub)) and method == "GET":
            # doc/api/merge_requests.md "Get merge request diff versions": newest first.
            self._need_mr_access(project, user)
            mr = self._mrs.get((project.id, int(m2[1])))
            if mr is None:
                raise _message(404, "404 Not found")
            return self._page(request, query, [
                {"id": vid, "head_commit_sha": sha, "base_commit_sha": "0" * 40, "start_commit_sha": "0" * 40,
                 "created_at": at, "merge_request_id": mr.id, "state": "collected", "real_size": "1",
                 "patch_id_sha": None} for vid, sha, at in reversed(mr.versions)])  # fmt: skip
        if m2 := re.fullmatch(r"/merge_requests/(\d+)(/notes(?:/(\d+))?)?", sub):
            self._need_mr_access(project, user)
            mr = self._mrs.get((project.id, int(m2[1])))
            if mr is None:
                raise _message(404, "404 Not found")
            if m2[2] is None and method == "GET":
                return 200, self._mr_json(mr, single=True), {}
            if m2[2] is not None:
                return self._notes_call(method, mr, m2[3], user, request, query, body)
        if (m2 := re.fullmatch(r"/repository/branches/([^/]+)", sub)) and method == "GET":
            branch = unquote(m2[1])  # doc/api/branches.md "Get a single repository branch"
            if self._level(project, user) < REPORTER and project.visibility == "private" or branch not in project.tips:
                raise _not_found("Branch")
            return 200, {"name": branch, "merged": False, "protected": branch == project.default_branch,
                         "default": branch == project.default_branch, "developers_can_push": False,
                         "developers_can_merge": False, "can_push": False,
                         "web_url": f"{self.base_url}/{project.path_with_namespace}/-/tree/{branch}",
                         "commit": {"id": project.tips[branch], "short_id": project.tips[branch][:8]}}, {}  # fmt: skip
        if (m2 := re.fullmatch(r"/repository/commits/([^/]+)/comments", sub)) and method == "POST":
            return self._create_commit_comment(project, m2[1], user, body)
        if (m2 := re.fullmatch(r"/repository/commits/([^/]+)/statuses", sub)) and method == "GET":
            return self._list_statuses(request, project, m2[1], user, query)
        if (m2 := re.fullmatch(r"/statuses/([^/]+)", sub)) and method == "POST":
            return self._create_status(project, m2[1], user, body)
        raise _message(404, "404 Not Found")

    # ---- who may do what -----------------------------------------------------------------------------------

    def _level(self, project: _Project, user: _User | None) -> int:
        """The user's effective level on the project: the highest of its direct and inherited memberships
        (one still awaiting a seat gives nothing)."""
        if user is None:
            return 0
        levels = [m[user.id][0] for m in self._member_sources(project) if m.get(user.id, (0, ""))[1] == "active"]
        return max(levels, default=0)

    def _member_sources(self, project: _Project) -> list[dict[int, tuple[int, str]]]:
        """The project's direct members, then each ancestor group's, nearest first."""
        sources = [project.members]
        group_id = project.group_id
        while group_id is not None:
            sources.append(self._groups[group_id].members)
            group_id = self._groups[group_id].parent_id
        return sources

    def _visible_project(self, raw_id: str, user: _User | None) -> _Project:
        # labgate names projects by id; a URL-encoded path is not looked up here.
        project = self._projects.get(int(raw_id)) if raw_id.isdigit() else None
        if project is None:
            raise _not_found("Project")
        if project.visibility == "public" or (project.visibility == "internal" and user is not None):
            return project
        if self._level(project, user) >= GUEST:
            return project
        raise _not_found("Project")  # GitLab hides a private project's existence from outsiders

    def _need_mr_access(self, project: _Project, user: _User | None) -> None:
        # permissions.md: "See a list of merge requests" from Reporter in private projects; in public and
        # internal ones everyone who sees the project sees its merge requests.
        if project.visibility == "private" and self._level(project, user) < REPORTER:
            raise _message(403)

    @staticmethod
    def _need_user(user: _User | None) -> _User:
        if user is None:
            raise _message(401)
        return user

    # ---- members -------------------------------------------------------------------------------------------

    def _members_all(self, project: _Project, query: dict[str, str], multi: dict[str, list[str]]) -> list[Any]:
        best: dict[int, tuple[int, str]] = {}
        for members in self._member_sources(project):
            for uid, (level, state) in members.items():
                if uid not in best or level > best[uid][0]:
                    best[uid] = (level, state)  # "only its membership with the highest access_level is returned"
        wanted = (query.get("query") or "").lower()
        ids = {int(i) for key in ("user_ids", "user_ids[]") for i in multi.get(key, []) if i.isdigit()}
        found = []
        for uid in sorted(best):
            user = self._users[uid]
            # `query` searches name and username by substring, as GitLab's fuzzy member search does.
            if wanted and wanted not in user.username.lower() and wanted not in user.name.lower():
                continue
            if ids and uid not in ids:
                continue
            level, state = best[uid]
            found.append({**self._user_json(user), "access_level": level, "created_at": "2026-01-01T00:00:00.000Z",
                          "created_by": None, "expires_at": None, "group_saml_identity": None,
                          "membership_state": state})  # fmt: skip
        return found

    # ---- notes ---------------------------------------------------------------------------------------------

    def _notes_call(self, method: str, mr: _MergeRequest, note_id: str | None, user: _User | None,
                    request: Request, query: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        notes = self._notes.setdefault((mr.project_id, mr.iid), [])
        if note_id is None and method == "GET":
            return self._page(request, query, [self._note_json(n) for n in notes])
        if note_id is None and method == "POST":
            author = self._need_user(user)
            text = body.get("body") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text:
                raise _Answer(400, {"error": "body is missing"})
            now = self._stamp()
            note: dict[str, Any] = {"id": self._id("note"), "body": text, "author_id": author.id, "created_at": now,
                                    "updated_at": now, "noteable_id": mr.id, "noteable_iid": mr.iid,
                                    "project_id": mr.project_id}  # fmt: skip
            notes.append(note)
            return 201, self._note_json(note), {}
        found = next((n for n in notes if note_id is not None and n["id"] == int(note_id)), None)
        if found is None:
            raise _not_found("Note")
        if method == "GET":
            return 200, self._note_json(found), {}
        if method == "PUT":
            editor = self._need_user(user)
            if found["author_id"] != editor.id:
                raise _message(403)  # only a note's author may edit it
            text = body.get("body") if isinstance(body, dict) else None
            if not isinstance(text, str) or not text:
                raise _Answer(400, {"error": "body is missing"})
            found.update(body=text, updated_at=self._stamp())
            return 200, self._note_json(found), {}
        raise _message(405, "405 Method Not Allowed")

    def _create_commit_comment(self, project: _Project, sha: str, user: _User | None,
                               body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        author = self._need_user(user)
        if project.visibility == "private" and self._level(project, author) < REPORTER:
            raise _message(403)  # a Guest cannot read a private project's code
        if sha not in project.refs:
            raise _not_found("Commit")
        text = body.get("note") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise _Answer(400, {"error": "note is missing"})
        comment = {"note": text, "author_id": author.id, "created_at": self._stamp()}
        self._commit_comments.setdefault((project.id, sha), []).append(comment)
        return 201, self._comment_json(comment), {}

    # ---- commit statuses -----------------------------------------------------------------------------------

    def _create_status(self, project: _Project, sha: str, user: _User | None,
                       body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        author = self._need_user(user)
        if self._level(project, author) < DEVELOPER:
            raise _message(403)  # create_commit_status: Developer and above, on this project
        params = body if isinstance(body, dict) else {}
        state = params.get("state")
        if state is None:
            raise _Answer(400, {"error": "state is missing"})
        if state not in STATUS_STATES:
            raise _Answer(400, {"error": "state does not have a valid value"})
        if self._conflicts > 0:
            self._conflicts -= 1
            raise _message(409, CONFLICT_MESSAGE)
        if sha not in project.refs:
            raise _not_found("Commit")
        ref = params.get("ref")
        if ref is None:
            branches = sorted(r for r in project.refs[sha] if not r.startswith("refs/"))
            if not branches:
                raise _not_found("References for commit")
            ref = branches[0]
        errors: dict[str, list[str]] = {}
        for key in ("description", "target_url", "ref"):
            value = ref if key == "ref" else params.get(key)
            if value is not None and len(str(value)) > MAX_STATUS_TEXT:
                errors[key] = [f"is too long (maximum is {MAX_STATUS_TEXT} characters)"]
        target_url = params.get("target_url")
        if target_url is not None and urlsplit(str(target_url)).scheme not in ("http", "https"):
            errors.setdefault("target_url", []).append("is blocked: Only allowed schemes are http, https")
        if errors:
            raise _Answer(400, {"message": errors})
        name = params.get("name") or params.get("context") or "default"
        live = next((s for s in self._statuses if s["project_id"] == project.id and s["sha"] == sha
                     and s["name"] == name and s["ref"] == ref and s["user_id"] == author.id
                     and s["status"] in ("pending", "running")), None)  # fmt: skip
        current = live["status"] if live else "created"
        event = _EVENTS[state]
        if state == "running" and current == "created":
            current = "pending"  # GitLab enqueues a new status before it runs it
        if current not in _FROM[event]:
            raise _Answer(400, {"message": f"Cannot transition status via :{event} from :{current} "
                                           f'(Reason(s): Status cannot transition via "{event}")'})  # fmt: skip
        now = self._stamp()
        if live is None:
            for older in self._statuses:
                if (older["project_id"], older["sha"], older["name"], older["ref"]) == (project.id, sha, name, ref):
                    older["retried"] = True
            live = {"id": self._id("job"), "project_id": project.id, "sha": sha, "ref": ref, "name": name,
                    "user_id": author.id, "created_at": now, "started_at": None, "finished_at": None,
                    "description": None, "target_url": None, "coverage": None, "retried": False,
                    "pipeline_id": self._pipeline_id(project.id, sha, ref)}  # fmt: skip
            self._statuses.append(live)
        for key in ("description", "target_url", "coverage"):
            if key in params:
                live[key] = params[key]
        live["status"] = state
        if state == "running":
            live["started_at"] = now
        if state in FINISHED:
            live["finished_at"] = now
        return 201, self._status_json(live), {}

    def _pipeline_id(self, project_id: int, sha: str, ref: str) -> int:
        for status in self._statuses:
            if (status["project_id"], status["sha"], status["ref"]) == (project_id, sha, ref):
                return int(status["pipeline_id"])
        return self._id("pipeline")

    def _list_statuses(self, request: Request, project: _Project, sha: str, user: _User | None,
                       query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        self._need_user(user)
        if project.visibility == "private" and self._level(project, user) < REPORTER:
            raise _message(403)
        if sha not in project.refs:
            raise _not_found("Commit")
        found = [s for s in self._statuses if s["project_id"] == project.id and s["sha"] == sha]
        if query.get("all", "false").lower() not in ("true", "1"):
            found = [s for s in found if not s["retried"]]
        for key in ("ref", "name"):
            if query.get(key):
                found = [s for s in found if s[key] == query[key]]
        return self._page(request, query, [self._status_json(s) for s in found])

    # ---- pages ---------------------------------------------------------------------------------------------

    def _page(self, request: Request, query: dict[str, str], items: list[Any]) -> tuple[int, Any, dict[str, str]]:
        """GitLab's offset pagination: X-* headers and a Link header (first, prev, next, last)."""
        try:
            per_page = min(max(int(query.get("per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
        except ValueError:
            per_page = DEFAULT_PER_PAGE
        try:
            page = max(int(query.get("page", 1)), 1)
        except ValueError:
            page = 1
        total_pages = max(1, -(-len(items) // per_page))
        url = str(request.url)
        links = []
        if page > 1:
            links.append(f'<{_with_page(url, page - 1, per_page)}>; rel="prev"')
        if page < total_pages:
            links.append(f'<{_with_page(url, page + 1, per_page)}>; rel="next"')
        links += [f'<{_with_page(url, 1, per_page)}>; rel="first"',
                  f'<{_with_page(url, total_pages, per_page)}>; rel="last"']  # fmt: skip
        headers = {"X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(items)),
                   "X-Total-Pages": str(total_pages), "X-Next-Page": str(page + 1) if page < total_pages else "",
                   "X-Prev-Page": str(page - 1) if page > 1 else "", "Link": ", ".join(links)}  # fmt: skip
        return 200, items[(page - 1) * per_page : page * per_page], headers

    # ---- JSON shapes ---------------------------------------------------------------------------------------

    def _user_json(self, user: _User) -> dict[str, Any]:
        """UserBasic, as members, authors and notes carry it."""
        return {"id": user.id, "username": user.username, "name": user.name, "state": user.state, "locked": False,
                "avatar_url": f"https://secure.gravatar.com/avatar/{user.id:032x}?s=80&d=identicon",
                "web_url": f"{self.base_url}/{user.username}"}  # fmt: skip

    def _full_user_json(self, user: _User) -> dict[str, Any]:
        """GET /users/:id (API::Entities::User): UserBasic and the profile, with `bot`."""
        return {**self._user_json(user), "created_at": "2026-01-01T00:00:00.000Z", "bio": "", "location": "",
                "public_email": None, "skype": "", "linkedin": "", "twitter": "", "discord": "", "website_url": "",
                "organization": "", "job_title": "", "pronouns": None, "bot": user.bot, "work_information": None,
                "local_time": None}  # fmt: skip

    def _namespace_json(self, project: _Project) -> dict[str, Any]:
        path = project.path_with_namespace.rsplit("/", 1)[0]
        group = self._groups.get(project.group_id) if project.group_id is not None else None
        return {"id": group.id if group else 0, "name": path.rsplit("/", 1)[-1], "path": path.rsplit("/", 1)[-1],
                "kind": "group" if group else "user", "full_path": path,
                "parent_id": group.parent_id if group else None, "avatar_url": None,
                "web_url": f"{self.base_url}/{'groups/' if group else ''}{path}"}  # fmt: skip

    def _project_json(self, project: _Project) -> dict[str, Any]:
        web = f"{self.base_url}/{project.path_with_namespace}"
        name = project.path_with_namespace.rsplit("/", 1)[-1]
        host = urlsplit(self.base_url).hostname
        data: dict[str, Any] = {
            "id": project.id, "description": None, "name": name, "name_with_namespace": name, "path": name,
            "path_with_namespace": project.path_with_namespace, "created_at": project.created_at,
            "default_branch": project.default_branch, "tag_list": [], "topics": [],
            "ssh_url_to_repo": f"git@{host}:{project.path_with_namespace}.git",
            "http_url_to_repo": f"{web}.git", "web_url": web, "readme_url": None, "avatar_url": None,
            "forks_count": sum(p.forked_from_id == project.id for p in self._projects.values()),
            "star_count": 0, "last_activity_at": project.created_at, "namespace": self._namespace_json(project),
            "visibility": project.visibility, "archived": False, "empty_repo": not project.refs,
        }  # fmt: skip
        if project.forked_from_id is not None:
            parent = self._projects[project.forked_from_id]
            data["forked_from_project"] = {"id": parent.id, "path_with_namespace": parent.path_with_namespace,
                                           "web_url": f"{self.base_url}/{parent.path_with_namespace}",
                                           "name": parent.path_with_namespace.rsplit("/", 1)[-1]}  # fmt: skip
        return data

    def _mr_json(self, mr: _MergeRequest, *, single: bool) -> dict[str, Any]:
        target = self._projects[mr.project_id]
        author = self._users[mr.author_id]
        web = f"{self.base_url}/{target.path_with_namespace}/-/merge_requests/{mr.iid}"
        data: dict[str, Any] = {
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title, "description": "",
            "state": mr.state, "created_at": mr.created_at, "updated_at": mr.updated_at, "merged_by": None,
            "merge_user": None, "merged_at": None, "closed_by": None, "closed_at": None,
            "target_branch": mr.target_branch, "source_branch": mr.source_branch, "user_notes_count": 0,
            "upvotes": 0, "downvotes": 0, "author": {**self._user_json(author), "bot": author.bot},
            "assignees": [], "assignee": None, "reviewers": [], "source_project_id": mr.source_project_id,
            "target_project_id": mr.project_id, "labels": [], "draft": mr.draft, "work_in_progress": mr.draft,
            "milestone": None, "merge_when_pipeline_succeeds": False, "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable", "sha": mr.head_sha, "merge_commit_sha": None,
            "squash_commit_sha": None, "discussion_locked": None, "should_remove_source_branch": None,
            "force_remove_source_branch": False, "reference": f"!{mr.iid}",
            "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}",
                           "full": f"{target.path_with_namespace}!{mr.iid}"},
            "web_url": web, "time_stats": {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None,
                                           "human_total_time_spent": None},
            "squash": False, "squash_on_merge": False, "task_completion_status": {"count": 0, "completed_count": 0},
            "has_conflicts": False, "blocking_discussions_resolved": True,
        }  # fmt: skip
        if single:
            data.update({"subscribed": False, "changes_count": "1", "latest_build_started_at": None,
                         "latest_build_finished_at": None, "first_deployed_to_production_at": None,
                         "pipeline": None, "head_pipeline": None,
                         "diff_refs": {"base_sha": None, "head_sha": mr.head_sha, "start_sha": None},
                         "merge_error": None, "first_contribution": False, "user": {"can_merge": False}})  # fmt: skip
        return data

    def _note_json(self, note: dict[str, Any]) -> dict[str, Any]:
        return {"id": note["id"], "type": None, "body": note["body"], "attachment": None,
                "author": self._user_json(self._users[note["author_id"]]), "created_at": note["created_at"],
                "updated_at": note["updated_at"], "system": note.get("system", False),
                "noteable_id": note["noteable_id"],
                "noteable_type": "MergeRequest", "project_id": note["project_id"], "resolvable": False,
                "confidential": False, "internal": False, "imported": False, "imported_from": "none",
                "noteable_iid": note["noteable_iid"], "commands_changes": {}}  # fmt: skip

    def _comment_json(self, comment: dict[str, Any]) -> dict[str, Any]:
        return {"note": comment["note"], "path": None, "line": None, "line_type": None,
                "author": self._user_json(self._users[comment["author_id"]]),
                "created_at": comment["created_at"]}  # fmt: skip

    def _status_json(self, status: dict[str, Any]) -> dict[str, Any]:
        return {"id": status["id"], "sha": status["sha"], "ref": status["ref"], "status": status["status"],
                "name": status["name"], "target_url": status["target_url"], "description": status["description"],
                "created_at": status["created_at"], "started_at": status["started_at"],
                "finished_at": status["finished_at"], "allow_failure": False, "coverage": status["coverage"],
                "pipeline_id": status["pipeline_id"],
                "author": self._user_json(self._users[status["user_id"]])}  # fmt: skip


def _with_page(url: str, page: int, per_page: int) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    fields = parse_qs(query, keep_blank_values=True)
    fields["page"], fields["per_page"] = [str(page)], [str(per_page)]
    return urlunsplit((scheme, netloc, path, urlencode(sorted(fields.items()), doseq=True), fragment))


def _to_response(status: int, payload: Any, headers: dict[str, str]) -> Response:
    if isinstance(payload, str):
        return Response(payload, status_code=status, headers=headers, media_type="text/html")
    return Response(json.dumps(payload), status_code=status, headers=headers, media_type="application/json")
