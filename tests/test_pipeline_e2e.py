"""End to end: real workers on a real Redis, real git, bwrap and QEMU through labgrid.

One set of workers serves the whole module (as `labgate up` would); each test
submits through the same control path the CLI and the forges use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import Config
from bot.pipelines.lifecycle import Submission, submit
from bot.reporting.pipeline_views import PipelineView, pipeline_view
from bot.store.models import Job, Pipeline
from bot.web.app import create_app
from tests.conftest import EXAMPLES, REPO_ROOT, make_git_repo

PATCHES = EXAMPLES / "hello" / "patches"


@dataclass
class Lab:
    services: Services
    config_path: Path
    hello: Path

    def submit(self, repo: Path, *, patches: tuple[Path, ...] = (), ref: str | None = None,
               base: str = "main") -> int:  # fmt: skip
        submission = Submission(
            tree_name=repo.name, tree_url=str(repo), source="test", external_id=f"{time.monotonic_ns()}",
            base_ref=base, ref=ref, patches=tuple((p.name, p.read_bytes()) for p in patches),
        )  # fmt: skip
        return submit(self.services.runtime, submission)

    def wait(self, pipeline_id: int, timeout_s: float = 180) -> PipelineView:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            view = pipeline_view(self.services.runtime, pipeline_id)
            if view.state == "done":
                return view
            time.sleep(0.1)
        raise AssertionError(f"pipeline {pipeline_id} still {view.state} after {timeout_s} s: {view.jobs}")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The module's labgate. Triage is off unless the module using it sets TRIAGE = True (test_triage_e2e.py):
    these tests are about the pipeline, and a failing change's re-runs and base runs would triple their time."""
    triage = bool(getattr(request.module, "TRIAGE", False))
    root = tmp_path_factory.mktemp("lab")
    config_path = root / "labgate.yaml"
    config_path.write_text(f"data_dir: {root / 'data'}\ncaps: {{max_build_s: 120, max_job_s: 120}}\n"
                           f"triage: {{enabled: {str(triage).lower()}}}\n")
    services = open_services(Config(data_dir=root / "data", caps={"max_build_s": 120, "max_job_s": 120},  # type: ignore[arg-type]
                                    triage={"enabled": triage}), config_path)  # type: ignore[arg-type]  # fmt: skip
    try:
        start_all_workers(services)
        hello = make_git_repo(EXAMPLES / "hello", root / "hello")
        yield Lab(services, config_path, hello)
    finally:  # also when the workers never came up: none may outlive the module
        services.stop()


def test_pass_patch_passes(lab: Lab) -> None:
    view = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "pass.patch",)))
    assert view.result == "pass", view.jobs
    assert [(j.kind, j.result) for j in view.jobs] == [("checkout", "pass"), ("build", "pass"), ("test", "pass")]
    test_job = view.jobs[2]
    assert test_job.test_counts.get("pass", 0) >= 3 and test_job.test_counts.get("skip", 0) >= 1
    assert view.head_sha and view.base_sha and view.head_sha != view.base_sha


def test_fail_patch_names_the_test_and_its_output(lab: Lab) -> None:
    view = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "fail.patch",)))
    assert view.result == "fail"
    failed = [t for j in view.jobs for t in j.failed_tests]
    assert [t.path for t in failed] == ["math.mul"]
    assert "expected 42" in failed[0].diagnostics


def test_conflict_patch_is_a_user_error_with_gits_message(lab: Lab) -> None:
    view = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "conflict.patch",)))
    assert view.result == "error"
    checkout = view.jobs[0]
    assert checkout.error_code == "user-error" and len(view.jobs) == 1
    assert "conflict.patch does not apply on main@" in (checkout.error_message or "")
    assert "patch does not apply" in (checkout.error_message or "")


def _commit_plan(repo: Path, text: str | None) -> None:
    plan = repo / ".labgate" / "plan.yaml"
    if text is None:
        plan.unlink()
    else:
        plan.write_text(text)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "plan"], cwd=repo, check=True)


