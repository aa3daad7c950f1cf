"""Private trees' pages, logs and every other pipeline URL: only a signed link to that pipeline or an
operator token opens them, anything else is the 404 of a pipeline that does not exist. Real store
(SQLite and PostgreSQL), real app, real link key in the data dir."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

from bot.host.config import Config, GitHubApp, Tree, Web
from bot.host.stores import Runtime, open_runtime
from bot.reporting.page_links import link_token, page_url, read_link_key
from bot.store import models
from bot.web.access import SCOPE_ATTRIBUTE
from bot.web.app import create_app

SECRET = "It's a Secret to Everybody"
OPERATOR_TOKEN = "operator-0123456789-abcdef"
PUBLIC_URL = "https://ci.example.org"
# Routes that serve no pipeline's data, each with the reason it needs no access check.
ARTIFACT = "out/notes.txt"  # each seeded job's one artifact
OPEN_ROUTES = {
    "/healthz": "says only whether the database answers",
    "/hooks/github": "POST only, takes deliveries and answers with their status, never a pipeline's data",
}


@dataclass(frozen=True)
class Seeded:
    pipeline_id: int
    job_ids: tuple[int, ...]
    # Each job's artifact paths, when they are not the seeded ARTIFACT (a real pipeline's builds).
    artifacts: dict[int, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class Site:
    runtime: Runtime
    client: TestClient
    secret: Seeded  # a private tree's pipeline
    other_secret: Seeded  # another pipeline of the same private tree
    public: Seeded

    def urls(self, seeded: Seeded) -> list[str]:
        """Every URL the app serves for one pipeline, from the app's own route table."""
        return pipeline_urls(routes_of(self.client), seeded)

    def link(self, seeded: Seeded, path: str, tree: str = "secret") -> str:
        return page_url(self.runtime.config, self.runtime.data_dir, path, tree, seeded.pipeline_id).removeprefix(
            PUBLIC_URL
        )


def routes_of(client: TestClient) -> list[BaseRoute]:
    assert isinstance(client.app, Starlette)
    return client.app.routes


def pipeline_urls(routes: list[BaseRoute], seeded: Seeded) -> list[str]:
    """Every URL the routes serve for one pipeline: each job's and the pipeline's."""
    urls = []
    for route in routes:
        if not isinstance(route, Route) or route.path in OPEN_ROUTES:
            continue
        params = set(route.param_convertors)
        if not params <= {"job_id", "pipeline_id", "path"}:
            pytest.fail(f"{route.path}: this test does not know how to fill {sorted(params)}: teach it")
        if "job_id" in params:
            for job in seeded.job_ids:
                paths = seeded.artifacts.get(job, (ARTIFACT,)) if "path" in params else ("",)
                urls += [route.path_format.format(job_id=job, **({"path": p} if p else {})) for p in paths]
        elif "pipeline_id" in params:
            urls.append(route.path_format.format(pipeline_id=seeded.pipeline_id))
        else:
            urls.append(route.path_format)  # a listing: it too must refuse a stranger
    return urls


def unguarded_routes(routes: list[BaseRoute]) -> list[str]:
    """Routes that could serve a pipeline's data without the access check."""
    found = []
    for route in routes:
        path = getattr(route, "path", repr(route))
        if path in OPEN_ROUTES:
            continue
        if not isinstance(route, Route) or not hasattr(route.endpoint, SCOPE_ATTRIBUTE):
            found.append(path)
    return found


