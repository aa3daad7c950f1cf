"""actions/labgate-submit run as a CI job runs it: a subprocess with the environment GitHub Actions or GitLab CI
sets, against FakeLabgate (POST and GET /api/v1/submissions as bot/web/submissions.py answers them, served on
127.0.0.1, recording what it was asked) and FakeOidcIssuer's runner token endpoint. The action's and the
template's own steps are read from their YAML and run in bash, as the platforms run them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import REPO_ROOT
from tests.fakes.oidc_issuer import FakeOidcIssuer
from tests.fakes.served import RequestLog, ServedFake

SCRIPT = REPO_ROOT / "actions" / "labgate-submit"
ACTION = REPO_ROOT / "actions" / "github" / "action.yml"
TEMPLATE = REPO_ROOT / "actions" / "gitlab" / "labgate.gitlab-ci.yml"
API = "/api/v1/submissions"
AUDIENCE = "https://labgate.example"
GITHUB_SHA = "a501fa6b" + "0" * 32  # the sha FakeOidcIssuer's GitHub tokens carry
GITLAB_SHA = "714a629c0b401fdce83e847fc9589983fc6f46bc"
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "Example Dev", "GIT_AUTHOR_EMAIL": "dev@example.org",
                "GIT_COMMITTER_NAME": "Example Dev", "GIT_COMMITTER_EMAIL": "dev@example.org"}  # fmt: skip


# ---- a labgate that answers as the real one does, and records ----------------------------------------------


@dataclass(frozen=True)
class Asked:
    method: str
    path: str
    query: dict[str, str]
    authorization: str
    body: bytes


def job(kind: str, name: str, state: str = "done", verdict: str = "pass", title: str = "pass") -> dict[str, Any]:
    return {"name": name, "kind": kind, "state": state, "verdict": verdict, "title": title,
            "url": f"http://127.0.0.1:9/pipelines/3/jobs/{kind}-{len(name)}"}  # fmt: skip


def status(version: str, state: str, jobs: list[dict[str, Any]], verdict: str | None = None,
           summary: str = "labgate: running") -> dict[str, Any]:  # fmt: skip
    """GET /api/v1/submissions/{id}'s answer (bot/intake/submissions.py submission_status)."""
    return {"id": 7, "version": version, "state": state, "verdict": verdict, "tree": "hello",
            "identity": "github repository nickolashkraus/flask-oidc (id 588298808)", "pipeline_id": 3,
            "page_url": "http://127.0.0.1:9/pipelines/3", "jobs": jobs, "summary": summary}  # fmt: skip


RUNNING = status(
    "v1", "running", [job("checkout", "checkout"), job("build", "x86_64", "running", "pending", "running")]
)
PASSED = status("v2", "done", [job("checkout", "checkout"), job("build", "x86_64"),
                               job("test", "qemu-x86_64 unit", title="pass (12 pass)")],
                "pass", "labgate: pass")  # fmt: skip
FAILED = status("v3", "done", [job("checkout", "checkout"), job("build", "x86_64"),
                               job("test", "qemu-x86_64 unit", verdict="fail", title="fail: math.mul")],
                "fail", "labgate: fail: 1 failing (test qemu-x86_64 unit: fail: math.mul)")  # fmt: skip


