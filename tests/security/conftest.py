"""The attacker's bench: real workers on a real broker, changes sent through `labgate try` as a stranger would.

One set of workers serves the whole session (as `labgate up` would), with caps small
enough that an attack hits them in seconds. Each attack is a patch (or a ref) against a
fresh copy of examples/hello, and each test checks the host from outside.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.host.bring_up import Services, open_services, start_all_workers
from bot.host.config import load_config
from bot.reporting.pipeline_views import PipelineView, pipeline_view, read_log
from tests.conftest import EXAMPLES, REPO_ROOT, make_git_repo
from tests.requirements import need

MIB = 1 << 20
CAPS = {
    "max_build_s": 40, "max_job_s": 90, "max_log_bytes": 1 * MIB, "max_build_memory_bytes": 384 * MIB,
    "max_build_processes": 200, "max_build_disk_bytes": 96 * MIB, "max_build_tmp_bytes": 16 * MIB,
    "max_artifact_bytes": 4 * MIB, "max_artifacts_bytes": 12 * MIB, "max_patch_bytes": 2 * MIB,
}  # fmt: skip
GIT_ENV = {"GIT_AUTHOR_NAME": "Mallory", "GIT_AUTHOR_EMAIL": "mallory@example.org",
           "GIT_COMMITTER_NAME": "Mallory", "GIT_COMMITTER_EMAIL": "mallory@example.org"}  # fmt: skip


@dataclass(frozen=True)
class Tried:
    returncode: int
    output: str
    pipeline_id: int | None


@dataclass
class AttackLab:
    services: Services
    config_path: Path
    data_dir: Path
    root: Path
    count: int = 0

    def repo(self) -> Path:
        """A fresh copy of examples/hello as a git repository, on branch main."""
        self.count += 1
        return make_git_repo(EXAMPLES / "hello", self.root / f"hello-{self.count}")

    def patch(self, repo: Path, files: dict[str, str], message: str = "innocent cleanup",
              executable: tuple[str, ...] = ()) -> Path:  # fmt: skip
        """A mail patch changing `files` (path -> new content) on main, made by real git."""
        env = {**os.environ, **GIT_ENV}
        git = ["git", "-C", str(repo)]
        subprocess.run([*git, "checkout", "-q", "-b", f"attack-{self.count}"], check=True, env=env)
        for path, content in files.items():
            target = repo / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            if path in executable:
                target.chmod(0o755)
        subprocess.run([*git, "add", "-A"], check=True, env=env)
        subprocess.run([*git, "commit", "-q", "-m", message], check=True, env=env)
        out = self.root / f"attack-{self.count}.patch"
        patch = subprocess.run([*git, "format-patch", "-1", "--stdout"], check=True, env=env, capture_output=True)
        out.write_bytes(patch.stdout)
        subprocess.run([*git, "checkout", "-q", "main"], check=True, env=env)
        return out

    def try_(self, repo: Path, *patches: Path, ref: str | None = None, timeout_s: float = 300) -> Tried:
        """`labgate try`, exactly as a user runs it, against this lab's workers."""
        argv = [sys.executable, "-m", "bot.cli", "try", str(repo), "--base", "main", "--config", str(self.config_path)]
        argv += [arg for p in patches for arg in ("--patch", str(p))]
        if ref:
            argv += ["--ref", ref]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO_ROOT)
        output = done.stdout + done.stderr
        found = re.search(r"^pipeline (\d+):", output, re.M)
        return Tried(done.returncode, output, int(found.group(1)) if found else None)

    def view(self, pipeline_id: int | None) -> PipelineView:
        assert pipeline_id is not None
        return pipeline_view(self.services.runtime, pipeline_id)

    def job_log(self, pipeline_id: int | None, kind: str) -> str:
        for job in self.view(pipeline_id).jobs:
            if job.kind == kind:
                with self.services.runtime.store.session() as session:
                    from bot.store.models import Job

                    row = session.get(Job, job.id)
                    assert row is not None
                    return read_log(self.services.runtime, row.log_digest)
        raise AssertionError(f"no {kind} job in pipeline {pipeline_id}")

    def job_outputs(self, pipeline_id: int | None, kind: str) -> dict[str, object]:
        from bot.store.models import Pipeline

        with self.services.runtime.store.session() as session:
            pipeline = session.get(Pipeline, pipeline_id)
            assert pipeline is not None
            for job in pipeline.jobs:
                if job.kind == kind:
                    return dict(job.outputs)
        raise AssertionError(f"no {kind} job in pipeline {pipeline_id}")

    def build_message(self, pipeline_id: int | None) -> str:
        build = [j for j in self.view(pipeline_id).jobs if j.kind == "build"]
        assert build, self.view(pipeline_id)
        return build[0].error_message or ""


@pytest.fixture(scope="session")
def attack_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AttackLab]:
    need("root", "the confinement tests run as root, as the worker does in CI (README)")
    root = tmp_path_factory.mktemp("attacks")
    config_path = root / "labgate.yaml"
    caps = ", ".join(f"{k}: {v}" for k, v in CAPS.items())
    config_path.write_text(f"data_dir: {root / 'data'}\ncaps: {{{caps}}}\n")
    services = open_services(load_config(config_path), config_path)
    try:
        start_all_workers(services)
        yield AttackLab(services, config_path, root / "data", root)
    finally:
        services.stop()


def wait_for(condition: object, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False
