"""Acceptance: the GitHub Action's step and the GitLab template's job, read from their YAML and run in bash with the
environment each platform sets, against a real `labgate up` (web, control and job workers, git, the sandbox, QEMU)
testing examples/hello, which trusts two local OIDC issuers. pass.patch passes (exit 0, with a step summary or
a JUnit report); fail.patch fails (exit 1) naming math.mul. The four jobs run at once, as CI jobs would."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.actions.test_submit_script import (
    SCRIPT,
    git,
    github_env,
    github_step,
    gitlab_env,
    gitlab_job,
)
from tests.conftest import EXAMPLES, REPO_ROOT, make_git_repo
from tests.fakes.oidc_issuer import FakeOidcIssuer

pytestmark = pytest.mark.slow
AUDIENCE = "https://labgate.test"
PATCHES = EXAMPLES / "hello" / "patches"
GITHUB_REPOSITORY_ID, GITLAB_PROJECT_ID = "588298808", "20"  # FakeOidcIssuer's documented claims
RUN_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    secrets: tuple[str, ...]

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class Job:
    """One CI job running the action's step or the template's script."""

    process: subprocess.Popen[str]
    workdir: Path
    secrets: tuple[str, ...]  # what the job holds that must never be printed

    def result(self) -> Ran:
        stdout, stderr = self.process.communicate(timeout=RUN_TIMEOUT_S + 60)
        return Ran(self.process.returncode, stdout, stderr, self.workdir, self.secrets)


def clone_with(tree: Path, dest: Path, patch: Path, branch: str) -> str:
    """A CI checkout: the tree's history with `patch` committed on `branch` (its commit id)."""
    git(dest.parent, "clone", "-q", str(tree), dest.name)
    git(dest, "checkout", "-q", "-b", branch)
    git(dest, "am", "-q", str(patch))
    return git(dest, "rev-parse", "HEAD")


