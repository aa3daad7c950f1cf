"""FakePatchwork: Patchwork's REST API for the calls labgate makes, served on 127.0.0.1, recording every request.

Shapes follow Patchwork's OpenAPI schema (../shared/fixtures/patchwork/schemas/) and the answers a real
Patchwork 3.3 gave (../shared/fixtures/patchwork/responses/, notes in ../shared/reference/patchwork-notes.md):
dates are naive server-local time (the server runs with USE_TZ=False), `since` is inclusive and `before`
exclusive, events come newest first, pages are DRF's with a `Link` header whose URLs carry the query
sorted by name, and a check may be posted only by a project maintainer (or the patch's delegate or its
submitter's user) with `Authorization: Token KEY`; anyone else, anonymous included, gets 403.

The server clock is an aware instant shown in the server's zone (`timezone`), so moving it across a
DST change makes the naive dates jump back an hour, as they do on a real server.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.served import RequestLog, ServedFake

CHECK_STATES = ("pending", "success", "warning", "fail")
EVENT_CATEGORIES = (
    "cover-created", "patch-created", "patch-completed", "patch-state-changed", "patch-relation-changed",
    "patch-delegated", "check-created", "series-created", "series-completed", "cover-comment-created",
    "patch-comment-created",
)  # fmt: skip
DEFAULT_PER_PAGE = 30  # REST_RESULTS_PER_PAGE
MAX_PER_PAGE = 250  # MAX_REST_RESULTS_PER_PAGE
NO_PERMISSION = "You do not have permission to perform this action."
BAD_SLUG = 'Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.'
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_API = re.compile(r"/api/(?:(?P<version>1\.[0-4])/)?(?P<rest>.*)")
_NAIVE_ISO = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?")


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received, with the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: Any  # JSON, or the form's fields
    server_date: str  # the server's naive clock when it answered
    status: int


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    remaining: int
    headers: dict[str, str] = field(default_factory=dict)
    skip: int = 0  # matching requests let through first
    after_effect: bool = False  # the request takes effect, only its answer is replaced
    hook: Callable[[FakePatchwork], object] | None = None  # run before answering, then answer normally


@dataclass
class _Project:
    id: int
    link_name: str
    name: str
    list_id: str
    list_email: str
    maintainers: set[int] = field(default_factory=set)


@dataclass
class _Patch:
    id: int
    project_id: int
    series_id: int
    msgid: str
    name: str
    date: str
    submitter_id: int
    content: str
    diff: str
    delegate_id: int | None = None
    state: str = "new"


@dataclass
class _Series:
    id: int
    project_id: int
    name: str
    date: str
    version: int
    submitter_id: int
    total: int
    patch_ids: list[int]
    mbox: bytes
    cover: dict[str, Any] | None  # {"id", "msgid", "name", "date"}


class _Answer(Exception):
    """An answer other than 2xx, with DRF's body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _detail(status: int, message: str) -> _Answer:
    return _Answer(status, {"detail": message})


