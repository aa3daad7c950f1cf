"""GitHub App scenarios, webhook to final check run: real workers, real git and QEMU, and
FakeGitHub (driven through PyGithub) recording what labgate asked of it."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from bot.host.bring_up import Services
from bot.web.app import create_app
from tests.conftest import EXAMPLES, make_git_repo
from tests.fakes.github_api import FakeGitHub
from tests.samples import github_payload, sent_now
from tests.scenarios.running import git, push_change_head, running_labgate, wait_for

REPO = "octo-org/hello"
INSTALLATION = 77
SECRET = "It's a Secret to Everybody"
PATCHES = EXAMPLES / "hello" / "patches"



@dataclass
class World:
    fake: FakeGitHub
    services: Services
    client: TestClient
    origin: Path  # stands for the repository on GitHub
    base_sha: str

    def push_pull(self, number: int, patch: Path | None, *, on: str | None = None) -> str:
        """Make refs/pull/N/head in the origin (GitHub keeps one per pull request); its SHA."""
        return push_change_head(self.origin, f"refs/pull/{number}/head", patch, on=on or self.base_sha)

    def post(self, event: str, payload: dict[str, Any], *, delivery: str | None = None,
             secret: str = SECRET) -> Any:  # fmt: skip
        body = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "X-Hub-Signature-256": signature, "Content-Type": "application/json"}  # fmt: skip
        return self.client.post("/hooks/github", content=body, headers=headers)

    def pull_payload(self, action: str, number: int, head_sha: str, *, author: str = "alice",
                     association: str = "MEMBER") -> dict[str, Any]:  # fmt: skip
        payload = sent_now(github_payload("pull_request/opened.json"))
        payload["action"], payload["number"] = action, number
        payload["installation"] = {"id": INSTALLATION, "node_id": "x"}
        payload["repository"]["full_name"] = REPO
        pr = payload["pull_request"]
        pr["number"], pr["draft"], pr["author_association"] = number, False, association
        pr["user"]["login"], pr["user"]["type"] = author, "User"
        pr["head"]["sha"], pr["head"]["ref"], pr["head"]["repo"]["full_name"] = head_sha, f"topic-{number}", REPO
        pr["base"]["sha"], pr["base"]["ref"], pr["base"]["repo"]["full_name"] = self.base_sha, "main", REPO
        self.fake.add_pull(REPO, number, head_sha, f"topic-{number}", "main", self.base_sha, author, association)
        return payload

    def comment_payload(self, number: int, body: str, *, login: str = "maint") -> dict[str, Any]:
        payload = sent_now(github_payload("issue_comment/created.json"))
        payload["installation"] = {"id": INSTALLATION, "node_id": "x"}
        payload["repository"]["full_name"] = REPO
        payload["issue"]["number"] = number
        payload["issue"]["pull_request"] = {"url": f"{self.fake.base_url}/repos/{REPO}/pulls/{number}"}
        payload["comment"]["body"], payload["comment"]["user"]["login"] = body, login
        # Written now, stamped to the second as GitHub does (the sample's own time would predate every
        # head): the next second, so that it is after the head labgate heard of just before.
        payload["comment"]["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 1))
        payload["comment"]["user"]["type"], payload["comment"]["author_association"] = "User", "MEMBER"
        return payload

    def checks(self, sha: str) -> dict[str, dict[str, Any]]:
        """The newest check run of each name on a commit."""
        runs: dict[str, dict[str, Any]] = {}
        for run in self.fake.check_runs(REPO):
            if run["head_sha"] == sha:
                runs[run["name"]] = run
        return runs

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 150) -> None:
        wait_for(predicate, what, timeout_s, poll_s=0.2)

    def wait_completed(self, sha: str, names: set[str], timeout_s: float = 150) -> dict[str, dict[str, Any]]:
        def done() -> bool:
            runs = self.checks(sha)
            return names <= set(runs) and all(runs[n]["status"] == "completed" for n in names)

        self.wait(done, f"checks {names} completed on {sha[:12]}", timeout_s)
        return self.checks(sha)


PIPELINE_CHECKS = {"labgate / checkout", "labgate / build x86_64", "labgate / qemu-x86_64 unit"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("github")
    origin = make_git_repo(EXAMPLES / "hello", root / "origin")
    with FakeGitHub() as fake:
        fake.add_repo(REPO)
        fake.add_installation(INSTALLATION, [REPO])
        fake.set_permission(REPO, "maint", "write")
        fake.set_permission(REPO, "mallory", "read")
        (root / "app.pem").write_text(fake.private_key_pem)
        (root / "secret").write_text(SECRET)
        (root / "labgate.yaml").write_text(
            f"data_dir: {root / 'data'}\n"
            f"web: {{public_url: 'https://ci.example.org'}}\n"
            f"github: {{app_id: {fake.app_id}, private_key_file: {root / 'app.pem'}, "
            f"webhook_secret_file: {root / 'secret'}, api_url: '{fake.base_url}', write_interval_s: 0}}\n"
            f"trees:\n  - name: hello\n    url: {origin}\n"
            f"    staging_branches: [staging]\n    github: {{repo: {REPO}}}\n"
        )
        with running_labgate(root / "labgate.yaml") as services:
            yield World(
                fake, services, TestClient(create_app(services.runtime)), origin, git(origin, "rev-parse", "HEAD")
            )


def test_forged_signature_is_rejected_and_nothing_is_stored(world: World) -> None:
    payload = world.pull_payload("opened", 90, "a" * 40)
    answer = world.post("pull_request", payload, secret="not the secret")
    assert answer.status_code == 401
    unsigned = world.client.post("/hooks/github", content=b"{}", headers={"X-GitHub-Event": "ping"})
    assert unsigned.status_code == 401
    assert (
        world.client.post(
            "/hooks/github", content=b"x" * 10, headers={"Content-Length": str(26 * 1024 * 1024)}
        ).status_code
        == 413
    )


def test_trusted_pull_request_passes(world: World) -> None:
    sha = world.push_pull(1, PATCHES / "pass.patch")
    answer = world.post("pull_request", world.pull_payload("opened", 1, sha))
    assert answer.status_code == 202 and answer.json()["status"] == "accepted"
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    assert {runs[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}
    unit = runs["labgate / qemu-x86_64 unit"]
    assert unit["details_url"].startswith("https://ci.example.org/jobs/")
    assert "math" in unit["output"]["summary"]
    # Each check went queued -> in_progress -> completed, never backwards.
    updates = world.fake.requests_to("PATCH", rf"/repos/{REPO}/check-runs/{unit['id']}$")
    statuses = [r.json["status"] for r in updates]
    assert statuses == sorted(statuses, key=["queued", "in_progress", "completed"].index)


def test_fail_patch_fails_naming_the_test(world: World) -> None:
    sha = world.push_pull(2, PATCHES / "fail.patch")
    world.post("pull_request", world.pull_payload("opened", 2, sha))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    unit = runs["labgate / qemu-x86_64 unit"]
    assert unit["conclusion"] == "failure"
    assert "math.mul" in unit["output"]["title"]
    assert unit["output"]["summary"].index("math.mul") < unit["output"]["summary"].index("| test | result |")
    assert "expected 42, got" in unit["output"]["summary"]
    assert runs["labgate / build x86_64"]["conclusion"] == "success"

    # The Re-run button (check_run rerequested) repeats only the failed job.
    build_posts = len([r for r in world.fake.requests_to("POST", rf"/repos/{REPO}/check-runs$")
                       if r.json["name"] == "labgate / build x86_64"])  # fmt: skip
    rerun = sent_now(github_payload("check_run/rerequested.json"))
    rerun["installation"] = {"id": INSTALLATION, "node_id": "x"}
    rerun["repository"]["full_name"] = REPO
    rerun["check_run"]["head_sha"], rerun["check_run"]["id"] = sha, unit["id"]
    rerun["check_run"]["external_id"] = unit["external_id"]
    rerun["sender"]["login"], rerun["sender"]["type"] = "maint", "User"
    assert world.post("check_run", rerun).status_code == 202
    world.wait(lambda: world.checks(sha)["labgate / qemu-x86_64 unit"]["id"] != unit["id"]
               and world.checks(sha)["labgate / qemu-x86_64 unit"]["status"] == "completed", "re-run")  # fmt: skip
    again = world.checks(sha)["labgate / qemu-x86_64 unit"]
    assert again["conclusion"] == "failure"
    assert "Earlier attempt" in again["output"]["summary"]  # the first failure stays visible
    assert len([r for r in world.fake.requests_to("POST", rf"/repos/{REPO}/check-runs$")
                if r.json["name"] == "labgate / build x86_64"]) == build_posts  # fmt: skip


def test_untrusted_waits_is_approved_and_a_new_push_needs_a_new_approval(world: World) -> None:
    sha = world.push_pull(3, PATCHES / "pass.patch")
    world.post("pull_request", world.pull_payload("opened", 3, sha, author="eve", association="NONE"))
    world.wait(lambda: "labgate" in world.checks(sha), "the approval check")
    waiting = world.checks(sha)["labgate"]
    assert waiting["conclusion"] == "action_required"
    assert "/ok-to-test" in waiting["output"]["summary"]
    assert not (PIPELINE_CHECKS & set(world.checks(sha)))  # nothing ran

    # A quoted command does nothing; a reader without write permission cannot approve.
    world.post("issue_comment", world.comment_payload(3, "> /ok-to-test\nlooks fine to me"))
    world.post("issue_comment", world.comment_payload(3, "/ok-to-test", login="mallory"))
    world.wait(lambda: any("only users with" in c["body"] for c in world.fake.comments(REPO, 3)), "refusal")
    assert not (PIPELINE_CHECKS & set(world.checks(sha)))

    world.post("issue_comment", world.comment_payload(3, f"/ok-to-test {sha[:10]}"))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    assert {runs[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}
    approved = [r for r in world.fake.check_runs(REPO) if r["name"] == "labgate" and r["head_sha"] == sha][-1]
    assert approved["conclusion"] == "success" and "@maint" in approved["output"]["summary"]

    new_sha = world.push_pull(3, None, on=sha)
    world.post("pull_request", world.pull_payload("synchronize", 3, new_sha, author="eve", association="NONE"))
    world.wait(lambda: "labgate" in world.checks(new_sha), "the approval check of the new push")
    again = world.checks(new_sha)["labgate"]
    assert again["conclusion"] == "action_required"
    assert "needs a new approval" in again["output"]["summary"] and sha[:12] in again["output"]["summary"]
    assert not (PIPELINE_CHECKS & set(world.checks(new_sha)))


def test_synchronize_cancels_the_running_pipeline(world: World) -> None:
    # The first head's plan keeps its test running for a minute: the synchronize must find the pipeline
    # still running however slow the machine is (on a loaded one, a quick pipeline once finished first).
    git(world.origin, "checkout", "-q", "--detach", world.base_sha)
    plan = world.origin / ".labgate" / "plan.yaml"
    last = "        run: ./tests/test_skip\n"
    assert last in plan.read_text()
    plan.write_text(plan.read_text().replace(last, last + "      - name: still-running\n        run: sleep 60\n"))
    git(world.origin, "commit", "-qam", "plan: a test that runs for a minute")
    first = git(world.origin, "rev-parse", "HEAD")
    git(world.origin, "update-ref", "refs/pull/4/head", first)
    git(world.origin, "checkout", "-q", "main")
    world.post("pull_request", world.pull_payload("opened", 4, first))
    # Its test job's check run exists (queued at least): the cancel has a job of the first head's to end.
    world.wait(lambda: "labgate / qemu-x86_64 unit" in world.checks(first), "the first pipeline's test job")
    second = world.push_pull(4, None)  # a force-push: the new head has the quick plan again
    world.post("pull_request", world.pull_payload("synchronize", 4, second))
    runs = world.wait_completed(first, PIPELINE_CHECKS & set(world.checks(first)) | {"labgate / checkout"})
    cancelled = [r for r in runs.values() if r["conclusion"] == "cancelled"]
    assert cancelled, runs
    assert all(f"superseded by {second}" in r["output"]["summary"] for r in cancelled)
    # Whatever the cancelled jobs had running (sandbox, QEMU) is gone.
    job_dirs = [f"/work/job-{r['external_id']}/" for r in cancelled]

    def leftovers() -> list[str]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            found += [cmdline for d in job_dirs if d in cmdline]
        return found

    world.wait(lambda: not leftovers(), "the cancelled jobs' processes to end", timeout_s=20)
    # And nothing of them stays on the host: the terminated pool process's replacement releases its
    # loop disk, its /tmp tmpfs and its directory (workers/leftovers.py).
    work = world.services.runtime.data_dir / "worker" / "work"
    killed = [work / f"job-{r['external_id']}" for r in cancelled]

    def left_on_disk() -> list[str]:
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return [p for p in points for d in killed if p.startswith(f"{d}/")] + [str(d) for d in killed if d.exists()]

    world.wait(lambda: not left_on_disk(), "the cancelled jobs' mounts and directories to go", timeout_s=30)
    runs2 = world.wait_completed(second, PIPELINE_CHECKS)
    assert {runs2[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}


def test_redelivery_is_a_no_op(world: World) -> None:
    sha = world.push_pull(5, PATCHES / "pass.patch")
    payload = world.pull_payload("opened", 5, sha)
    first = world.post("pull_request", payload, delivery="delivery-5")
    second = world.post("pull_request", payload, delivery="delivery-5")
    assert first.json()["status"] == "accepted" and second.json()["status"] == "duplicate"
    world.wait_completed(sha, PIPELINE_CHECKS)
    checkouts = [r for r in world.fake.check_runs(REPO) if r["head_sha"] == sha and r["name"] == "labgate / checkout"]
    assert len(checkouts) == 1


def test_ignored_events_say_why(world: World) -> None:
    ping = sent_now(github_payload("ping/payload.json"))
    answer = world.post("ping", ping)
    assert answer.status_code == 202 and answer.json()["status"] in ("ignored", "accepted")
    assert world.post("status", github_payload("status/payload.json")).json()["reason"]
    malformed = world.client.post(
        "/hooks/github",
        content=b"{not json",
        headers={
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": "m-1",
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), b"{not json", hashlib.sha256).hexdigest(),
        },
    )
    assert malformed.status_code == 400


def test_untrusted_change_is_judged_by_the_base_plan(world: World) -> None:
    """A change must not rewrite the rules it is judged by: its own plan is not used."""
    git(world.origin, "checkout", "-q", "--detach", world.base_sha)
    plan = world.origin / ".labgate" / "plan.yaml"
    plan.write_text(plan.read_text() + "      - name: injected\n        run: echo from-the-change; exit 1\n")
    git(world.origin, "commit", "-qam", "plan: add a command")
    sha = git(world.origin, "rev-parse", "HEAD")
    git(world.origin, "update-ref", "refs/pull/6/head", sha)
    git(world.origin, "checkout", "-q", "main")
    world.post("pull_request", world.pull_payload("opened", 6, sha, author="eve", association="FIRST_TIMER"))
    world.wait(lambda: "labgate" in world.checks(sha), "the approval check")
    world.post("issue_comment", world.comment_payload(6, "/ok-to-test"))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    unit = runs["labgate / qemu-x86_64 unit"]
    assert unit["conclusion"] == "success" and "injected" not in unit["output"]["summary"]


def test_check_updates_survive_rate_limits_and_outages(world: World) -> None:
    world.fake.fail_secondary_rate_limit("POST", rf"/repos/{REPO}/check-runs", retry_after=1)
    world.fake.fail_next("PATCH", rf"/repos/{REPO}/check-runs/\d+", 502, times=2)
    world.fake.fail_next("POST", rf"/repos/{REPO}/check-runs", 429, headers={"Retry-After": "1"})
    sha = world.push_pull(7, PATCHES / "pass.patch")
    world.post("pull_request", world.pull_payload("opened", 7, sha))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    assert {runs[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}
    statuses = [r.status for r in world.fake.requests if "/check-runs" in r.path]
    assert {403, 429, 502} <= set(statuses)


def test_help_and_bot_comments(world: World) -> None:
    sha = world.push_pull(8, None)
    world.fake.add_pull(REPO, 8, sha, "topic-8", "main", world.base_sha, "alice", "MEMBER")
    world.post("issue_comment", world.comment_payload(8, "thanks!\n\n/help"))
    world.wait(lambda: any("/ok-to-test" in c["body"] for c in world.fake.comments(REPO, 8)), "the help reply")
    bot = world.comment_payload(8, "/retest")
    bot["comment"]["user"]["login"], bot["comment"]["user"]["type"] = "ci-bot[bot]", "Bot"
    world.post("issue_comment", bot)
    time.sleep(2)
    assert len(world.fake.comments(REPO, 8)) == 1


def test_speculative_merge_conflict_names_base_and_files(world: World) -> None:
    git(world.origin, "checkout", "-q", "--detach", world.base_sha)
    (world.origin / "src" / "greet.c").write_text(
        (world.origin / "src" / "greet.c").read_text() + "/* from the change */\n"
    )
    git(world.origin, "commit", "-qam", "greet: a comment")
    sha = git(world.origin, "rev-parse", "HEAD")
    git(world.origin, "update-ref", "refs/pull/9/head", sha)
    git(world.origin, "checkout", "-q", "main")
    (world.origin / "src" / "greet.c").write_text((world.origin / "src" / "greet.c").read_text() + "/* on main */\n")
    git(world.origin, "commit", "-qam", "greet: another comment")
    main_sha = git(world.origin, "rev-parse", "HEAD")
    try:
        world.post("pull_request", world.pull_payload("opened", 9, sha))
        runs = world.wait_completed(sha, {"labgate / checkout"})
        checkout = runs["labgate / checkout"]
        assert checkout["conclusion"] == "failure"
        assert f"merge conflict with main@{main_sha[:12]}: src/greet.c" in checkout["output"]["summary"]
    finally:
        git(world.origin, "update-ref", "refs/heads/main", world.base_sha)
        git(world.origin, "reset", "-q", "--hard", world.base_sha)


def test_staging_push_runs_post_merge_and_lists_new_failures_first(world: World) -> None:
    push = sent_now(github_payload("push/new-branch.json"))
    push["installation"] = {"id": INSTALLATION, "node_id": "x"}
    push["repository"]["full_name"] = REPO
    good = world.push_pull(10, PATCHES / "pass.patch")
    git(world.origin, "update-ref", "refs/heads/staging", good)
    push.update(ref="refs/heads/staging", before="0" * 40, after=good, created=True)
    world.post("push", push)
    first = world.wait_completed(good, PIPELINE_CHECKS)
    assert "First run on this branch" in first["labgate / qemu-x86_64 unit"]["output"]["summary"]

    bad = world.push_pull(11, PATCHES / "fail.patch", on=good)
    git(world.origin, "update-ref", "refs/heads/staging", bad)
    push.update(before=good, after=bad, created=False)
    world.post("push", push)
    second = world.wait_completed(bad, PIPELINE_CHECKS)
    summary = second["labgate / qemu-x86_64 unit"]["output"]["summary"]
    assert summary.startswith(f"**New failures since `{good[:12]}`")
    assert summary.index("math.mul") < summary.index("| test | result |")

    pushed_elsewhere = dict(push, ref="refs/heads/topic", after=bad)
    world.post("push", pushed_elsewhere)


def test_no_token_reaches_the_store_or_the_logs(world: World) -> None:
    assert world.fake.tokens_issued >= 1
    data_dir = world.services.runtime.data_dir
    for path in [*data_dir.glob("*.sqlite3*"), *(data_dir / "logs").glob("*.log")]:
        assert b"ghs_" not in path.read_bytes(), path


def test_compiler_warnings_on_changed_lines_become_annotations(world: World) -> None:
    git(world.origin, "checkout", "-q", "--detach", world.base_sha)
    source = world.origin / "src" / "mathx.c"
    source.write_text(source.read_text().replace("\treturn a + b;\n", "\tint unused_here;\n\treturn a + b;\n", 1))
    git(world.origin, "commit", "-qam", "mathx: a warning")
    sha = git(world.origin, "rev-parse", "HEAD")
    git(world.origin, "update-ref", "refs/pull/12/head", sha)
    git(world.origin, "checkout", "-q", "main")
    world.post("pull_request", world.pull_payload("opened", 12, sha))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    build = runs["labgate / build x86_64"]
    assert build["conclusion"] == "success"
    annotations = build["output"]["annotations"]
    assert [(a["path"], a["start_line"], a["annotation_level"]) for a in annotations] == [("src/mathx.c", 6, "warning")]
    assert "unused_here" in annotations[0]["message"]


def test_a_lost_answer_mid_sync_leaves_one_check_run_per_job(world: World) -> None:
    """GitHub creates the first check run of a pipeline but its answer is lost (a 502 from the edge
    after the fact). The report task fails mid-sync and is retried by Celery with backoff; every
    later sync looks the unanswered create up before posting. Exactly one check run per job, each
    in its final state."""
    sha = world.push_pull(31, PATCHES / "pass.patch")
    world.fake.lose_answer_next("POST", rf"/repos/{REPO}/check-runs", 502)
    world.post("pull_request", world.pull_payload("opened", 31, sha))
    runs = world.wait_completed(sha, PIPELINE_CHECKS)
    assert {runs[n]["conclusion"] for n in PIPELINE_CHECKS} == {"success"}
    mine = [r for r in world.fake.check_runs(REPO) if r["head_sha"] == sha]
    # One check run per job and the pipeline's summary, none doubled.
    assert sorted(r["name"] for r in mine) == sorted([*PIPELINE_CHECKS, "labgate / summary"])
    lost = [r for r in world.fake.requests_to("POST", rf"/repos/{REPO}/check-runs$") if r.status == 502]
    assert len(lost) == 1 and lost[0].json["head_sha"] == sha
