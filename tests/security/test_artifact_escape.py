"""Artifacts: a build's links never lead collection out of its build dir, and no name a worker sends
makes the lab side write outside a job's directory."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.pipelines.lifecycle import _checked_outputs
from bot.store.models import Job
from tests.security.conftest import CAPS, AttackLab
from tests.security.test_build_escape import HELLO_MAKEFILE, makefile_running
from workers.spec import ArtifactRef, JobResult, JobSpec, QemuSpec, TestCommand, TestSpec


def _store_holds(lab: AttackLab, content: bytes) -> bool:
    digest = hashlib.sha256(content).hexdigest()
    return lab.services.runtime.artifacts.has(digest)


def test_symlinked_artifacts_to_host_files_and_labgate_data_are_refused(attack_lab: AttackLab) -> None:
    shadow = Path("/etc/shadow").read_bytes()
    database = attack_lab.data_dir / "labgate.sqlite3"
    assert database.is_file()
    repo = attack_lab.repo()
    # The plan collects tests/test_*: the build makes two of them links, to the host's shadow file and,
    # relative to its own path (which sits below the data dir on the host), to labgate's database.
    up = "/".join([".."] * len(Path("worker/work/job-1/disk/build/tests").parts))
    patch = attack_lab.patch(repo, makefile_running(f"mkdir -p $(O)/tests; ln -sf /etc/shadow $(O)/tests/test_zzz; "
                                                    f"ln -sf {up}/labgate.sqlite3 $(O)/tests/test_db"))  # fmt: skip
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and "tests/test_zzz: is a symlink" in message, message
    assert "tests/test_db: is a symlink" in message
    assert not _store_holds(attack_lab, shadow) and not _store_holds(attack_lab, database.read_bytes())


def test_symlinked_directory_does_not_lead_collection_out(attack_lab: AttackLab) -> None:
    hostname = Path("/etc/hostname").read_bytes()
    repo = attack_lab.repo()
    # Build the real tests, then make the collected directory itself a link to /etc.
    makefile = HELLO_MAKEFILE.replace("all: $(TEST_BINS)\n", "all: $(TEST_BINS)\n\t@mv $(O)/tests $(O)/real; "
                                      "ln -s /etc $(O)/tests\n", 1)  # fmt: skip
    patch = attack_lab.patch(repo, {"Makefile": makefile})
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and "tests: is a symlink" in message, message
    assert not _store_holds(attack_lab, hostname)


def test_a_fifo_artifact_is_refused_without_hanging(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    patch = attack_lab.patch(repo, makefile_running("mkdir -p $(O)/tests; mkfifo $(O)/tests/test_fifo"))
    tried = attack_lab.try_(repo, patch, timeout_s=120)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1 and "tests/test_fifo: is not a regular file" in message, message


def test_oversized_artifact_is_refused_before_it_is_stored(attack_lab: AttackLab) -> None:
    size = CAPS["max_artifact_bytes"] + (1 << 20)
    repo = attack_lab.repo()
    recipe = f"mkdir -p $(O)/tests; head -c {size} /dev/zero > $(O)/tests/test_big"
    patch = attack_lab.patch(repo, makefile_running(recipe))
    tried = attack_lab.try_(repo, patch)
    message = attack_lab.build_message(tried.pipeline_id)
    assert tried.returncode == 1
    assert f"tests/test_big: {size} bytes is over the per-file cap of {CAPS['max_artifact_bytes']} bytes" in message
    assert not _store_holds(attack_lab, b"\0" * size)


def test_plan_patterns_that_climb_out_are_a_plan_error_naming_file_line_and_key(attack_lab: AttackLab) -> None:
    repo = attack_lab.repo()
    climbing = "      - tests/test_*\n      - w/../../../etc/passwd\n"
    plan = (repo / ".labgate" / "plan.yaml").read_text().replace("      - tests/test_*\n", climbing)
    (repo / ".labgate" / "plan.yaml").write_text(plan)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qam", "plan"],
                   check=True)  # fmt: skip
    tried = attack_lab.try_(repo, ref="main")
    assert tried.returncode == 2
    assert ".labgate/plan.yaml:9: builds.0.artifacts.1: Value error, artifact pattern 'w/../../../etc/passwd' has a " \
           "'..' component" in tried.output or ".labgate/plan.yaml:9: builds.0.artifacts.1: artifact pattern" \
           in tried.output, tried.output


@pytest.mark.parametrize("name", ["w/../../../../etc/cron.d/x", "/etc/passwd", "a//b", "./x", ""])
def test_a_worker_sent_artifact_name_cannot_reach_the_lab_side(name: str) -> None:
    """A hostile build worker names its outputs: the spec a lab worker accepts refuses them."""
    with pytest.raises(ValidationError):
        TestSpec(name="t", device_class="q", qemu=QemuSpec(), kernel="debian",
                 commands=(TestCommand(name="a", run="true"),), timeout_s=10,
                 artifacts={name: ArtifactRef(digest="0" * 64)})  # fmt: skip


def test_the_control_side_voids_a_build_result_naming_artifacts_outside_the_build_dir() -> None:
    job = Job(kind="build", name="x86_64", queue="build", spec={})
    result = JobResult(job_id=1, delivery=1, result="pass",
                       outputs={"artifacts": {"w/../../x": {"digest": "0" * 64, "mode": 420}}})  # fmt: skip
    checked = _checked_outputs(job, result)
    assert checked.result is None and checked.error_code == "infra-error"
    assert "w/../../x" in (checked.error_message or "")


def test_a_spec_with_a_credentialed_url_is_refused_by_the_worker() -> None:
    with pytest.raises(ValidationError, match="carries credentials"):
        JobSpec(job_id=1, pipeline_id=1, kind="checkout", tree_name="t", max_log_bytes=1,
                tree_url="https://x-access-token:ghs_secret@github.com/o/r.git")  # fmt: skip
