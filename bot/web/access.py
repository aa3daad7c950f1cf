"""The one access check of every route that serves a pipeline's data (pages, logs, artifacts, API).

A route serving a pipeline's data is made with `pipeline_route`, which finds the pipeline the
request is about, decides whether the request may read it, and only then calls the handler.
A private tree's pipeline opens with a signed link to exactly that pipeline (`?token=`, see
bot/reporting/page_links.py for why a query string) or an operator token (`Authorization: Bearer`); anything
else gets the very 404 a pipeline that does not exist gets, so a stranger cannot even learn
that it exists. tests/bot/web/test_private_pages.py enumerates the app's routes and fails on
one made any other way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bot.core.links import link_opens_pipeline, operator_token_matches
from bot.host.stores import Runtime
from bot.reporting.page_links import LINK_PARAM, read_link_key, tree_is_private

# Sent with every private page and every 404 of these routes (a 404 must look the same whether
# the pipeline is missing or hidden): the token in the address leaks neither to the next site
# by Referer nor into a shared cache.
PRIVATE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "private, no-store"}
SCOPE_ATTRIBUTE = "labgate_pipeline_scope"
_ID = re.compile(r"[0-9]{1,18}")
MAX_ID = 2**31 - 1  # ids are INTEGER columns


@dataclass(frozen=True)
class Scope:
    """The pipeline a request's data belongs to, and its tree."""

    pipeline_id: int
    tree_name: str


@dataclass(frozen=True)
class Grant:
    """Leave to read one pipeline's data, and the token its onward links carry."""

    scope: Scope
    private: bool
    link_token: str | None = None

    def link(self, path: str) -> str:
        """`path` (a page of the same pipeline) with the token that opened this one, so a click keeps working."""
        if self.link_token is None:
            return path
        return f"{path}?{LINK_PARAM}={quote(self.link_token, safe='')}"


ScopeOf = Callable[[Runtime, dict[str, int]], Scope | None]
Handler = Callable[[Request, dict[str, int], Grant], Awaitable[Response]]


def not_found() -> Response:
    return PlainTextResponse("not found\n", status_code=404, headers=PRIVATE_HEADERS)


def grant_for(runtime: Runtime, request: Request, scope: Scope) -> Grant | None:
    """Whether this request may read the scope's pipeline; None means answer 404."""
    config = runtime.config
    if not tree_is_private(config, scope.tree_name):
        return Grant(scope, private=False)
    authorization = request.headers.get("authorization", "")
    scheme, _, credential = authorization.partition(" ")
    operators = tuple(config.web.operator_token_sha256)
    if scheme.lower() == "bearer" and operator_token_matches(credential.strip(), operators):
        return Grant(scope, private=True)
    tokens = request.query_params.getlist(LINK_PARAM)
    if len(tokens) != 1:  # none, or ambiguous: which one would a cache or a log have seen?
        return None
    key = read_link_key(config, runtime.data_dir)
    if link_opens_pipeline(key, tokens[0], scope.pipeline_id, int(time.time())):
        return Grant(scope, private=True, link_token=tokens[0])
    return None


def pipeline_route(runtime: Runtime, path: str, scope_of: ScopeOf, handler: Handler) -> Route:
    """A GET route serving one pipeline's data: `scope_of` maps the path's ids to the pipeline, the
    access check runs, and only a granted request reaches `handler`. Path parameters named `*_id` are
    ids; with more than one, `scope_of` answers None unless they all belong to the same pipeline. Any
    other (an artifact's path in its job) reaches the handler as sent, in `request.path_params`, and
    never decides whose data it is."""

    async def endpoint(request: Request) -> Response:
        ids: dict[str, int] = {}
        for name, value in request.path_params.items():
            if not name.endswith("_id"):
                continue
            if _ID.fullmatch(str(value)) is None:
                return PlainTextResponse(f"{name.replace('_', ' ')} must be a number\n", status_code=400)
            ids[name] = int(value)
        if any(value > MAX_ID for value in ids.values()):
            return not_found()  # no row has it, and PostgreSQL would refuse to look
        scope = scope_of(runtime, ids)
        grant = grant_for(runtime, request, scope) if scope is not None else None
        if grant is None:
            return not_found()
        response = await handler(request, ids, grant)
        if grant.private:
            response.headers.update(PRIVATE_HEADERS)
        return response

    setattr(endpoint, SCOPE_ATTRIBUTE, scope_of)  # what the route test looks for
    return Route(path, endpoint, methods=["GET"])
