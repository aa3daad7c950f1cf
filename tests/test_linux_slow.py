"""Real Linux in CI (issue 11 point 9): Debian's linux-source-6.1 as a git tree, changes submitted with
`labgate try` as a maintainer types it, all into one data dir, so the later ones find the warm state the
first one left:

1. banner.patch, cold: the mirror is cloned, the base builds from nothing (tinyconfig, gcc), the change
   builds warm on it (init/version.o recompiled), boots, and its KTAP says the banner is there;
2. checkpatch on that patch, from the base's scripts, in the static job that answered before the builds;
3. warning.patch (one unused variable in kernel/printk/printk.c) from an untrusted submitter: built on a
   throwaway copy of the warm build dir, exactly that one new warning;
4. the same patch from a trusted submitter: built in the warm dir the copy left untouched, the same warning;
5. docs.patch: only the static checks run, and the report says why;
6. comment.patch (a comment reworded in place in printk.c): printk.o is recompiled, the binary equals the
   base's, and the boot is skipped as binary identical.

What each costs is printed (the benchmarks hold the targets: bench/e2e_linux.py, bench/rebuild.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.host.config import Config
from bot.host.stores import open_runtime
from bot.store.models import Job, Pipeline, TestResult
from tests.conftest import EXAMPLES, REPO_ROOT
from tests.linux_tree import shared_linux_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs("root", "the build worker hands warm state to slot uids"),
    pytest.mark.timeout(3600),
]  # the module's first test pays for the cold build (3 min idle)

PATCHES = EXAMPLES / "linux" / "patches"
BUILD = "tinyconfig"


@dataclass(frozen=True)
class Tried:
    returncode: int
    output: str
    seconds: float
    pipeline_id: int
    jobs: dict[str, Job]  # by "kind name"
    tests: dict[str, str]  # test path -> status, of every job
    notes: tuple[str, ...]


class Linux:
    """One prepared tree and one labgate data dir shared by the module's tests, in order."""

    def __init__(self, tree: Path, root: Path) -> None:
        self.tree = tree  # read only: labgate try clones it
        self.data = root / "data"
        self.config = root / "labgate.yaml"
        self.config.write_text(f"data_dir: {self.data}\ncaps: {{max_build_s: 1500, max_job_s: 180}}\n")
        self.tried: dict[str, Tried] = {}

    def try_patch(self, patch: str, *flags: str) -> Tried:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "bot.cli", "try", str(self.tree), "--config", str(self.config),
                               "--patch", str(PATCHES / patch), "--timeout", "1800", *flags],
                              capture_output=True, text=True, cwd=REPO_ROOT)  # fmt: skip
        seconds = time.monotonic() - started
        output = done.stdout + done.stderr
        runtime = open_runtime(Config(data_dir=self.data))
        with runtime.store.session() as session:
            pipeline = session.query(Pipeline).order_by(Pipeline.id.desc()).first()
            assert pipeline is not None, output
            jobs = {f"{job.kind} {job.name}": job for job in pipeline.jobs}
            for job in jobs.values():
                session.expunge(job)
            tests = {row.path: row.status for row in session.query(TestResult).filter(
                TestResult.job_id.in_([job.id for job in jobs.values()]))}  # fmt: skip
            tried = Tried(done.returncode, output, seconds, pipeline.id, jobs, tests, tuple(pipeline.notes))
        print(
            f"{patch} {' '.join(flags)}: exit {done.returncode} in {seconds:.1f} s; "
            + "; ".join(f"{name} {job.result} {_seconds(job):.1f} s" for name, job in jobs.items())
        )
        return tried

    def once(self, patch: str, *flags: str) -> Tried:
        key = " ".join((patch, *flags))
        if key not in self.tried:
            self.tried[key] = self.try_patch(patch, *flags)
        return self.tried[key]


def _seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None:
        return 0.0
    return (job.finished_at - job.started_at).total_seconds()


def _comparison(tried: Tried) -> dict[str, object]:
    comparison = tried.jobs[f"build {BUILD}"].outputs.get("comparison")
    assert isinstance(comparison, dict), tried.output
    return comparison


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Linux:
    linux = Linux(shared_linux_tree(tmp_path_factory), tmp_path_factory.mktemp("linux-e2e"))
    linux.once("banner.patch")  # the cold run comes first, whichever test asks first
    return linux