def test_missing_and_invalid_plans_name_file_and_key(lab: Lab, tmp_path: Path) -> None:
    repo = make_git_repo(EXAMPLES / "hello", tmp_path / "planless")
    _commit_plan(repo, None)
    view = lab.wait(lab.submit(repo, ref="main"))
    assert view.result == "error"
    assert view.jobs[0].error_message == ".labgate/plan.yaml: no plan: the tree has no file at this path"
    plan = (EXAMPLES / "hello" / ".labgate" / "plan.yaml").read_text().replace("timeout: 120", "timeout: soon", 1)
    (repo / ".labgate").mkdir(exist_ok=True)
    (repo / ".labgate" / "plan.yaml").write_text(plan)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    _commit_plan(repo, plan)
    view = lab.wait(lab.submit(repo, ref="main"))
    message = view.jobs[0].error_message or ""
    assert message.startswith(".labgate/plan.yaml:") and ".timeout: Input should be a valid integer" in message


def test_cli_try_exit_codes(lab: Lab) -> None:
    """The README's demo: the CLI uses the running workers (it starts none) and sets its exit code."""
    def run(patch: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "try", str(lab.hello), "--base", "main",
             "--patch", str(PATCHES / patch), "--config", str(lab.config_path)],
            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        )  # fmt: skip

    passed, failed, conflict = run("pass.patch"), run("fail.patch"), run("conflict.patch")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "started private workers" not in passed.stdout
    assert failed.returncode == 1 and "not ok math.mul" in failed.stdout and "expected 42" in failed.stdout
    assert conflict.returncode == 2 and "error: patch failed: src/greet.c" in conflict.stdout