class FakePatchwork(ServedFake):
    """Patchwork, in memory. `with FakePatchwork() as pw:` serves it at `pw.base_url`."""

    def __init__(self, timezone: str = "Australia/Sydney", now: datetime | None = None, tick_s: float = 0.001) -> None:
        self.zone = ZoneInfo(timezone)
        self._utc = now or datetime(2026, 11, 22, 8, 45, tzinfo=UTC)
        self.tick = timedelta(seconds=tick_s)  # each recorded thing moves the clock this much: distinct dates
        self._lock = threading.RLock()
        self._ids: dict[str, int] = {}
        self._requests: RequestLog[RecordedRequest] = RequestLog()
        self._failures: list[_Failure] = []
        self._projects: dict[int, _Project] = {}
        self._users: dict[int, dict[str, str]] = {}  # id -> {username, email}
        self._tokens: dict[str, int] = {}  # key -> user id
        self._people: dict[int, dict[str, Any]] = {}  # id -> {name, email, user_id}
        self._series: dict[int, _Series] = {}
        self._patches: dict[int, _Patch] = {}
        self._checks: dict[int, list[dict[str, Any]]] = {}  # patch id -> checks, oldest first
        self._events: list[dict[str, Any]] = []  # stored with project id and actor id, rendered per request
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])])
        self.serve(self.app, "FakePatchwork")

    # ---- running -------------------------------------------------------------------------------------------


    # ---- the server's clock --------------------------------------------------------------------------------

    def now(self) -> str:
        """The server's clock as Patchwork writes dates: naive local time, microseconds."""
        with self._lock:
            return self._utc.astimezone(self.zone).replace(tzinfo=None).isoformat(timespec="microseconds")

    def set_clock(self, instant: datetime) -> None:
        """Put the server's clock at an aware instant (shown in the server's zone)."""
        if instant.tzinfo is None:
            raise ValueError("set_clock needs an aware datetime: the server's zone turns it into naive dates")
        with self._lock:
            self._utc = instant.astimezone(UTC)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._utc += timedelta(seconds=seconds)

    def _stamp(self) -> str:
        date = self.now()
        self._utc += self.tick
        return date

    # ---- seeding -------------------------------------------------------------------------------------------

    def _next_id(self, kind: str) -> int:
        self._ids[kind] = self._ids.get(kind, 0) + 1
        return self._ids[kind]

    def add_project(self, link_name: str, name: str | None = None, list_id: str | None = None) -> int:
        with self._lock:
            pid = self._next_id("project")
            list_id = list_id or f"{link_name}.vger.kernel.org"
            self._projects[pid] = _Project(pid, link_name, name or link_name, list_id,
                                           list_id.replace(".", "@", 1))  # fmt: skip
            return pid

    def add_user(self, username: str, email: str | None = None) -> int:
        with self._lock:
            uid = self._next_id("user")
            self._users[uid] = {"username": username, "email": email or f"{username}@example.com"}
            return uid

    def add_token(self, username: str) -> str:
        """A new API token of the user (Patchwork keeps one per user; here any number)."""
        with self._lock:
            key = secrets.token_hex(20)
            self._tokens[key] = self._user_id(username)
            return key

    def add_maintainer(self, project: str, username: str) -> None:
        with self._lock:
            self._project(project).maintainers.add(self._user_id(username))

    def add_series(self, project: str, name: str, patches: list[str], *, version: int = 1,
                   submitter: tuple[str, str] = ("Ada Lovelace", "ada@example.org"), cover: bool = True,
                   mbox: bytes | None = None, submitter_user: str | None = None,
                   complete: bool = True) -> int:  # fmt: skip
        """A series of patches named `patches` (subjects), with the events parsemail makes for it:
        series-created, cover-created, patch-created and patch-completed each, series-completed last
        (when `complete`). `mbox` is what /series/ID/mbox/ serves; by default one made of the patches."""
        with self._lock:
            proj = self._project(project)
            person = self._person(*submitter, self._user_id(submitter_user) if submitter_user else None)
            sid = self._next_id("series")
            token = secrets.token_hex(4)
            cover_json = None
            date = self.now().split(".")[0]  # mail dates have whole seconds
            series = _Series(sid, proj.id, name, date, version, person, len(patches), [], b"", None)
            self._series[sid] = series
            self._event("series-created", proj.id, {"series": ("series", sid)})
            if cover:
                cover_json = {"id": self._next_id("cover"), "msgid": f"<{date[:10]}-{token}-0@example.org>",
                              "name": f"[{self._prefix(version, 0, len(patches))}] {name}", "date": date}  # fmt: skip
                series.cover = cover_json
                self._event("cover-created", proj.id, {"cover": ("cover", sid)})
            for number, subject in enumerate(patches, 1):
                patch = _Patch(self._next_id("patch"), proj.id, sid, f"<{date[:10]}-{token}-{number}@example.org>",
                               f"[{self._prefix(version, number, len(patches))}] {subject}", date, person,
                               f"{subject}\n\nSigned-off-by: {submitter[0]} <{submitter[1]}>\n",
                               f"--- a/f{number}.txt\n+++ b/f{number}.txt\n@@ -0,0 +1 @@\n+{number}\n")  # fmt: skip
                self._patches[patch.id] = patch
                series.patch_ids.append(patch.id)
                self._event("patch-created", proj.id, {"patch": ("patch", patch.id)})
                self._event("patch-completed", proj.id, {"patch": ("patch", patch.id), "series": ("series", sid)})
            series.mbox = mbox if mbox is not None else self._render_mbox(series)
            if complete:
                self._event("series-completed", proj.id, {"series": ("series", sid)})
            return sid

    def complete_series(self, series_id: int) -> None:
        """The series' last patch arrived: series-completed now."""
        with self._lock:
            self._event("series-completed", self._series[series_id].project_id, {"series": ("series", series_id)})

    def delegate(self, patch_id: int, to: str | None, by: str | None = None) -> None:
        """Set the patch's delegate (None: nobody), as `by` does in the web UI: a patch-delegated event."""
        with self._lock:
            patch = self._patches[patch_id]
            previous = patch.delegate_id
            patch.delegate_id = self._user_id(to) if to else None
            payload = {"patch": ("patch", patch_id), "previous_delegate": ("user", previous),
                       "current_delegate": ("user", patch.delegate_id)}  # fmt: skip
            self._event("patch-delegated", patch.project_id, payload, self._user_id(by) if by else None)

    def series_patches(self, series_id: int) -> list[int]:
        with self._lock:
            return list(self._series[series_id].patch_ids)

    # ---- assertions ----------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self._requests.all()

    def requests_to(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Recorded requests of this method whose path fully matches the regex."""
        return self._requests.matching(method, path_regex)

    def checks(self, patch_id: int) -> list[dict[str, Any]]:
        """The checks on the patch, oldest first, as GET .../checks/ shows them."""
        with self._lock:
            return [self._check_json(patch_id, c, "1.4") for c in self._checks.get(patch_id, [])]

    def events(self) -> list[dict[str, Any]]:
        """Every event, newest first, as GET /api/events/ shows them."""
        with self._lock:
            return [self._event_json(e, "1.4") for e in self._ordered_events()]

    # ---- failure injection ---------------------------------------------------------------------------------

    def fail_next(self, method: str, path_regex: str, status: int, body: Any = None, times: int = 1,
                  headers: dict[str, str] | None = None, skip: int = 0) -> None:  # fmt: skip
        """Answer the next `times` matching requests (method or "*", full path match) with this, after
        letting `skip` of them through (skip=1 on the events path: page 2 fails).
        `body`: a dict (JSON), a str (text, like a proxy's error page), or None (DRF's detail shape)."""
        if body is None:
            body = {"detail": "A server error occurred."}
        with self._lock:
            failure = _Failure(method.upper(), re.compile(path_regex), status, body, times, dict(headers or {}), skip)
            self._failures.append(failure)

    def lose_answer_next(self, method: str, path_regex: str, status: int = 502, times: int = 1) -> None:
        """Carry out the next matching requests, then answer `status` as if the answer were lost on the way."""
        self.fail_next(method, path_regex, status, "<html>Bad gateway</html>", times)
        with self._lock:
            self._failures[-1].after_effect = True

    def before_next(self, method: str, path_regex: str, hook: Callable[[FakePatchwork], object],
                    times: int = 1, skip: int = 0) -> None:  # fmt: skip
        """Run `hook(self)` before answering the next matching requests, after `skip` of them
        (skip=1 on the events path: events arrive between page 1 and page 2)."""
        with self._lock:
            self._failures.append(
                _Failure(method.upper(), re.compile(path_regex), 0, None, times, hook=hook, skip=skip)
            )

    def _matching_failure(self, method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method in ("*", method) and failure.pattern.fullmatch(path):
                if failure.skip > 0:
                    failure.skip -= 1
                    continue
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    # ---- HTTP plumbing -------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = dict(request.query_params)
        body = _parse_body(headers.get("content-type", ""), raw)
        with self._lock:
            date = self.now()
            status, payload, extra = self._respond(request, headers, query, body)
            recorded = None if isinstance(body, _Answer) else body
            self._requests.append(
                RecordedRequest(request.method, request.url.path, query, headers, recorded, date, status)
            )
        return _to_response(status, payload, extra)

    def _respond(self, request: Request, headers: dict[str, str], query: dict[str, str],
                 body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        method, path = request.method, request.url.path
        lost = None
        while (failure := self._matching_failure(method, path)) is not None:
            if failure.hook is not None:
                failure.hook(self)
                continue
            if failure.after_effect:
                lost = failure
                break
            return failure.status, failure.body, failure.headers
        try:
            if isinstance(body, _Answer):
                raise body
            status, payload, extra = self._route(method, path, request, headers, query, body)
        except _Answer as answer:
            status, payload, extra = answer.status, answer.body, {}
        except (KeyError, TypeError, ValueError, AttributeError) as bug:  # in the fake: say so, and record it
            status, payload, extra = 500, {"detail": f"FakePatchwork bug: {bug!r}"}, {}
        if lost is not None:
            return lost.status, lost.body, {}
        return status, payload, extra

    def _route(self, method: str, path: str, request: Request, headers: dict[str, str], query: dict[str, str],
               body: Any) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        if match := re.fullmatch(r"/series/(\d+)/mbox/", path):
            series = self._series.get(int(match[1]))
            if series is None or method != "GET":
                raise _Answer(404, "<h1>Not Found</h1>")
            return 200, series.mbox, {"Content-Disposition": f"attachment; filename={_slug(series.name)}.patch"}
        api = _API.fullmatch(path)
        if api is None:
            raise _Answer(404, "<h1>Not Found</h1>")
        version, rest = api["version"] or "", api["rest"]
        user = self._authenticate(headers)
        if rest == "events/" and method == "GET":
            return self._list_events(request, query, version)
        if (match := re.fullmatch(r"series/(\d+)/", rest)) and method == "GET":
            return 200, self._series_json(self._get(self._series, match[1], "Series"), version), {}
        if (match := re.fullmatch(r"patches/(\d+)/", rest)) and method == "GET":
            return 200, self._patch_json(self._get(self._patches, match[1], "Patch"), version), {}
        if match := re.fullmatch(r"patches/(\d+)/checks/", rest):
            patch = self._get(self._patches, match[1], "Patch")
            if method == "GET":
                return 200, [self._check_json(patch.id, c, version) for c in self._checks.get(patch.id, [])], {}
            if method == "POST":
                return self._create_check(patch, user, body, version)
            raise _detail(405, f'Method "{method}" not allowed.')
        raise _detail(404, "Not found.")

    def _authenticate(self, headers: dict[str, str]) -> int | None:
        # TokenAuthentication reads only the "Token" keyword: any other scheme is anonymous (then 403).
        keyword, _, key = headers.get("authorization", "").partition(" ")
        if keyword != "Token":
            return None
        key = key.strip()
        if not key or " " in key:
            raise _detail(403, "Invalid token header. No credentials provided.")
        if key not in self._tokens:
            raise _detail(403, "Invalid token.")
        return self._tokens[key]

    def _get(self, table: dict[int, Any], raw_id: str, model: str) -> Any:
        found = table.get(int(raw_id))
        if found is None:
            raise _detail(404, f"No {model} matches the given query.")
        return found

    # ---- events --------------------------------------------------------------------------------------------

    def _event(self, category: str, project_id: int, payload: dict[str, tuple[str, int | None]],
               actor_id: int | None = None) -> None:  # fmt: skip
        self._events.append({"id": self._next_id("event"), "category": category, "project_id": project_id,
                             "date": self._stamp(), "actor_id": actor_id, "payload": payload})  # fmt: skip

    def _ordered_events(self, ascending: bool = False) -> list[dict[str, Any]]:
        # Ordered by date only, as Patchwork's ordering is; Python's sort is stable, so equal dates keep
        # insertion order here (a database gives no such promise).
        return sorted(self._events, key=lambda e: e["date"], reverse=not ascending)

    def _list_events(self, request: Request, query: dict[str, str], version: str) -> tuple[int, Any, dict[str, str]]:
        errors: dict[str, list[str]] = {}
        since, before = (_naive_filter(query, name, errors) for name in ("since", "before"))
        category = query.get("category")
        if category and category not in EVENT_CATEGORIES:
            errors["category"] = [f"Select a valid choice. {category} is not one of the available choices."]
        project_id = None
        if query.get("project"):
            found = [p.id for p in self._projects.values() if query["project"] in (str(p.id), p.link_name)]
            if not found:
                errors["project"] = ["Select a valid choice. That choice is not one of the available choices."]
            project_id = found[0] if found else None
        if errors:
            raise _Answer(400, errors)
        events = self._ordered_events(ascending=query.get("order") == "date")
        selected = [
            e for e in events
            if (not category or e["category"] == category) and (project_id is None or e["project_id"] == project_id)
            # `since` is inclusive (date__gte), `before` exclusive (date__lt), as in patchwork.api.filters.
            and (since is None or _as_datetime(e["date"]) >= since)
            and (before is None or _as_datetime(e["date"]) < before)
            and (not query.get("series") or self._touches(e, "series", query["series"]))
            and (not query.get("patch") or self._touches(e, "patch", query["patch"]))
        ]  # fmt: skip
        page, links = self._page(request, query, selected)
        return 200, [self._event_json(e, version) for e in page], links

    def _touches(self, event: dict[str, Any], kind: str, raw_id: str) -> bool:
        ref = event["payload"].get(kind)
        return ref is not None and str(ref[1]) == raw_id

    def _page(self, request: Request, query: dict[str, str], items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        """DRF's PageNumberPagination as Patchwork sets it up, with its Link header."""
        try:
            per_page = min(max(int(query["per_page"]), 1), MAX_PER_PAGE) if "per_page" in query else DEFAULT_PER_PAGE
        except ValueError:
            per_page = DEFAULT_PER_PAGE
        last = max(1, -(-len(items) // per_page))
        raw_page = query.get("page", "1")
        page = int(raw_page) if raw_page.isdigit() else (last if raw_page == "last" else 0)
        if not 1 <= page <= last:
            raise _detail(404, "Invalid page.")
        url = str(request.url)
        links = []
        if page < last:
            links.append(f'<{_with_query(url, "page", page + 1)}>; rel="next"')
        if page > 1:
            links.append(f'<{_with_query(url, "page", page - 1 if page > 2 else None)}>; rel="prev"')
        links += [f'<{_with_query(url, "page", 1)}>; rel="first"', f'<{_with_query(url, "page", last)}>; rel="last"']
        return items[(page - 1) * per_page : page * per_page], {"Link": ", ".join(links)}

    # ---- checks --------------------------------------------------------------------------------------------

    def _create_check(self, patch: _Patch, user_id: int | None, body: Any,
                      version: str) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
        # Permission comes before validation in DRF: anonymous with a bad body is still 403.
        if user_id is None or not self._may_check(patch, user_id):
            raise _detail(403, NO_PERMISSION)
        fields = body if isinstance(body, dict) else {}
        errors: dict[str, list[str]] = {}
        state = fields.get("state")
        if state is None or state == "":
            errors["state"] = ["This field is required."]
        elif state not in CHECK_STATES:
            errors["state"] = [f'"{state}" is not a valid choice.']
        context = fields.get("context", "default")
        if not isinstance(context, str) or not _SLUG.fullmatch(context):
            errors["context"] = [BAD_SLUG]
        elif len(context) > 255:
            errors["context"] = ["Ensure this field has no more than 255 characters."]
        target_url = fields.get("target_url") or None
        if target_url is not None:
            parts = urlsplit(str(target_url))
            if parts.scheme not in ("http", "https", "ftp", "ftps") or not parts.netloc:
                errors["target_url"] = ["Enter a valid URL."]
            elif len(str(target_url)) > 200:
                errors["target_url"] = ["Ensure this field has no more than 200 characters."]
        description = fields.get("description")
        if description is not None and not isinstance(description, str):
            errors["description"] = ["Not a valid string."]
        if errors:
            raise _Answer(400, errors)
        check = {"id": self._next_id("check"), "user_id": user_id, "date": self._stamp(), "state": state,
                 "target_url": target_url, "context": context, "description": description}  # fmt: skip
        self._checks.setdefault(patch.id, []).append(check)
        self._event("check-created", patch.project_id, {"patch": ("patch", patch.id), "check": ("check", check["id"])},
                    user_id)  # fmt: skip
        return 201, self._check_json(patch.id, check, version), {}

    def _may_check(self, patch: _Patch, user_id: int) -> bool:
        # patchwork.api.check.CheckListCreate: the patch's project maintainers, its delegate, its submitter's user.
        submitter_user = self._people[patch.submitter_id].get("user_id")
        return user_id in self._projects[patch.project_id].maintainers or user_id in (patch.delegate_id, submitter_user)

    def _combined_check(self, patch_id: int) -> str:
        latest: dict[str, str] = {}
        for check in self._checks.get(patch_id, []):
            latest[check["context"]] = check["state"]
        states = set(latest.values())
        for state in ("fail", "warning", "pending"):
            if state in states:
                return state
        return "success" if states else "pending"

    # ---- JSON shapes ---------------------------------------------------------------------------------------

    def _api(self, version: str, path: str) -> str:
        return f"{self.base_url}/api/{version + '/' if version else ''}{path}"

    def _project(self, link_name: str) -> _Project:
        for project in self._projects.values():
            if project.link_name == link_name:
                return project
        raise KeyError(f"unknown project {link_name!r}: add_project() it first")

    def _user_id(self, username: str) -> int:
        for uid, user in self._users.items():
            if user["username"] == username:
                return uid
        raise KeyError(f"unknown user {username!r}: add_user() it first")

    def _person(self, name: str, email: str, user_id: int | None) -> int:
        for pid, person in self._people.items():
            if person["email"] == email:
                return pid
        pid = self._next_id("person")
        self._people[pid] = {"name": name, "email": email, "user_id": user_id}
        return pid

    @staticmethod
    def _prefix(version: int, number: int, total: int) -> str:
        counter = f"{number}/{total}" if total > 1 or number == 0 else ""
        return ",".join(part for part in (f"v{version}" if version > 1 else "", counter) if part) or "PATCH"

    def _render_mbox(self, series: _Series) -> bytes:
        person = self._people[series.submitter_id]
        mails = []
        for pid in series.patch_ids:
            patch = self._patches[pid]
            mails.append(
                f"From patchwork Mon Jan  1 00:00:00 2001\n"
                f"X-Patchwork-Submitter: {person['name']} <{person['email']}>\n"
                f"X-Patchwork-Id: {pid}\nMessage-Id: {patch.msgid}\nFrom: {person['name']} <{person['email']}>\n"
                f"Subject: {patch.name}\nDate: Mon, 1 Jan 2001 00:00:00 +0000\n\n{patch.content}---\n{patch.diff}\n"
            )  # fmt: skip
        return "".join(mails).encode()

    def _project_json(self, project_id: int, version: str) -> dict[str, Any]:
        p = self._projects[project_id]
        return {"id": p.id, "url": self._api(version, f"projects/{p.id}/"), "name": p.name, "link_name": p.link_name,
                "list_id": p.list_id, "list_email": p.list_email, "web_url": "https://example.invalid/",
                "scm_url": "", "webscm_url": "", "list_archive_url": "", "list_archive_url_format": "",
                "commit_url_format": ""}  # fmt: skip

    def _user_json(self, user_id: int | None, version: str) -> dict[str, Any] | None:
        if user_id is None:
            return None
        user = self._users[user_id]
        return {"id": user_id, "url": self._api(version, f"users/{user_id}/"), "username": user["username"],
                "first_name": "", "last_name": "", "email": user["email"]}  # fmt: skip

    def _person_json(self, person_id: int, version: str) -> dict[str, Any]:
        person = self._people[person_id]
        return {"id": person_id, "url": self._api(version, f"people/{person_id}/"), "name": person["name"],
                "email": person["email"]}  # fmt: skip

    def _web(self, project_id: int, kind: str, msgid: str) -> str:
        return f"{self.base_url}/project/{self._projects[project_id].link_name}/{kind}/{msgid.strip('<>')}/"

    def _patch_embedded(self, patch: _Patch, version: str) -> dict[str, Any]:
        web = self._web(patch.project_id, "patch", patch.msgid)
        return {"id": patch.id, "url": self._api(version, f"patches/{patch.id}/"), "web_url": web,
                "msgid": patch.msgid, "list_archive_url": None, "date": patch.date, "name": patch.name,
                "mbox": f"{web}mbox/"}  # fmt: skip

    def _cover_embedded(self, series: _Series, version: str) -> dict[str, Any] | None:
        if series.cover is None:
            return None
        cover = series.cover
        web = self._web(series.project_id, "cover", cover["msgid"])
        return {"id": cover["id"], "url": self._api(version, f"covers/{cover['id']}/"), "web_url": web,
                "msgid": cover["msgid"], "list_archive_url": None, "date": cover["date"], "name": cover["name"],
                "mbox": f"{web}mbox/"}  # fmt: skip

    def _series_embedded(self, series: _Series, version: str) -> dict[str, Any]:
        link_name = self._projects[series.project_id].link_name
        return {"id": series.id, "url": self._api(version, f"series/{series.id}/"),
                "web_url": f"{self.base_url}/project/{link_name}/list/?series={series.id}",
                "date": series.date, "name": series.name, "version": series.version,
                "mbox": f"{self.base_url}/series/{series.id}/mbox/"}  # fmt: skip

    def _series_json(self, series: _Series, version: str) -> dict[str, Any]:
        embedded = self._series_embedded(series, version)
        received = len(series.patch_ids)
        return {**{k: embedded[k] for k in ("id", "url", "web_url")},
                "project": self._project_json(series.project_id, version), "name": series.name, "date": series.date,
                "submitter": self._person_json(series.submitter_id, version), "version": series.version,
                "total": series.total, "received_total": received, "received_all": received >= series.total,
                "mbox": embedded["mbox"], "cover_letter": self._cover_embedded(series, version),
                "patches": [self._patch_embedded(self._patches[p], version) for p in series.patch_ids]}  # fmt: skip

    def _patch_json(self, patch: _Patch, version: str) -> dict[str, Any]:
        embedded = self._patch_embedded(patch, version)
        person = self._people[patch.submitter_id]
        return {**{k: embedded[k] for k in ("id", "url", "web_url")},
                "project": self._project_json(patch.project_id, version),
                **{k: embedded[k] for k in ("msgid", "list_archive_url", "date", "name")},
                "commit_ref": None, "pull_url": None, "state": patch.state, "archived": False,
                "hash": hashlib.sha1(patch.diff.encode()).hexdigest(),
                "submitter": self._person_json(patch.submitter_id, version),
                "delegate": self._user_json(patch.delegate_id, version), "mbox": embedded["mbox"],
                "series": [self._series_embedded(self._series[patch.series_id], version)],
                # These two links are unversioned on the real server too.
                "comments": f"{self.base_url}/api/patches/{patch.id}/comments/",
                "check": self._combined_check(patch.id),
                "checks": f"{self.base_url}/api/patches/{patch.id}/checks/", "tags": {}, "related": [],
                "headers": {"Message-Id": patch.msgid, "From": f"{person['name']} <{person['email']}>",
                            "Subject": patch.name},
                "content": patch.content, "diff": patch.diff, "prefixes": []}  # fmt: skip

    def _check_json(self, patch_id: int, check: dict[str, Any], version: str) -> dict[str, Any]:
        return {"id": check["id"], "url": self._api(version, f"patches/{patch_id}/checks/{check['id']}/"),
                "user": self._user_json(check["user_id"], version), "date": check["date"], "state": check["state"],
                "target_url": check["target_url"], "context": check["context"],
                "description": check["description"]}  # fmt: skip

    def _event_json(self, event: dict[str, Any], version: str) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        for key, (kind, ref) in event["payload"].items():
            if kind == "series":
                payload[key] = self._series_embedded(self._series[ref], version)
            elif kind == "patch":
                payload[key] = self._patch_embedded(self._patches[ref], version)
            elif kind == "cover":
                payload[key] = self._cover_embedded(self._series[ref], version)
            elif kind == "user":
                payload[key] = self._user_json(ref, version)
            elif kind == "check":
                patch_id = event["payload"]["patch"][1]
                check = next(c for c in self._checks[patch_id] if c["id"] == ref)
                full = self._check_json(patch_id, check, version)
                payload[key] = {k: full[k] for k in ("id", "url", "date", "state", "target_url", "context")}
        return {"id": event["id"], "category": event["category"],
                "project": self._project_json(event["project_id"], version), "date": event["date"],
                "actor": self._user_json(event["actor_id"], version), "payload": payload}  # fmt: skip


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:50] or "series"


def _with_query(url: str, key: str, value: int | None) -> str:
    """DRF's replace_query_param / remove_query_param: the query re-encoded, sorted by name."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    fields = parse_qs(query, keep_blank_values=True)
    fields.pop(key, None)
    if value is not None:
        fields[key] = [str(value)]
    return urlunsplit((scheme, netloc, path, urlencode(sorted(fields.items()), doseq=True), fragment))


def _as_datetime(naive: str) -> datetime:
    return datetime.fromisoformat(naive)


def _naive_filter(query: dict[str, str], name: str, errors: dict[str, list[str]]) -> datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    # The server's USE_TZ=False: an offset or Z cannot be compared with its naive dates.
    if not _NAIVE_ISO.fullmatch(raw):
        errors[name] = ["Enter a valid date/time."]
        return None
    return datetime.fromisoformat(raw)


def _parse_body(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    media = content_type.split(";")[0].strip().lower()
    if media == "application/json":
        try:
            return json.loads(raw)
        except ValueError as exc:
            return _detail(400, f"JSON parse error - {exc}")
    if media == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    return _detail(415, f'Unsupported media type "{media}" in request.')


def _to_response(status: int, payload: Any, headers: dict[str, str]) -> Response:
    headers = {"Vary": "Accept, Cookie", "Allow": "GET, POST, HEAD, OPTIONS", **headers}
    if isinstance(payload, bytes):
        return Response(payload, status_code=status, headers=headers, media_type="text/plain; charset=UTF-8")
    if isinstance(payload, str):
        return Response(payload, status_code=status, headers=headers, media_type="text/html; charset=utf-8")
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, headers=headers,
                    media_type="application/json")  # fmt: skip
