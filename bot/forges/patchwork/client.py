"""Patchwork REST client (httpx): event pages to the end, series and mbox, check POSTs, errors in the server's words.

The token goes only to the configured server: a `Link: next` or an mbox URL naming another origin is
refused rather than followed (a proxy or a misconfigured server must not be able to send our token, or
our poller, elsewhere). Answers are bounded in size, page chains in length.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from bot.host.retrying import Verdict

MAX_JSON_BYTES = 32 << 20  # one page of 250 events is ~250 KB; a series with 500 patches ~1 MB
MAX_PAGES = 10_000  # a Link chain longer than this is a loop, not a backlog
STATES = ("pending", "success", "warning", "fail")


class PatchworkError(Exception):
    """Patchwork said no (status set), or could not be reached or understood (status None).

    `detail` is the server's own words ("You do not have permission to perform this action.",
    "context: Enter a valid "slug" ..."): they go to labgate's log and page as they are."""

    def __init__(self, what: str, status: int | None, detail: str, *, transient: bool,
                 retry_after_s: float | None = None) -> None:  # fmt: skip
        super().__init__(f"Patchwork {what}: {status if status is not None else 'no answer'}: {detail}")
        self.what, self.status, self.detail = what, status, detail
        self.transient, self.retry_after_s = transient, retry_after_s


def classify_error(exc: BaseException) -> Verdict | None:
    """Patchwork's answers that mean "later": 5xx, 429, no connection. A 403 (the token's user is not a
    maintainer of the project) or a 400 (a context that is not a slug) fails the same way again."""
    if isinstance(exc, PatchworkError):
        return Verdict(exc.transient, exc.retry_after_s)
    if isinstance(exc, httpx.TransportError):
        return Verdict(True)
    return None


@dataclass(frozen=True)
class EventPage:
    """One page of events as the server ordered it (newest first), and whether more follow."""

    events: list[dict[str, Any]]
    next_url: str | None