def start(argv: list[str], env: dict[str, str], workdir: Path, secrets: tuple[str, ...]) -> Job:
    process = subprocess.Popen(argv, env=env, cwd=workdir / "checkout", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    return Job(process, workdir, secrets)


def github_pull_request(root: Path, tree: Path, url: str, issuer: FakeOidcIssuer, patch: Path, run_id: str) -> Job:
    """The action's step on a pull_request event, checked out with fetch-depth: 0 (mode auto: patches)."""
    workdir = root / f"github-{patch.stem}"
    workdir.mkdir()
    head = clone_with(tree, workdir / "checkout", patch, f"pr-{patch.stem}")
    runner = github_env(workdir, "", issuer, GITHUB_EVENT_NAME="pull_request", GITHUB_BASE_REF="main",
                        GITHUB_HEAD_REF=f"pr-{patch.stem}", GITHUB_REF="refs/pull/1/merge", GITHUB_SHA=head,
                        GITHUB_RUN_ID=run_id)  # fmt: skip
    runner = {name: value for name, value in runner.items() if not name.startswith("LABGATE_")}
    argv, step_env = github_step({"url": url, "tree": "hello", "audience": AUDIENCE, "timeout": str(RUN_TIMEOUT_S)})
    env = {**runner, **step_env, "GITHUB_ACTION_PATH": str(REPO_ROOT / "actions" / "github")}
    return start(argv, env, workdir, (issuer.request_token,))


def gitlab_pipeline(root: Path, tree: Path, url: str, issuer: FakeOidcIssuer, patch: Path, pipeline_id: str, *,
                    merge_request: bool) -> Job:  # fmt: skip
    """The template's job: in a merge request pipeline (patches against CI_MERGE_REQUEST_DIFF_BASE_SHA,
    the script downloaded and checked against its pin), or on a pushed branch (its commit, from a copy)."""
    workdir = root / f"gitlab-{patch.stem}"
    workdir.mkdir()
    branch = f"mr-{patch.stem}"
    head = clone_with(tree, workdir / "checkout", patch, branch)
    claims = {"sha": head, "pipeline_id": pipeline_id, "ref": branch, "ref_path": f"refs/heads/{branch}",
              "pipeline_source": "merge_request_event" if merge_request else "push", "aud": AUDIENCE}  # fmt: skip
    token = issuer.mint(claims)  # what id_tokens: LABGATE_ID_TOKEN: aud: $LABGATE_AUDIENCE gives the job
    more = {"CI_COMMIT_SHA": head, "CI_COMMIT_REF_NAME": branch, "CI_PIPELINE_ID": pipeline_id,
            "CI_PROJECT_DIR": str(workdir / "checkout")}  # fmt: skip
    if merge_request:
        more |= {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "1",
                 "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
                 "CI_MERGE_REQUEST_DIFF_BASE_SHA": git(tree, "rev-parse", "main")}  # fmt: skip
    else:
        git(workdir / "checkout", "push", "-q", "origin", f"{branch}:refs/heads/{branch}")  # labgate fetches it
    env = {name: value for name, value in gitlab_env(workdir, "", token, **more).items()
           if not name.startswith("LABGATE_") or name == "LABGATE_ID_TOKEN"}  # fmt: skip
    project = {"LABGATE_URL": url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE,
               "LABGATE_TIMEOUT": str(RUN_TIMEOUT_S)}  # fmt: skip
    if merge_request:
        project["LABGATE_SUBMIT_URL"] = SCRIPT.as_uri()
    else:
        project["LABGATE_SUBMIT_PATH"] = str(SCRIPT)
    spec = gitlab_job()
    full = {**env, **{name: str(value) for name, value in spec["variables"].items()}, **project}
    return start(["bash", "-e", "-c", "\n".join(spec["script"])], full, workdir, (token,))


@dataclass
class Runs:
    github_pass: Ran
    github_fail: Ran
    gitlab_pass: Ran
    gitlab_fail: Ran
    labgate_output: str  # its own output and its logs


def _config(root: Path, port: int, tree: Path, github: FakeOidcIssuer, gitlab: FakeOidcIssuer) -> Path:
    config = {
        "data_dir": str(root / "data"), "web": {"host": "127.0.0.1", "port": port},
        "caps": {"max_build_s": 120, "max_job_s": 120},
        "trees": [{"name": "hello", "url": str(tree), "branches": ["main"]}],
        "oidc": {"audience": AUDIENCE, "issuers": [{"url": github.url}, {"url": gitlab.url}], "rules": [
            # Pull and merge request events run a branch's code someone else may have written: a rule
            # matches them only when it names them (bot/oidc/policy.py).
            {"issuer": github.url, "tree": "hello", "tier": "qemu", "repository_ids": [GITHUB_REPOSITORY_ID],
             "event_names": ["pull_request", "push"]},
            {"issuer": gitlab.url, "tree": "hello", "tier": "qemu", "project_ids": [GITLAB_PROJECT_ID],
             "event_names": ["merge_request_event", "push"]},
        ]},
    }  # fmt: skip
    path = root / "labgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _wait_until_up(up: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            assert time.monotonic() < deadline and up.poll() is None, "labgate up did not come up"
            time.sleep(0.3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("actions")
    tree = make_git_repo(EXAMPLES / "hello", root / "hello")
    with FakeOidcIssuer("github", audience=AUDIENCE) as github, FakeOidcIssuer("gitlab", audience=AUDIENCE) as gitlab:
        # What GitHub's runner mints for a pull_request job of the repository the rule names.
        github.job_claims = {"event_name": "pull_request", "ref": "refs/pull/1/merge", "base_ref": "main"}
        port = _free_port()
        config = _config(root, port, tree, github, gitlab)
        up = subprocess.Popen([sys.executable, "-m", "bot.cli", "up", "--config", str(config)], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            _wait_until_up(up, port)
            url = f"http://127.0.0.1:{port}"
            jobs = [
                github_pull_request(root, tree, url, github, PATCHES / "pass.patch", "1001"),
                github_pull_request(root, tree, url, github, PATCHES / "fail.patch", "1002"),
                gitlab_pipeline(root, tree, url, gitlab, PATCHES / "pass.patch", "2001", merge_request=True),
                gitlab_pipeline(root, tree, url, gitlab, PATCHES / "fail.patch", "2002", merge_request=False),
            ]
            results = [job.result() for job in jobs]
        finally:
            up.send_signal(signal.SIGTERM)
            output, _ = up.communicate(timeout=120)
        logs = [path.read_text(errors="replace") for path in (root / "data" / "logs").rglob("*") if path.is_file()]
        assert logs, "labgate up keeps logs in data/logs"
        github_pass, github_fail, gitlab_pass, gitlab_fail = results
        yield Runs(github_pass, github_fail, gitlab_pass, gitlab_fail, labgate_output="\n".join([output, *logs]))


def test_github_pull_request_with_pass_patch_passes_with_a_summary(runs: Runs) -> None:
    ran = runs.github_pass
    assert ran.returncode == 0, ran
    assert "1 patch(es) onto hello main" in ran.stdout and "labgate: pass" in ran.stdout
    summary = (ran.workdir / "step_summary.md").read_text()
    assert summary.startswith("### labgate: pass\n") and "| job | state | result |" in summary
    assert "/pipelines/" in summary


def test_github_pull_request_with_fail_patch_fails_naming_math_mul(runs: Runs) -> None:
    ran = runs.github_fail
    assert ran.returncode == 1, ran
    assert "math.mul" in ran.stdout
    assert "math.mul" in (ran.workdir / "step_summary.md").read_text()


def test_gitlab_merge_request_with_pass_patch_passes_with_a_junit_report(runs: Runs) -> None:
    ran = runs.gitlab_pass
    assert ran.returncode == 0, ran
    suite = ET.parse(ran.workdir / "checkout" / "labgate-junit.xml").getroot()
    assert int(suite.get("tests", "0")) >= 3 and suite.get("failures") == "0" and suite.get("errors") == "0"


def test_gitlab_push_with_fail_patch_fails_naming_math_mul(runs: Runs) -> None:
    ran = runs.gitlab_fail
    assert ran.returncode == 1, ran
    assert "math.mul" in ran.stdout
    suite = ET.parse(ran.workdir / "checkout" / "labgate-junit.xml").getroot()
    failures = [failure.get("message", "") for failure in suite.iter("failure")]
    assert failures and any("math.mul" in message for message in failures)


def test_no_token_is_printed_by_the_jobs_or_by_labgate(runs: Runs) -> None:
    ran = (runs.github_pass, runs.github_fail, runs.gitlab_pass, runs.gitlab_fail)
    printed = [runs.labgate_output] + [job.stdout + job.stderr for job in ran]
    for secret in (secret for job in ran for secret in job.secrets):
        assert secret and not any(secret in text for text in printed)
