"""A private tree end to end: the check run's details_url (as FakeGitHub recorded it) opens the job,
its pipeline and its log, and clicking through stays inside that pipeline; every URL of the pipeline
without that link is 404; `labgate try` on the private tree prints a signed link of its own."""

from __future__ import annotations

import re
import subprocess
import sys

from starlette.testclient import TestClient

from bot.reporting.page_links import public_base_url
from bot.store.models import Job, Pipeline
from tests.bot.web.test_private_pages import Seeded, pipeline_urls, routes_of
from tests.conftest import REPO_ROOT
from tests.scenarios.test_github_scenarios import PATCHES, PIPELINE_CHECKS, SECRET, World
from tests.security import test_credentials

# A private repository on FakeGitHub, cloned with a per-job token, real workers: test_credentials.py's world.
private_world = test_credentials.private_world


def _seeded(world: World, pipeline_id: int) -> Seeded:
    with world.services.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        artifacts = {j.id: tuple(j.outputs.get("artifacts") or ()) for j in pipeline.jobs}
        return Seeded(pipeline.id, tuple(j.id for j in pipeline.jobs), artifacts)


def _click_through(client: TestClient, start: str) -> set[str]:
    """Open `start` and every link on the pages it leads to; the paths reached (all must answer 200)."""
    seen, todo = set(), [start]
    while todo:
        href = todo.pop()
        if href in seen:
            continue
        seen.add(href)
        answer = client.get(href)
        assert answer.status_code == 200, href
        assert answer.headers["referrer-policy"] == "no-referrer", href
        if answer.headers["content-type"].startswith("text/html"):
            todo += [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', answer.text)]
    return {h.split("?")[0] for h in seen}


def _pages_with_something_to_show(client: TestClient, seeded: Seeded, token: str) -> set[str]:
    """Every URL of the pipeline that opens with the token and shows something (a job may have no log)."""
    shown = set()
    for url in pipeline_urls(routes_of(client), seeded):
        answer = client.get(url, params={"token": token})
        if answer.status_code == 200 and answer.content:
            shown.add(url)
    return shown


def _assert_all_hidden(client: TestClient, seeded: Seeded, **request: object) -> None:
    nothing = client.get("/jobs/999999")
    assert nothing.status_code == 404
    for url in pipeline_urls(routes_of(client), seeded):
        answer = client.get(url, **request)  # type: ignore[arg-type]
        assert (answer.status_code, answer.content) == (404, nothing.content), url


def test_the_check_runs_link_opens_its_private_pipeline_and_nothing_else_does(private_world: World) -> None:
    world = private_world
    public = public_base_url(world.services.runtime.config)
    sha = world.push_pull(11, PATCHES / "pass.patch")
    answer = world.post("pull_request", world.pull_payload("opened", 11, sha))
    assert answer.status_code == 202 and answer.json()["status"] == "accepted", answer.json()
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    job_ids = {int(run["external_id"]) for name, run in runs.items() if name in PIPELINE_CHECKS}  # the summary's
    # external id is its pipeline's ("pipeline-N")
    with world.services.runtime.store.session() as session:
        [pipeline_id] = {job.pipeline_id for job in (session.get(Job, j) for j in job_ids) if job is not None}
    seeded = _seeded(world, pipeline_id)

    # Without the link, every URL of the pipeline is the 404 of a pipeline that does not exist.
    _assert_all_hidden(world.client, seeded)

    # Every details_url labgate ever sent is signed (a job's, or the summary's pipeline page), and the newest
    # opens its job page.
    sent = [r.json["details_url"] for r in world.fake.requests if (r.json or {}).get("details_url")]
    signed = re.compile(rf"{re.escape(public)}/(jobs|pipelines)/\d+\?token=[0-9]+\.[0-9]+\.[0-9a-f]{{64}}")
    assert sent and all(signed.fullmatch(u) for u in sent), sent
    unit = runs["labgate / qemu-x86_64 unit"]
    start = unit["details_url"].removeprefix(public)
    page = world.client.get(start)
    assert page.status_code == 200 and "qemu-x86_64 unit" in page.text and "math" in page.text
    assert page.headers["cache-control"] == "private, no-store"
    # Clicking through the report reaches every page of this pipeline: pipeline, jobs, logs.
    token = start.split("token=", 1)[1]
    assert _click_through(world.client, start) == _pages_with_something_to_show(world.client, seeded, token)
    assert {f"/pipelines/{pipeline_id}", *(f"/jobs/{j}" for j in seeded.job_ids)} <= _click_through(world.client, start)
    # The link in the query string only: the same token elsewhere opens nothing.
    _assert_all_hidden(world.client, seeded, headers={"Authorization": f"Bearer {token}", "Cookie": f"token={token}"})


def test_labgate_try_on_a_private_tree_prints_a_link_to_that_pipeline_only(private_world: World) -> None:
    world = private_world
    public = public_base_url(world.services.runtime.config)
    config_path = world.services.runtime.data_dir.parent / "labgate.yaml"
    tree_url = world.services.runtime.config.trees[0].url
    tried = subprocess.run([sys.executable, "-m", "bot.cli", "try", tree_url, "--name", "hello", "--ref", "main",
                            "--config", str(config_path)], capture_output=True, text=True, cwd=REPO_ROOT,
                           timeout=300)  # fmt: skip
    assert tried.returncode == 0, tried.stdout + tried.stderr
    details = rf"^details: {re.escape(public)}(/pipelines/(\d+)\?token=\S+) \(served by .*private tree.*\)$"
    found = re.search(details, tried.stdout, re.M)  # one line: a wrapped link cannot be clicked
    assert found, tried.stdout
    link, pipeline_id = found.group(1), int(found.group(2))
    seeded = _seeded(world, pipeline_id)
    token = link.split("token=", 1)[1]
    assert _click_through(world.client, link) == _pages_with_something_to_show(world.client, seeded, token)
    _assert_all_hidden(world.client, seeded)
    # This link opens none of the other pipelines' pages (the pull request's, when it ran first).
    with world.services.runtime.store.session() as session:
        others = [p.id for p in session.query(Pipeline).filter(Pipeline.id != pipeline_id)]
    for other in others:
        _assert_all_hidden(world.client, _seeded(world, other), params={"token": token})


def test_the_link_key_is_the_data_dirs_own_not_the_webhook_secret(private_world: World) -> None:
    key_file = private_world.services.runtime.data_dir / "link-key"
    assert not key_file.is_symlink() and key_file.stat().st_mode & 0o077 == 0
    key = key_file.read_bytes().strip()
    assert len(key) >= 32 and SECRET.encode() not in key and key not in SECRET.encode()