def seed(runtime: Runtime, tree_name: str, title: str) -> Seeded:
    """A finished pipeline of three jobs with logs, written to the store as the control worker would."""
    with runtime.store.session() as session:
        tree = session.query(models.Tree).filter_by(name=tree_name).one_or_none()
        if tree is None:
            tree = models.Tree(name=tree_name, url=f"https://example.org/{tree_name}.git")
            session.add(tree)
        change = models.Change(tree=tree, source="github", external_id=title, title=title)
        revision = models.Revision(change=change, base_ref="main", head_sha="c" * 40, base_sha="b" * 40)
        pipeline = models.Pipeline(revision=revision, state="done", result="fail")
        session.add(pipeline)
        session.flush()
        jobs = []
        for kind, name in (("checkout", "checkout"), ("build", "x86_64"), ("test", "qemu-x86_64 unit")):
            log = runtime.artifacts.put_bytes(f"{title}: {kind} log, CONFIDENTIAL-{tree_name}\n".encode())
            notes = runtime.artifacts.put_bytes(f"{title}: {kind} notes, CONFIDENTIAL-{tree_name}\n".encode())
            outputs = {"artifacts": {ARTIFACT: {"digest": notes, "mode": 0o644}}}
            job = models.Job(pipeline=pipeline, kind=kind, name=name, queue=kind, state="done", result="fail",
                             log_digest=log, outputs=outputs)  # fmt: skip
            session.add(job)
            jobs.append(job)
        session.flush()
        seeded = Seeded(pipeline.id, tuple(j.id for j in jobs))
        session.commit()
    return seeded


def make_config(root: Path, **web: object) -> Config:
    (root / "app.pem").write_text("-----BEGIN PRIVATE KEY-----\nthrowaway\n-----END PRIVATE KEY-----\n")
    (root / "secret").write_text(SECRET + "\n")
    github = GitHubApp(app_id=1, private_key_file=root / "app.pem", webhook_secret_file=root / "secret")
    trees = [Tree(name="secret", url="https://example.org/secret.git", private=True),
             Tree(name="open", url="https://example.org/open.git")]  # fmt: skip
    operators = [hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()]
    return Config(data_dir=root / "data", github=github, trees=trees,
                  web=Web(public_url=PUBLIC_URL, operator_token_sha256=operators, **web))  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'labgate.sqlite3'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    runtime = open_runtime(make_config(tmp_path), database_url=url)
    secret, other = seed(runtime, "secret", "fix a leak"), seed(runtime, "secret", "another fix")
    public = seed(runtime, "open", "open work")
    with TestClient(create_app(runtime), follow_redirects=False) as client:
        yield Site(runtime, client, secret, other, public)
    runtime.store.engine.dispose()


def _shape(response: object) -> tuple[int, bytes, dict[str, str]]:
    """What a client learns from an answer, less what differs between any two answers."""
    status = response.status_code  # type: ignore[attr-defined]
    headers = {k: v for k, v in response.headers.items() if k not in ("date",)}  # type: ignore[attr-defined]
    return status, response.content, headers  # type: ignore[attr-defined]


def _hrefs(html: str) -> list[str]:
    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]


# -- the rule is structural ------------------------------------------------------------------------


def test_every_route_serving_pipeline_data_goes_through_the_access_check(site: Site) -> None:
    routes = routes_of(site.client)
    paths = {getattr(r, "path", "") for r in routes}
    assert {"/jobs/{job_id}", "/jobs/{job_id}/log", "/pipelines/{pipeline_id}", "/hooks/github"} <= paths
    assert unguarded_routes(routes) == []


def test_a_new_route_without_the_check_is_caught(site: Site) -> None:
    async def leak(_: object) -> None:  # pragma: no cover - never served
        return None

    routes = [*routes_of(site.client), Route("/api/pipelines/{pipeline_id}", leak)]
    assert unguarded_routes(routes) == ["/api/pipelines/{pipeline_id}"]


# -- the attack: every URL of a private pipeline ---------------------------------------------------