class FakeLabgate(ServedFake):
    """POST answers `post_answers` in turn (then the last again); GET answers `statuses` in turn (then the last
    again) to the read token the POST gave, and 404 to any other token, as labgate does."""

    def __init__(self) -> None:
        self.read_token = secrets.token_urlsafe(32)
        self.post_answers: list[tuple[int, dict[str, Any], dict[str, str]]] = [(201, self.accepted(), {})]
        self.statuses: list[dict[str, Any]] = [RUNNING, PASSED]
        self.get_failures = 0  # the first GETs with the read token answer 502, as a restarting proxy would
        self._log: RequestLog[Asked] = RequestLog()
        self.serve(Starlette(routes=[Route(API, self._post, methods=["POST"]),
                                     Route(API + "/{id}", self._get, methods=["GET"])]), "FakeLabgate")  # fmt: skip

    def accepted(self) -> dict[str, Any]:
        return {"id": 7, "status_url": f"https://elsewhere.example{API}/7", "read_token": self.read_token}

    @property
    def url(self) -> str:
        return self.base_url

    def asked(self, method: str | None = None) -> list[Asked]:
        return [asked for asked in self._log.all() if method is None or asked.method == method]

    async def _record(self, request: Request) -> None:
        self._log.append(Asked(request.method, request.url.path, dict(request.query_params),
                               request.headers.get("authorization", ""), await request.body()))  # fmt: skip

    async def _post(self, request: Request) -> Response:
        await self._record(request)
        index = min(len(self.asked("POST")), len(self.post_answers)) - 1
        code, body, headers = self.post_answers[index]
        return JSONResponse(body, code, headers)

    async def _get(self, request: Request) -> Response:
        await self._record(request)
        if request.headers.get("authorization") != f"Bearer {self.read_token}":
            return JSONResponse({"error": "not found"}, 404)
        gets = [asked for asked in self.asked("GET") if asked.authorization == f"Bearer {self.read_token}"]
        if len(gets) <= self.get_failures:
            return Response(b"<html>Bad Gateway</html>", 502)
        gets = gets[self.get_failures :]
        answer = self.statuses[min(len(gets), len(self.statuses)) - 1]
        if request.query_params.get("since") == answer["version"]:
            await asyncio.sleep(float(request.query_params.get("wait", "0")))  # a long poll nothing moved
        return JSONResponse(answer)


@pytest.fixture
def labgate() -> Iterator[FakeLabgate]:
    with FakeLabgate() as fake:
        yield fake


@pytest.fixture
def github_issuer() -> Iterator[FakeOidcIssuer]:
    with FakeOidcIssuer("github", audience=AUDIENCE) as issuer:
        yield issuer


@pytest.fixture
def gitlab_issuer() -> Iterator[FakeOidcIssuer]:
    with FakeOidcIssuer("gitlab", audience=AUDIENCE) as issuer:
        yield issuer


# ---- the platforms' environments -----------------------------------------------------------------------------


def plain_env(tmp_path: Path) -> dict[str, str]:
    """What any runner has: a PATH, a HOME; nothing of this test process (no proxy, no token)."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}


def github_env(tmp_path: Path, labgate_url: str, issuer: FakeOidcIssuer, **more: str) -> dict[str, str]:
    """A GitHub Actions step's environment on a push, with `permissions: id-token: write`."""
    return {**plain_env(tmp_path), "GITHUB_ACTIONS": "true", "CI": "true", "GITHUB_EVENT_NAME": "push",
            "GITHUB_SHA": GITHUB_SHA, "GITHUB_REF": "refs/heads/main", "GITHUB_REPOSITORY": "nickolashkraus/flask-oidc",
            "GITHUB_RUN_ID": "3989419862", "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary.md"),
            "ACTIONS_ID_TOKEN_REQUEST_URL": issuer.id_token_request_url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": issuer.request_token,
            "LABGATE_URL": labgate_url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE, **more}  # fmt: skip


def gitlab_env(tmp_path: Path, labgate_url: str, token: str, **more: str) -> dict[str, str]:
    """A GitLab CI job's environment on a push, with `id_tokens: LABGATE_ID_TOKEN:`."""
    return {**plain_env(tmp_path), "GITLAB_CI": "true", "CI": "true", "CI_PIPELINE_SOURCE": "push",
            "CI_COMMIT_SHA": GITLAB_SHA, "CI_COMMIT_REF_NAME": "main", "CI_PROJECT_PATH": "my-group/my-project",
            "CI_PROJECT_DIR": str(tmp_path), "LABGATE_ID_TOKEN": token,
            "LABGATE_URL": labgate_url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE, **more}  # fmt: skip


def run_script(env: Mapping[str, str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT)], env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, check=False)  # fmt: skip


def assert_no_secrets(done: subprocess.CompletedProcess[str], *secrets_held: str) -> None:
    for secret in secrets_held:
        assert secret and secret not in done.stdout and secret not in done.stderr


def bearer(asked: Asked) -> str:
    assert asked.authorization.startswith("Bearer ")
    return asked.authorization.removeprefix("Bearer ")


# ---- the action's and the template's own steps, from their YAML ----------------------------------------------

_INPUT = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}\}")