def test_a_cold_build_then_the_change_built_warm_boots_and_reports_ktap(linux: Linux) -> None:
    tried = linux.once("banner.patch")
    assert tried.returncode == 0, tried.output
    base, change = tried.jobs[f"build base {BUILD}"], tried.jobs[f"build {BUILD}"]
    assert base.outputs["warm"]["mode"] == "cold" and base.result == "pass", tried.output
    assert change.outputs["warm"]["mode"] == "warm" and change.result == "pass"
    assert "init/version.o" in change.outputs["recompiled"]
    assert len(change.outputs["recompiled"]) < 20  # the one file and what links it, not the tree
    assert tried.tests["version"] == "pass" and tried.tests["banner"] == "pass"


def test_checkpatch_checks_the_patch_with_the_bases_script_before_any_build_ends(linux: Linux) -> None:
    tried = linux.once("banner.patch")
    static = tried.jobs["static static"]
    checkpatch = [path for path in tried.tests if path.startswith("static/checkpatch/")]
    assert len(checkpatch) == 1 and tried.tests[checkpatch[0]] == "pass", tried.tests
    assert tried.tests["static/diff-check"] == "pass"
    assert static.finished_at is not None
    assert all(static.finished_at <= job.finished_at for job in tried.jobs.values()
               if job.kind == "build" and job.finished_at is not None)  # fmt: skip


def test_the_same_patch_from_an_untrusted_submitter_builds_on_a_copy_with_the_same_verdict(linux: Linux) -> None:
    # First, while the warm build dir is at the banner change: the copy recompiles what differs from it.
    tried = linux.once("warning.patch", "--untrusted")
    change = tried.jobs[f"build {BUILD}"]
    assert change.outputs["warm"]["mode"] == "copy", change.outputs["warm"]
    assert {"kernel/printk/printk.o", "init/version.o"} <= set(change.outputs["recompiled"])
    trusted = linux.once("warning.patch")
    assert trusted.jobs[f"build {BUILD}"].outputs["warm"]["mode"] == "warm"
    # Its copy left the warm dir as it was: the trusted build recompiles the same files again.
    assert {"kernel/printk/printk.o", "init/version.o"} <= set(trusted.jobs[f"build {BUILD}"].outputs["recompiled"])
    assert _comparison(tried)["new_warnings"] == _comparison(trusted)["new_warnings"]


def test_a_patch_adding_one_warning_yields_exactly_that_new_warning(linux: Linux) -> None:
    tried = linux.once("warning.patch")
    assert tried.jobs[f"build base {BUILD}"].reused_from_id is not None  # the base built once, for all
    comparison = _comparison(tried)
    new = comparison["new_warnings"]
    assert isinstance(new, list) and len(new) == 1, comparison
    assert new[0]["file"] == "kernel/printk/printk.c" and new[0]["flag"] == "-Wunused-variable"
    assert "labgate_unused" in new[0]["text"] and new[0]["on_changed_line"] is True
    assert comparison["change_count"] == comparison["base_count"] + 1  # type: ignore[operator]
    assert "1 new warning" in tried.output


def test_a_documentation_only_patch_runs_only_the_static_checks(linux: Linux) -> None:
    tried = linux.once("docs.patch")
    assert tried.returncode == 0, tried.output
    assert sorted(tried.jobs) == ["checkout checkout", "static static"]
    assert any(note.startswith("documentation-only change") for note in tried.notes), tried.notes


def test_a_comment_only_patch_is_recompiled_and_its_boot_skipped_as_binary_identical(linux: Linux) -> None:
    tried = linux.once("comment.patch")
    assert tried.returncode == 0, tried.output
    change = tried.jobs[f"build {BUILD}"]
    assert "kernel/printk/printk.o" in change.outputs["recompiled"]
    assert _comparison(tried)["binary_identical"] is True
    boots = [job for job in tried.jobs.values() if job.kind == "test"]
    assert boots and all(job.result == "skip" and job.started_at is None for job in boots)
    assert all((job.error_message or "").startswith("binary identical to base") for job in boots)