def test_every_url_of_a_private_pipeline_is_404_without_credentials(site: Site) -> None:
    urls = site.urls(site.secret)
    assert len(urls) == 3 * 4 + 1  # page, log, artifact and reproduction spec of each job, the pipeline page
    missing_job, missing_pipeline = site.client.get("/jobs/999999"), site.client.get("/pipelines/999999")
    assert missing_job.status_code == 404
    assert _shape(missing_job) == _shape(missing_pipeline)
    for url in urls:
        for method in ("GET", "HEAD"):
            answer = site.client.request(method, url)
            # The same answer, byte for byte and header for header, as for a pipeline that does not exist.
            assert _shape(answer) == _shape(site.client.request(method, "/jobs/999999")), (method, url)
            assert b"CONFIDENTIAL" not in answer.content and b"fix a leak" not in answer.content


def _attacks(site: Site) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Ways to send a wrong credential, or a right one in the wrong place: (query, headers) each."""
    config, data = site.runtime.config, site.runtime.data_dir
    good = link_token(config, data, site.secret.pipeline_id)
    key = read_link_key(config, data)
    expired = link_token(config, data, site.secret.pipeline_id, now=time.time() - 31 * 86400)
    pid, expires, mac = good.split(".")
    from bot.core.links import sign_pipeline_link

    return {
        "no credentials": ({}, {}),
        "another private pipeline's link": ({"token": link_token(config, data, site.other_secret.pipeline_id)}, {}),
        "a public pipeline's link": ({"token": link_token(config, data, site.public.pipeline_id)}, {}),
        "expired link": ({"token": expired}, {}),
        "expiry moved later": ({"token": f"{pid}.{int(expires) + 86400}.{mac}"}, {}),
        "pipeline id changed": ({"token": f"{site.other_secret.pipeline_id}.{expires}.{mac}"}, {}),
        "one MAC digit changed": ({"token": good[:-1] + ("1" if good[-1] == "0" else "0")}, {}),
        "MAC cut short": ({"token": good[:-2]}, {}),
        "signed with the webhook secret": (
            {"token": sign_pipeline_link(SECRET.encode() * 2, site.secret.pipeline_id, int(expires))}, {}),
        "signed with the key's text reversed": (
            {"token": sign_pipeline_link(key[::-1], site.secret.pipeline_id, int(expires))}, {}),
        "link as a bearer token": ({}, {"Authorization": f"Bearer {good}"}),
        "link in a cookie": ({}, {"Cookie": f"token={good}"}),
        "link in a header of its own": ({}, {"X-Labgate-Token": good, "Token": good}),
        "link under another parameter name": ({"access_token": good, "t": good}, {}),
        "operator token in the query string": ({"token": OPERATOR_TOKEN}, {}),
        "operator token as basic auth": (
            {}, {"Authorization": "Basic " + base64.b64encode(f"x:{OPERATOR_TOKEN}".encode()).decode()}),
        "operator token without a scheme": ({}, {"Authorization": OPERATOR_TOKEN}),
        "operator token's digest as the token": (
            {}, {"Authorization": f"Bearer {hashlib.sha256(OPERATOR_TOKEN.encode()).hexdigest()}"}),
        "wrong operator token": ({}, {"Authorization": f"Bearer {OPERATOR_TOKEN}x"}),
    }  # fmt: skip


def test_wrong_or_misplaced_credentials_get_the_same_404(site: Site) -> None:
    nothing = _shape(site.client.get("/jobs/999999"))
    for what, (query, headers) in _attacks(site).items():
        for url in site.urls(site.secret):
            answer = site.client.get(url, params=query, headers=headers)
            assert _shape(answer) == nothing, (what, url)


def test_a_valid_link_beside_a_second_token_opens_nothing(site: Site) -> None:
    good = link_token(site.runtime.config, site.runtime.data_dir, site.secret.pipeline_id)
    url = f"/pipelines/{site.secret.pipeline_id}"
    assert site.client.get(url, params={"token": good}).status_code == 200
    for second in ("junk", good):
        assert site.client.get(f"{url}?token={good}&token={second}").status_code == 404


def test_a_link_to_one_pipeline_opens_no_page_of_another(site: Site) -> None:
    token = link_token(site.runtime.config, site.runtime.data_dir, site.secret.pipeline_id)
    for url in site.urls(site.other_secret):
        assert site.client.get(url, params={"token": token}).status_code == 404, url
    for url in site.urls(site.secret):
        assert site.client.get(url, params={"token": token}).status_code == 200, url


def test_ids_that_cannot_exist_say_nothing_of_what_does(site: Site) -> None:
    assert site.client.get("/jobs/abc").status_code == 400
    assert site.client.get(f"/jobs/{site.secret.job_ids[0]}x").status_code == 400
    assert site.client.get("/jobs/99999999999999").status_code == 404  # over INTEGER: PostgreSQL is never asked
    assert site.client.get("/jobs/%D9%A1").status_code == 400  # an Arabic-Indic digit one is not an id


# -- the way in: the link the report carries, and the operator's token -----------------------------


def test_the_signed_link_opens_the_page_and_every_link_on_it_carries_it_on(site: Site) -> None:
    job_id = site.secret.job_ids[2]
    start = site.link(site.secret, f"/jobs/{job_id}")
    assert "?token=" in start
    page = site.client.get(start)
    assert page.status_code == 200 and "CONFIDENTIAL-secret" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "private, no-store"
    seen = {start}
    todo = _hrefs(page.text)
    assert todo, "the job page links to its pipeline and its log"
    while todo:
        href = todo.pop()
        if href in seen:
            continue
        seen.add(href)
        assert "token=" in href, href
        answer = site.client.get(href)
        assert answer.status_code == 200, href
        assert answer.headers["cache-control"] == "private, no-store"
        if answer.headers["content-type"].startswith("text/html"):
            todo += _hrefs(answer.text)
    # Clicking through reached every page of that pipeline, and only those.
    reached = {h.split("?")[0] for h in seen}
    assert reached == set(site.urls(site.secret))


def test_an_operator_token_opens_every_page_of_every_pipeline(site: Site) -> None:
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    for seeded in (site.secret, site.other_secret, site.public):
        for url in site.urls(seeded):
            answer = site.client.get(url, headers=operator)
            assert answer.status_code == 200, url
    private = site.client.get(f"/pipelines/{site.secret.pipeline_id}", headers=operator)
    assert private.headers["referrer-policy"] == "no-referrer"
    assert all("token=" not in h for h in _hrefs(private.text))  # the operator's token never lands in a page


def test_public_trees_stay_open_and_their_links_unsigned(site: Site) -> None:
    for url in site.urls(site.public):
        answer = site.client.get(url)
        assert answer.status_code == 200, url
        assert "cache-control" not in answer.headers
        if answer.headers["content-type"].startswith("text/html"):
            assert all("token=" not in h for h in _hrefs(answer.text))
    assert site.link(site.public, f"/pipelines/{site.public.pipeline_id}", tree="open") == (
        f"/pipelines/{site.public.pipeline_id}"
    )
    # A public page ignores a token, even a wrong one.
    assert site.client.get(site.urls(site.public)[0], params={"token": "junk"}).status_code == 200


def test_a_link_lives_as_long_as_configured(tmp_path: Path) -> None:
    runtime = open_runtime(make_config(tmp_path, link_lifetime_days=2))
    seeded = seed(runtime, "secret", "short-lived")
    client = TestClient(create_app(runtime))
    url = f"/pipelines/{seeded.pipeline_id}"
    day = 86400
    fresh = link_token(runtime.config, runtime.data_dir, seeded.pipeline_id, now=time.time() - day)
    stale = link_token(runtime.config, runtime.data_dir, seeded.pipeline_id, now=time.time() - 2 * day - 5)
    assert int(fresh.split(".")[1]) == pytest.approx(time.time() + day, abs=5)
    assert client.get(url, params={"token": fresh}).status_code == 200
    assert client.get(url, params={"token": stale}).status_code == 404
    runtime.store.engine.dispose()