def _server_words(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    if isinstance(body, dict):  # DRF's field errors: {"context": ["Enter a valid ..."], "state": [...]}
        return "; ".join(f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in body.items())
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class PatchworkClient:
    """One Patchwork server. `token` (Patchwork's API token of the bot's user) is needed to post checks."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 max_mbox_bytes: int = 8 << 20, transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Patchwork URL {url!r} is not http(s)://host[/path]")
        self.url = url.rstrip("/")
        self._origin = (parts.scheme, parts.netloc.lower())
        self.max_mbox_bytes = max_mbox_bytes
        headers = {"Accept": "application/json", "User-Agent": "labgate"}
        if token:
            headers["Authorization"] = f"Token {token}"
        # No redirects: a 3xx could lead the token to another host; Patchwork's API does not redirect.
        self._http = httpx.Client(headers=headers, timeout=timeout_s, follow_redirects=False, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PatchworkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading -------------------------------------------------------------------------------------------

    def event_pages(self, *, project: str, category: str, since: str | None = None,
                    per_page: int = 100) -> Iterator[EventPage]:  # fmt: skip
        """Pages of `GET /api/events/`, following `Link: rel="next"` to the end (newest first; `since`
        is inclusive and in the server's naive local time)."""
        query = {"category": category, "project": project, "per_page": str(per_page)}
        if since is not None:
            query["since"] = since
        url: str | None = f"{self.url}/api/events/?{urlencode(query)}"
        followed: set[str] = set()
        while url is not None:
            if url in followed or len(followed) >= MAX_PAGES:
                raise PatchworkError("events", None, f"the Link chain loops or runs past {MAX_PAGES} pages at {url}",
                                     transient=False)  # fmt: skip
            followed.add(url)
            response = self._get(url, "events")
            events = self._json(response, "events")
            if not isinstance(events, list) or not all(_is_event(e) for e in events):
                raise PatchworkError("events", response.status_code, "not a list of events (id, category, date)",
                                     transient=False)  # fmt: skip
            next_url = response.links.get("next", {}).get("url")
            yield EventPage(events, next_url)
            url = next_url

    def series(self, series_id: int) -> dict[str, Any]:
        return self._object(f"{self.url}/api/series/{int(series_id)}/", "series")

    def patch(self, patch_id: int) -> dict[str, Any]:
        return self._object(f"{self.url}/api/patches/{int(patch_id)}/", "patch")

    def mbox(self, url: str) -> bytes:
        """The mbox a series' `mbox` field names, at most max_mbox_bytes (refused past that, unread)."""
        with self._http.stream("GET", self._same_origin(url, "mbox"), headers={"Accept": "*/*"}) as response:
            if response.status_code != 200:
                response.read()
                raise self._error("mbox", response)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_mbox_bytes:
                raise PatchworkError("mbox", 200, f"{declared} bytes, more than the {self.max_mbox_bytes} allowed",
                                     transient=False)  # fmt: skip
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_mbox_bytes:
                    raise PatchworkError("mbox", 200, f"more than the {self.max_mbox_bytes} bytes allowed",
                                         transient=False)  # fmt: skip
                chunks.append(chunk)
            return b"".join(chunks)

    # ---- writing -------------------------------------------------------------------------------------------

    def post_check(self, patch_id: int, *, state: str, context: str, target_url: str | None = None,
                   description: str | None = None) -> dict[str, Any]:  # fmt: skip
        """POST /api/patches/{id}/checks/: a new check (Patchwork never edits one; the latest per
        context is what it shows). Not retried here: the caller decides, with classify_error."""
        body = {"state": state, "context": context, "target_url": target_url, "description": description}
        url = f"{self.url}/api/patches/{int(patch_id)}/checks/"
        try:
            response = self._http.post(url, json=body)
        except httpx.TransportError as exc:
            raise PatchworkError("check", None, f"{type(exc).__name__}: {exc}", transient=True) from exc
        if response.status_code != 201:
            raise self._error("check", response)
        created = self._json(response, "check")
        if not isinstance(created, dict):
            raise PatchworkError("check", 201, "not a check object", transient=False)
        return created

    # ---- plumbing ------------------------------------------------------------------------------------------

    def _same_origin(self, url: str, what: str) -> str:
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc.lower()) != self._origin:
            raise PatchworkError(what, None, f"refusing {url!r}: not on the configured server {self.url}",
                                 transient=False)  # fmt: skip
        return url

    def _get(self, url: str, what: str) -> httpx.Response:
        try:
            response = self._http.get(self._same_origin(url, what))
        except httpx.TransportError as exc:
            raise PatchworkError(what, None, f"{type(exc).__name__}: {exc}", transient=True) from exc
        if response.status_code != 200:
            raise self._error(what, response)
        return response

    def _object(self, url: str, what: str) -> dict[str, Any]:
        found = self._json(self._get(url, what), what)
        if not isinstance(found, dict) or not isinstance(found.get("id"), int):
            raise PatchworkError(what, 200, f"not a {what} object", transient=False)
        return found

    def _json(self, response: httpx.Response, what: str) -> Any:
        if len(response.content) > MAX_JSON_BYTES:
            raise PatchworkError(what, response.status_code, f"answer over {MAX_JSON_BYTES} bytes", transient=False)
        try:
            return response.json()
        except ValueError as exc:
            raise PatchworkError(what, response.status_code, f"not JSON: {exc}", transient=False) from exc

    def _error(self, what: str, response: httpx.Response) -> PatchworkError:
        status = response.status_code
        transient = status >= 500 or status == 429
        return PatchworkError(what, status, _server_words(response), transient=transient,
                              retry_after_s=_retry_after(response) if transient else None)  # fmt: skip


def _is_event(event: Any) -> bool:
    return (isinstance(event, dict) and isinstance(event.get("id"), int) and isinstance(event.get("date"), str)
            and isinstance(event.get("category"), str) and isinstance(event.get("payload"), dict))  # fmt: skip