def test_cli_rejects_bad_input_before_submitting(lab: Lab, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "bot.cli", "try", "--config", str(lab.config_path)]
    not_git = subprocess.run([*cli, str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert not_git.returncode == 2 and f"{tmp_path}: not a git repository" in not_git.stderr
    missing = subprocess.run([*cli, str(lab.hello), "--patch", str(tmp_path / "nope.patch")],
                             capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert missing.returncode == 2 and "nope.patch: cannot read patch: No such file or directory" in missing.stderr


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, cmdline)
    return table


def test_killed_build_worker_is_retried_and_leaves_no_sandbox(lab: Lab, tmp_path: Path) -> None:
    repo = make_git_repo(EXAMPLES / "hello", tmp_path / "slow")
    marker = "sleep 6.4321"
    plan = f'version: 1\nbuilds:\n  - name: slow\n    command: {marker}; echo done > "$LABGATE_BUILD/out"\n'
    _commit_plan(repo, plan + "    artifacts: [out]\n")
    pipeline_id = lab.submit(repo, ref="main")
    deadline = time.monotonic() + 60
    sandboxed: list[int] = []
    while not sandboxed:
        assert time.monotonic() < deadline, "the slow build never started"
        sandboxed = [pid for pid, (_, cmd) in _processes().items() if marker in cmd]
        time.sleep(0.1)
    table = _processes()
    # The pool process running the task: the ancestor of the sandbox whose parent is the worker.
    pool = sandboxed[0]
    while "--queues build" not in table[table[pool][0]][1] or "--queues build" not in table[pool][1]:
        pool = table[pool][0]
    os.kill(pool, signal.SIGKILL)
    time.sleep(2)
    survivors = [pid for pid in sandboxed if pid in _processes() and marker in _processes()[pid][1]]
    assert survivors == [], "sandbox processes outlived their worker"
    view = lab.wait(pipeline_id, timeout_s=120)
    build = view.jobs[1]
    assert build.result == "pass" and build.attempts == 2, build


def test_job_page_shows_result_timings_and_log(lab: Lab) -> None:
    view = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "fail.patch",)))
    client = TestClient(create_app(lab.services.runtime))
    assert client.get("/healthz").json() == {"ok": True, "database": "ok"}
    test_job = view.jobs[2]
    page = client.get(f"/jobs/{test_job.id}")
    assert page.status_code == 200
    assert "not ok math.mul" in page.text and "expected 42, got" in page.text
    assert "KTAP version 1" in page.text  # the whole console is on the page
    build_page = client.get(f"/jobs/{view.jobs[1].id}").text
    assert "duration" in build_page and "s in the command" in build_page
    assert client.get(f"/pipelines/{view.id}").status_code == 200
    assert client.get("/jobs/999999").status_code == 404
    assert client.get("/jobs/abc").status_code == 400
    with lab.services.runtime.store.session() as session:
        job = session.get(Job, test_job.id)
        assert job is not None and job.pipeline.state == "done"
        assert session.get(Pipeline, view.id) is not None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def test_job_page_in_headless_chromium(lab: Lab, tmp_path: Path) -> None:
    """What a maintainer sees: the failing test, its first lines, and the console, in a real browser."""
    import shutil
    import socket
    import threading

    import uvicorn

    chromium = shutil.which("chromium")
    assert chromium, "scripts/setup.sh installs chromium"
    view = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "fail.patch",)))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(lab.services.runtime), host="127.0.0.1", port=port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/jobs/{view.jobs[2].id}"
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        shot = tmp_path / "job.png"
        subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,1400", url],
                       capture_output=True, timeout=120)  # fmt: skip
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert '<p class="fail">not ok math.mul</p>' in dom.stdout
    assert "expected 42, got" in dom.stdout and "KTAP version 1" in dom.stdout
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_operator_cancel_and_retest_are_recorded_with_who_ran_them(lab: Lab, tmp_path: Path) -> None:
    import getpass

    who = os.environ.get("SUDO_USER") or getpass.getuser()
    cli = [sys.executable, "-m", "bot.cli"]
    repo = make_git_repo(EXAMPLES / "hello", tmp_path / "operator")
    _commit_plan(repo, "version: 1\nbuilds:\n  - name: slow\n    command: sleep 30\n    artifacts: [out]\n")
    pipeline_id = lab.submit(repo, ref="main")
    deadline = time.monotonic() + 60
    while pipeline_view(lab.services.runtime, pipeline_id).jobs[-1].kind != "build":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cancelled = subprocess.run([*cli, "cancel", str(pipeline_id), "--why", "wrong base", "--config",
                                str(lab.config_path)], capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert cancelled.returncode == 0, cancelled.stderr
    lab.wait(pipeline_id, timeout_s=60)
    with lab.services.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None and pipeline.result == "cancelled"
        assert pipeline.error_message == f"cancelled by {who} (labgate cancel): wrong base"
    failed = lab.wait(lab.submit(lab.hello, patches=(PATCHES / "fail.patch",)))
    retested = subprocess.run([*cli, "retest", str(failed.id), "--config", str(lab.config_path)],
                              capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert retested.returncode == 0, retested.stderr
    new_id = int(retested.stdout.split()[1].rstrip(":"))
    again = lab.wait(new_id)
    assert again.result == "fail" and [j.kind for j in again.jobs] == [j.kind for j in failed.jobs]
    with lab.services.runtime.store.session() as session:
        new = session.get(Pipeline, new_id)
        assert new is not None and new.rerun_of_id == failed.id and new.requested_by == f"{who} (labgate retest)"
    refused = subprocess.run([*cli, "cancel", str(failed.id), "--config", str(lab.config_path)],
                             capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
    assert refused.returncode == 2 and "has finished; nothing to cancel" in refused.stderr


def test_no_test_ran_is_not_a_pass_and_a_plan_without_tests_says_so(lab: Lab, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "bot.cli", "try", "--config", str(lab.config_path), "--ref", "main"]
    repo = make_git_repo(EXAMPLES / "hello", tmp_path / "arm")
    plan = (EXAMPLES / "hello" / ".labgate" / "plan.yaml").read_text()
    plan = plan.replace("arch: x86_64, platform: qemu", "arch: arm64, platform: qemu")
    _commit_plan(repo, plan)
    tried = subprocess.run([*cli, str(repo)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert tried.returncode == 2, tried.stdout + tried.stderr
    # A test no device class of the lab can run is the plan's error, said at plan time.
    assert "test unit: no device class carries arch=arm64 platform=qemu" in " ".join(tried.stdout.split())
    builds_only = make_git_repo(EXAMPLES / "hello", tmp_path / "builds")
    _commit_plan(builds_only, plan.split("tests:")[0])
    tried = subprocess.run([*cli, str(builds_only)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "NOTE: the plan has no tests: builds only" in tried.stdout