def github_step(inputs: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The action's one step as the runner runs it: its `run` in bash (`-e`, as `shell: bash` does) and its
    env with the inputs substituted (an input left out takes the action's default)."""
    action = yaml.safe_load(ACTION.read_text())
    declared = action["inputs"]
    assert set(inputs) <= set(declared), f"not inputs of the action: {set(inputs) - set(declared)}"
    missing = [name for name, spec in declared.items() if spec.get("required") and name not in inputs]
    assert not missing, f"required inputs not given: {missing}"
    (step,) = action["runs"]["steps"]
    assert action["runs"]["using"] == "composite" and step["shell"] == "bash"
    assert "${{" not in step["run"], "inputs reach the script by env only"

    def value(match: re.Match[str]) -> str:
        return inputs.get(match.group(1), str(declared[match.group(1)].get("default", "")))

    env = {name: _INPUT.sub(value, str(text)) for name, text in step["env"].items()}
    assert not any("${{" in text for text in env.values())
    return ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], env


def run_github_action(inputs: Mapping[str, str], env: Mapping[str, str], cwd: Path,
                      timeout_s: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv, step_env = github_step(inputs)
    full = {**env, **step_env, "GITHUB_ACTION_PATH": str(ACTION.parent)}
    return subprocess.run(argv, env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)


def gitlab_job() -> dict[str, Any]:
    job_spec: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())[".labgate"]
    return job_spec


def run_gitlab_job(variables: Mapping[str, str], env: Mapping[str, str], cwd: Path,
                   timeout_s: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The `.labgate` job's script as the runner runs it: one bash session (`-e`), the template's variables
    under the project's, the id_tokens: variable (in `env`, minted for the audience the job names)."""
    spec = gitlab_job()
    full = {**env, **{name: str(value) for name, value in spec["variables"].items()}, **variables}
    assert spec["id_tokens"] == {"LABGATE_ID_TOKEN": {"aud": "$LABGATE_AUDIENCE"}}
    assert "LABGATE_ID_TOKEN" in env
    script = "\n".join(spec["script"])
    return subprocess.run(["bash", "-e", "-c", script], env=full, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, check=False)  # fmt: skip


# ---- git ---------------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


def commit_file(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit_file(path, "README", "hello\n", "import")
    return path


# ---- GitHub ------------------------------------------------------------------------------------------------


def test_github_without_id_token_variables_says_permissions_and_forks(
    tmp_path: Path,
    labgate: FakeLabgate,
    github_issuer: FakeOidcIssuer,
) -> None:
    env = github_env(tmp_path, labgate.url, github_issuer)
    del env["ACTIONS_ID_TOKEN_REQUEST_URL"], env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    done = run_script(env, tmp_path)
    assert done.returncode == 2, done
    assert "permissions: id-token: write" in done.stderr
    assert "fork" in done.stderr and "pull_request_target" in done.stderr and "GitHub App" in done.stderr
    assert labgate.asked() == [] and github_issuer.requests() == []


def test_github_push_submits_its_commit_and_passes_with_a_step_summary(
    tmp_path: Path,
    labgate: FakeLabgate,
    github_issuer: FakeOidcIssuer,
) -> None:
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 0, done
    # The runner was asked for a token for labgate's audience, with its request token.
    (token_request,) = github_issuer.requests_to("/token")
    assert token_request.query == {"api-version": "2.0", "audience": AUDIENCE}
    assert token_request.headers["authorization"] == f"Bearer {github_issuer.request_token}"
    # labgate got that token and the job's own commit; it was then asked with the read token only, long-polled
    # from the version it last answered, at LABGATE_URL (never at the status_url the answer names).
    post, *gets = labgate.asked()
    assert post.path == API and json.loads(post.body) == {"tree": "hello", "base_branch": "main", "sha": GITHUB_SHA}
    id_token = bearer(post)
    assert id_token.count(".") == 2
    assert [(get.path, get.query, bearer(get)) for get in gets] == [
        (f"{API}/7", {}, labgate.read_token),
        (f"{API}/7", {"wait": "30", "since": "v1"}, labgate.read_token),
    ]
    assert "testing against main" in done.stdout  # LABGATE_BASE unset, no pull request: said so
    assert "labgate: build x86_64: running" in done.stdout
    assert "labgate: test qemu-x86_64 unit: done: pass (12 pass)" in done.stdout
    assert "labgate: pass" in done.stdout and "http://127.0.0.1:9/pipelines/3" in done.stdout
    summary = (tmp_path / "step_summary.md").read_text()
    assert summary.startswith("### labgate: pass\n")
    assert "| [test qemu-x86_64 unit](http://127.0.0.1:9/pipelines/3/jobs/test-16) | done | pass (12 pass) |" in summary
    assert "(http://127.0.0.1:9/pipelines/3)" in summary
    assert_no_secrets(done, id_token, labgate.read_token, github_issuer.request_token)


def test_a_fail_verdict_exits_1_naming_the_failing_job(tmp_path: Path, labgate: FakeLabgate,
                                                       github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [FAILED]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 1, done
    assert "labgate: test qemu-x86_64 unit: done: fail: math.mul" in done.stdout
    assert "labgate: fail: 1 failing (test qemu-x86_64 unit: fail: math.mul)" in done.stdout
    assert "| fail: math.mul |" in (tmp_path / "step_summary.md").read_text()


def test_the_runner_refusing_a_token_is_a_permissions_error(tmp_path: Path, labgate: FakeLabgate,
                                                            github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    env = github_env(tmp_path, labgate.url, github_issuer, ACTIONS_ID_TOKEN_REQUEST_TOKEN="stale")
    done = run_script(env, tmp_path)
    assert done.returncode == 2 and "HTTP 401" in done.stderr and "id-token: write" in done.stderr
    assert labgate.asked() == []
    assert_no_secrets(done, "stale")


@pytest.mark.parametrize(("code", "error", "where"), [
    (401, "token: audience: https://github.com/nickolashkraus is not https://labgate.example", "LABGATE_AUDIENCE"),
    (403, "no rule lets github repository 588298808 (owner 14130403) at refs/heads/x submit to hello", "oidc.rules"),
    (404, "tree hellx: labgate tests no tree of that name", "LABGATE_TREE"),
    (422, "base_branch next: not a branch labgate tests of hello (one of: main)", "LABGATE_BASE"),
])  # fmt: skip
def test_a_refusal_shows_labgates_message_and_where_to_look(code: int, error: str, where: str, tmp_path: Path,
                                                           labgate: FakeLabgate,
                                                           github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.post_answers = [(code, {"error": error}, {})]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 2, done
    assert f"labgate refused the submission (HTTP {code}): {error}" in done.stderr and where in done.stderr
    assert len(labgate.asked("POST")) == 1 and labgate.asked("GET") == []  # a refusal is not retried


def test_503_is_asked_again_with_the_same_token_then_exits_3(tmp_path: Path, labgate: FakeLabgate,
                                                           github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.post_answers = [(503, {"error": "the store is unavailable; retry with the same token"},
                             {"Retry-After": "1"})]  # fmt: skip
    done = run_script(github_env(tmp_path, labgate.url, github_issuer, LABGATE_TIMEOUT="2.5"), tmp_path)
    assert done.returncode == 3, done
    assert "HTTP 503" in done.stderr and "the store is unavailable; retry with the same token" in done.stderr
    posts = labgate.asked("POST")
    assert len(posts) >= 2 and len({post.authorization for post in posts}) == 1  # the replay is the same submission
    assert len(github_issuer.requests_to("/token")) == 1


def test_a_503_then_an_answer_goes_on(tmp_path: Path, labgate: FakeLabgate, github_issuer: FakeOidcIssuer) -> None:
    labgate.post_answers = [(503, {"error": "busy"}, {"Retry-After": "-5"}), (200, labgate.accepted(), {})]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 0, done
    assert "cannot take it now (HTTP 503): busy" in done.stdout


def test_a_status_answer_that_fails_is_asked_again(tmp_path: Path, labgate: FakeLabgate,
                                                   github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.get_failures = 1
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 0, done
    assert "labgate answered HTTP 502: <html>Bad Gateway</html>; again in 2 s" in done.stdout
    assert len(labgate.asked("POST")) == 1  # the status is asked again, the submission is not made again


def test_a_summary_that_cannot_be_written_leaves_the_verdict(tmp_path: Path, labgate: FakeLabgate,
                                                             github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [FAILED]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer, GITHUB_STEP_SUMMARY=str(tmp_path)), tmp_path)
    assert done.returncode == 1, done
    assert f"the job summary cannot be written to {tmp_path}" in done.stderr


def test_labgate_unreachable_exits_3(tmp_path: Path, github_issuer: FakeOidcIssuer) -> None:
    with FakeLabgate() as gone:
        url = gone.url
    done = run_script(github_env(tmp_path, url, github_issuer, LABGATE_TIMEOUT="1"), tmp_path)
    assert done.returncode == 3, done
    assert f"labgate is unreachable at {url}" in done.stderr


def test_no_verdict_before_the_timeout_exits_3_with_the_page(tmp_path: Path, labgate: FakeLabgate,
                                                            github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [RUNNING]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer, LABGATE_TIMEOUT="2"), tmp_path)
    assert done.returncode == 3, done
    assert "no verdict within LABGATE_TIMEOUT=2 s: submission 7 is running" in done.stderr
    assert "http://127.0.0.1:9/pipelines/3" in done.stderr


def test_a_finished_submission_without_a_verdict_exits_3(tmp_path: Path, labgate: FakeLabgate,
                                                         github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [status("v9", "done", [], "error", "labgate: not tested: tree hello is no longer configured")]
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 3, done
    assert "labgate: not tested: tree hello is no longer configured" in done.stdout
    assert "no verdict" in done.stderr


def test_the_token_never_follows_a_redirect(tmp_path: Path, labgate: FakeLabgate,
                                            github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    with FakeLabgate() as elsewhere:
        labgate.post_answers = [(307, {}, {"Location": f"{elsewhere.url}{API}"})]
        done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
        assert done.returncode == 2, done
        assert "redirect" in done.stderr and "LABGATE_URL" in done.stderr
        assert elsewhere.asked() == []


@pytest.mark.parametrize("url", ["http://labgate.example.org", "ftp://127.0.0.1", "https://user:pw@labgate.example",
                                 "https://labgate.example/?x=1", "labgate.example"])  # fmt: skip
def test_the_token_goes_only_over_tls_or_to_this_machine(url: str, tmp_path: Path,
                                                         github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    done = run_script(github_env(tmp_path, url, github_issuer), tmp_path)
    assert done.returncode == 2, done
    assert "LABGATE_URL" in done.stderr
    assert github_issuer.requests() == []  # not even a token was asked for


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LABGATE_TREE", "", "LABGATE_TREE is not set"),
    ("LABGATE_AUDIENCE", "", "LABGATE_AUDIENCE is not set"),
    ("LABGATE_MODE", "diff", "LABGATE_MODE diff: one of commit, patches, auto"),
    ("LABGATE_TIMEOUT", "soon", "LABGATE_TIMEOUT soon"),
    ("GITHUB_SHA", "main", "commit mode: GITHUB_SHA is not a commit id"),
    ("GITHUB_ACTIONS", "", "neither GITHUB_ACTIONS nor GITLAB_CI"),
])  # fmt: skip
def test_bad_settings_exit_2_naming_the_variable(
    name: str,
    value: str,
    message: str,
    tmp_path: Path,
    labgate: FakeLabgate,
    github_issuer: FakeOidcIssuer,
) -> None:
    done = run_script(github_env(tmp_path, labgate.url, github_issuer, **{name: value}), tmp_path)
    assert done.returncode == 2, done
    assert message in done.stderr
    assert labgate.asked() == []


def test_text_from_labgate_cannot_write_workflow_commands_or_markup(tmp_path: Path, labgate: FakeLabgate,
                                                                   github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    # A job's title carries a test's name, which the change under test chooses.
    evil = "fail: x\n::add-mask::abc\r\n::error title=pwned::y\x1b[2J | <img src=x> [z](http://evil)"
    labgate.statuses = [status("v1", "done", [job("test", "qemu unit\n::stop-commands::t", verdict="fail",
                                                  title=evil)], "fail", evil)]  # fmt: skip
    done = run_script(github_env(tmp_path, labgate.url, github_issuer), tmp_path)
    assert done.returncode == 1, done
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if line.lstrip().startswith("::")]
    assert "\x1b" not in done.stdout
    summary = (tmp_path / "step_summary.md").read_text()
    assert re.search(r"(?<!\\)<", summary) is None  # no HTML: every < is escaped
    assert "\\[z\\](http://evil)" in summary  # no link: its brackets are escaped
    row = next(line for line in summary.splitlines() if "qemu unit" in line)
    assert row.count(" | ") == 2  # the title's | is escaped: three cells


def test_pull_request_sends_its_commits_as_patches_against_the_merge_base(
    tmp_path: Path,
    labgate: FakeLabgate,
    github_issuer: FakeOidcIssuer,
) -> None:
    upstream = new_repo(tmp_path / "upstream")
    git(upstream, "branch", "release")
    git(tmp_path, "clone", "-q", str(upstream), "clone")  # actions/checkout with fetch-depth: 0
    clone = tmp_path / "clone"
    git(clone, "checkout", "-q", "-b", "feature", "origin/release")
    commit_file(clone, "a.c", "int a;\n", "add a")
    commit_file(clone, "b.c", "int b;\n", "add b")
    git(upstream, "checkout", "-q", "release")
    commit_file(upstream, "later.c", "int later;\n", "release moves on")  # not the pull request's
    git(clone, "fetch", "-q", "origin")
    expected = git(clone, "format-patch", "--stdout", "origin/release~1..HEAD")
    env = github_env(tmp_path, labgate.url, github_issuer, GITHUB_EVENT_NAME="pull_request", GITHUB_BASE_REF="release",
                     GITHUB_HEAD_REF="feature")  # fmt: skip
    done = run_script(env, clone)
    assert done.returncode == 0, done
    body = json.loads(labgate.asked("POST")[0].body)
    assert body["base_branch"] == "release"  # the pull request's base branch, when LABGATE_BASE is not set
    assert [patch["name"] for patch in body["patches"]] == ["0001-add-a.patch", "0002-add-b.patch"]
    one_by_one = [mbox.strip() for mbox in re.split(r"\n(?=From [0-9a-f]{40} )", expected)]
    assert [patch["mbox"].strip() for patch in body["patches"]] == one_by_one
    assert "sha" not in body and "2 patch(es) onto hello release" in done.stdout


def test_pull_request_as_its_merge_commit_sends_its_own_commits(tmp_path: Path, labgate: FakeLabgate,
                                                                github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    # actions/checkout on pull_request checks out refs/pull/N/merge: the base's tip merged with the head.
    upstream = new_repo(tmp_path / "upstream")
    git(tmp_path, "clone", "-q", str(upstream), "clone")
    clone = tmp_path / "clone"
    git(clone, "checkout", "-q", "-b", "feature")
    commit_file(clone, "a.c", "int a;\n", "add a")
    commit_file(upstream, "later.c", "int later;\n", "main moves on")
    git(clone, "fetch", "-q", "origin")
    git(clone, "checkout", "-q", "--detach", "origin/main")
    git(clone, "merge", "-q", "--no-ff", "-m", "Merge feature into main", "feature")
    env = github_env(tmp_path, labgate.url, github_issuer, GITHUB_EVENT_NAME="pull_request", GITHUB_BASE_REF="main",
                     GITHUB_SHA=git(clone, "rev-parse", "HEAD"))  # fmt: skip
    done = run_script(env, clone)
    assert done.returncode == 0, done
    (patch,) = json.loads(labgate.asked("POST")[0].body)["patches"]
    assert patch["name"] == "0001-add-a.patch" and "later.c" not in patch["mbox"]


def test_pull_request_patches_need_the_base_in_the_clone(tmp_path: Path, labgate: FakeLabgate,
                                                         github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    repo = new_repo(tmp_path / "repo")
    env = github_env(tmp_path, labgate.url, github_issuer, GITHUB_EVENT_NAME="pull_request", GITHUB_BASE_REF="main")
    done = run_script(env, repo)
    assert done.returncode == 2, done
    assert "origin/main is not in this clone" in done.stderr and "fetch-depth: 0" in done.stderr
    assert labgate.asked() == []


# ---- GitLab ------------------------------------------------------------------------------------------------


def test_gitlab_commit_fails_with_a_junit_report(tmp_path: Path, labgate: FakeLabgate,
                                                 gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [RUNNING, FAILED]
    token = gitlab_issuer.mint()
    done = run_script(gitlab_env(tmp_path, labgate.url, token), tmp_path)
    assert done.returncode == 1, done
    post = labgate.asked("POST")[0]
    assert bearer(post) == token
    assert json.loads(post.body) == {"tree": "hello", "base_branch": "main", "sha": GITLAB_SHA}
    suite = ET.parse(tmp_path / "labgate-junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "3" and suite.get("failures") == "1"
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["checkout", "build x86_64", "test qemu-x86_64 unit"]
    failure = cases["test qemu-x86_64 unit"].find("failure")
    assert failure is not None and failure.get("message") == "fail: math.mul"
    assert cases["checkout"].find("failure") is None
    assert not (tmp_path / "step_summary.md").exists()
    assert "labgate: fail: 1 failing (test qemu-x86_64 unit: fail: math.mul)" in done.stdout
    assert_no_secrets(done, token, labgate.read_token)


def test_gitlab_junit_holds_no_character_xml_cannot(tmp_path: Path, labgate: FakeLabgate,
                                                    gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [status("v1", "done", [job("test", "unit\x00\x07", verdict="fail", title="fail: \x1b<&>\x0c")],
                               "fail", "labgate: fail")]  # fmt: skip
    done = run_script(gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint()), tmp_path)
    assert done.returncode == 1, done
    failure = ET.parse(tmp_path / "labgate-junit.xml").getroot().find("testcase/failure")
    assert failure is not None and failure.get("message") == "fail:  <&>"


def test_gitlab_junit_tells_errors_and_skips_from_failures(tmp_path: Path, labgate: FakeLabgate,
                                                           gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [status("v1", "done", [job("checkout", "checkout"), job("build", "arm64", verdict="warning",
                                                                               title="error: worker-lost"),
                                              job("test", "qemu-arm64 unit", verdict="neutral", title="skip"),
                                              job("test", "board unit", verdict="cancelled", title="cancelled")],
                               "error", "labgate: not tested: worker-lost")]  # fmt: skip
    done = run_script(gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint()), tmp_path)
    assert done.returncode == 3, done  # no verdict on the change: not a fail
    suite = ET.parse(tmp_path / "labgate-junit.xml").getroot()
    counts = [suite.get(name) for name in ("tests", "failures", "errors", "skipped")]
    assert counts == ["4", "0", "1", "2"]
    error = suite.find("testcase[@name='build arm64']/error")
    assert error is not None and error.get("message") == "error: worker-lost"


def test_gitlab_without_its_id_token_names_id_tokens(tmp_path: Path, labgate: FakeLabgate) -> None:
    env = gitlab_env(tmp_path, labgate.url, "")
    done = run_script(env, tmp_path)
    assert done.returncode == 2, done
    assert "LABGATE_ID_TOKEN is not set" in done.stderr and "id_tokens: LABGATE_ID_TOKEN: aud:" in done.stderr
    assert labgate.asked() == []


def test_gitlab_token_from_another_variable(tmp_path: Path, labgate: FakeLabgate,
                                            gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    token = gitlab_issuer.mint()
    env = gitlab_env(tmp_path, labgate.url, "", LABGATE_ID_TOKEN_VAR="MY_TOKEN", MY_TOKEN=token)
    done = run_script(env, tmp_path)
    assert done.returncode == 0, done
    assert bearer(labgate.asked("POST")[0]) == token


def test_merge_request_sends_its_commits_against_the_diff_base(tmp_path: Path, labgate: FakeLabgate,
                                                               gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    repo = new_repo(tmp_path / "repo")
    diff_base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit_file(repo, "mathx.c", "long mul(long a, long b) { return a * b; }\n", "mathx: mul")
    env = gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint(), CI_PIPELINE_SOURCE="merge_request_event",
                     CI_MERGE_REQUEST_DIFF_BASE_SHA=diff_base, CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main",
                     CI_COMMIT_SHA=git(repo, "rev-parse", "HEAD"))  # fmt: skip
    done = run_script(env, repo)
    assert done.returncode == 0, done
    (patch,) = json.loads(labgate.asked("POST")[0].body)["patches"]
    assert patch["name"] == "0001-mathx-mul.patch"
    # What labgate gets applies onto the base as git am applies it.
    git(repo, "checkout", "-q", "--detach", diff_base)
    (tmp_path / "in.mbox").write_text(patch["mbox"])
    git(repo, "am", "-q", str(tmp_path / "in.mbox"))
    assert git(repo, "log", "-1", "--format=%s") == "mathx: mul"


def test_merge_request_without_new_commits_has_nothing_to_test(tmp_path: Path, labgate: FakeLabgate,
                                                                gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    repo = new_repo(tmp_path / "repo")
    env = gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint(),
                     CI_MERGE_REQUEST_DIFF_BASE_SHA=git(repo, "rev-parse", "HEAD"))  # fmt: skip
    done = run_script(env, repo)
    assert done.returncode == 2 and "nothing to test" in done.stderr
    assert labgate.asked() == []


def test_merge_request_diff_base_missing_from_a_shallow_clone(tmp_path: Path, labgate: FakeLabgate,
                                                              gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    repo = new_repo(tmp_path / "repo")
    env = gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint(), CI_MERGE_REQUEST_DIFF_BASE_SHA="1" * 40)
    done = run_script(env, repo)
    assert done.returncode == 2 and "GIT_DEPTH: 0" in done.stderr
    assert labgate.asked() == []


# ---- the action and the template, as their YAML says ---------------------------------------------------------


def test_the_action_runs_labgate_submit_with_its_inputs(tmp_path: Path, labgate: FakeLabgate,
                                                        github_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    argv, env = github_step({"url": labgate.url, "tree": "hello", "audience": AUDIENCE})
    assert argv[-1] == 'python3 "$GITHUB_ACTION_PATH/../labgate-submit"'
    assert env == {"LABGATE_URL": labgate.url, "LABGATE_TREE": "hello", "LABGATE_BASE": "",
                   "LABGATE_AUDIENCE": AUDIENCE, "LABGATE_MODE": "auto", "LABGATE_TIMEOUT": "3600"}  # fmt: skip
    runner = {
        key: value for key, value in github_env(tmp_path, "", github_issuer).items() if not key.startswith("LABGATE")
    }
    done = run_github_action({"url": labgate.url, "tree": "hello", "audience": AUDIENCE, "base": "main"}, runner,
                             tmp_path)  # fmt: skip
    assert done.returncode == 0, done
    assert json.loads(labgate.asked("POST")[0].body)["sha"] == GITHUB_SHA
    assert (tmp_path / "step_summary.md").read_text().startswith("### labgate: pass")


def test_the_template_pins_the_script_it_was_released_with() -> None:
    spec = gitlab_job()
    assert spec["variables"]["LABGATE_SUBMIT_SHA256"] == hashlib.sha256(SCRIPT.read_bytes()).hexdigest(), (
        "actions/labgate-submit changed: put its sha256 in the template's LABGATE_SUBMIT_SHA256"
    )
    assert spec["artifacts"] == {"when": "always", "reports": {"junit": "labgate-junit.xml"}}
    assert spec["variables"]["GIT_DEPTH"] == "0"


def test_the_template_downloads_the_pinned_script_and_runs_it(tmp_path: Path, labgate: FakeLabgate,
                                                              gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    labgate.statuses = [FAILED]
    env = gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint())
    project = {"LABGATE_URL": labgate.url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE,
               "LABGATE_SUBMIT_URL": SCRIPT.as_uri()}  # fmt: skip
    done = run_gitlab_job(project, env, tmp_path)
    assert done.returncode == 1, done
    assert ET.parse(tmp_path / "labgate-junit.xml").getroot().get("failures") == "1"


def test_the_template_refuses_a_script_that_is_not_the_pinned_one(tmp_path: Path, labgate: FakeLabgate,
                                                                  gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    tampered = tmp_path / "labgate-submit"
    tampered.write_bytes(SCRIPT.read_bytes() + b"\nprint('and something else')\n")
    project = {"LABGATE_URL": labgate.url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE,
               "LABGATE_SUBMIT_URL": tampered.as_uri()}  # fmt: skip
    done = run_gitlab_job(project, gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint()), tmp_path)
    assert done.returncode == 2, done
    assert "is not the labgate-submit of sha256" in done.stderr
    assert labgate.asked() == []


def test_the_template_without_a_script_source_says_what_to_set(tmp_path: Path, labgate: FakeLabgate,
                                                               gitlab_issuer: FakeOidcIssuer) -> None:  # fmt: skip
    project = {"LABGATE_URL": labgate.url, "LABGATE_TREE": "hello", "LABGATE_AUDIENCE": AUDIENCE}
    done = run_gitlab_job(project, gitlab_env(tmp_path, labgate.url, gitlab_issuer.mint()), tmp_path)
    assert done.returncode == 2 and "LABGATE_SUBMIT_URL" in done.stderr and "LABGATE_SUBMIT_PATH" in done.stderr
