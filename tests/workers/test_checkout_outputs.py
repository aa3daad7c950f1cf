"""What a checkout tells the control side beyond the commits: which static tools the base has, and the
base's MAINTAINERS through the artifact store; and the speculative merge made without a worktree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from workers import checkout
from workers.artifacts import ArtifactStore
from workers.checkout import base_facts, merge_onto_base, mirror_path, update_mirror
from workers.errors import UserError
from workers.spec import CheckoutSpec, JobSpec, PatchRef
from workers.tasks import execute_checkout

PATCH = EXAMPLES / "hello" / "patches" / "pass.patch"


def git(repo: Path, *args: str) -> str:
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(["git", *env, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_files(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", *files)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def mirrored(repo: Path, tmp_path: Path) -> Path:
    mirror = mirror_path(tmp_path / "data", "hello")
    update_mirror(mirror, str(repo))
    return mirror


def test_a_tree_without_the_tools_or_maintainers(hello_repo: Path, tmp_path: Path) -> None:
    assert base_facts(mirrored(hello_repo, tmp_path), git(hello_repo, "rev-parse", "main")) == (
        {"checkpatch": False, "kernel_doc": False},
        None,
    )


def test_a_kernel_like_tree_has_the_tools_and_its_maintainers_are_read(hello_repo: Path, tmp_path: Path) -> None:
    maintainers = "NET\nF:\tnet/\n"
    base = commit_files(hello_repo, {"scripts/checkpatch.pl": "#!/usr/bin/perl\n", "scripts/kernel-doc": "#!perl\n",
                                     "MAINTAINERS": maintainers}, "kernel-like")  # fmt: skip
    assert base_facts(mirrored(hello_repo, tmp_path), base) == (
        {"checkpatch": True, "kernel_doc": True},
        maintainers.encode(),
    )


def test_attack_symlinks_and_directories_by_those_names_are_not_the_files(hello_repo: Path, tmp_path: Path) -> None:
    """A MAINTAINERS symlink would hand over its target's name, not a file; a directory is no tool."""
    (hello_repo / "MAINTAINERS").symlink_to("/etc/shadow")
    (hello_repo / "scripts" / "checkpatch.pl").mkdir(parents=True)
    (hello_repo / "scripts" / "checkpatch.pl" / "x").write_text("x\n")
    (hello_repo / "scripts" / "kernel-doc").symlink_to("checkpatch.pl/x")
    git(hello_repo, "add", "-A")
    git(hello_repo, "commit", "-qm", "odd")
    base = git(hello_repo, "rev-parse", "HEAD")
    assert base_facts(mirrored(hello_repo, tmp_path), base) == ({"checkpatch": False, "kernel_doc": False}, None)


def test_a_maintainers_file_past_the_cap_is_skipped(hello_repo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    base = commit_files(hello_repo, {"MAINTAINERS": "x" * 101}, "big")
    monkeypatch.setattr(checkout, "MAX_MAINTAINERS_BYTES", 100)
    assert base_facts(mirrored(hello_repo, tmp_path), base)[1] is None


def test_the_checkout_job_reports_them_and_stores_maintainers(hello_repo: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    commit_files(hello_repo, {"scripts/checkpatch.pl": "#!/usr/bin/perl\n", "MAINTAINERS": "M\n"}, "tools")
    monkeypatch.setenv("LABGATE_WORK_DIR", str(tmp_path / "worker"))
    monkeypatch.setenv("LABGATE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    store = ArtifactStore(tmp_path / "artifacts")
    spec = JobSpec(job_id=7, pipeline_id=3, kind="checkout", tree_name="hello", tree_url=str(hello_repo),
                   max_log_bytes=1 << 20, checkout=CheckoutSpec(base_ref="main", patches=(
                       PatchRef(name="pass.patch", digest=store.put_bytes(PATCH.read_bytes())),)))  # fmt: skip
    outputs = execute_checkout(spec, 1, []).outputs
    assert outputs["tree_has"] == {"checkpatch": True, "kernel_doc": False}
    assert store.get_bytes(str(outputs["maintainers_digest"])) == b"M\n"
    assert outputs["head_sha"] != outputs["base_sha"] and outputs["changed_files"]
    assert not (tmp_path / "worker" / "work" / "job-7" / "src").exists()  # the scratch index is gone


def test_the_merge_is_made_without_a_worktree(hello_repo: Path, tmp_path: Path) -> None:
    base = git(hello_repo, "rev-parse", "main")
    git(hello_repo, "checkout", "-q", "-b", "topic")
    topic = commit_files(hello_repo, {"TOPIC": "t\n"}, "topic")
    git(hello_repo, "checkout", "-q", "main")
    moved = commit_files(hello_repo, {"MAIN": "m\n"}, "main moves")
    mirror = mirrored(hello_repo, tmp_path)
    merged = merge_onto_base(mirror, moved, topic, "main@x")
    assert git(mirror, "rev-parse", f"{merged}^1", f"{merged}^2").split() == [moved, topic]
    assert {"MAIN", "TOPIC"} <= set(git(mirror, "ls-tree", "--name-only", merged).split())
    assert git(mirror, "log", "-1", "--format=%an <%ae>|%cn|%B", merged) == (
        f"labgate <labgate@localhost>|labgate|labgate: merge {topic[:12]} onto main@x"
    )
    assert merge_onto_base(mirror, moved, base, "main@x") == moved  # already in the base: no merge commit
    assert not (mirror / "worktrees").exists()


def test_a_merge_of_unrelated_histories_is_refused_in_gits_words(hello_repo: Path, tmp_path: Path) -> None:
    git(hello_repo, "checkout", "-q", "--orphan", "stranger")
    git(hello_repo, "rm", "-rqf", ".")
    stranger = commit_files(hello_repo, {"ELSE": "e\n"}, "unrelated")
    mirror = mirrored(hello_repo, tmp_path)
    with pytest.raises(UserError, match="merge conflict with main@x: .*unrelated histories"):
        merge_onto_base(mirror, git(hello_repo, "rev-parse", "main"), stranger, "main@x")
