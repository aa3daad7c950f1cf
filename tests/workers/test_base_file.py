"""One file read at a base commit for the control side (workers/base_file.py): the base's bytes, never the
head's; a file that is missing, too large, a symlink, or at a base only a fork has, reads as a problem."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.base_file import answer_request, read_base_file
from workers.checkout import mirror_path
from workers.spec import BaseFileRequest

MAINTAINERS = "NETWORKING\nM:\tNet Maint <net@example.org>\nF:\tnet/\n"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


def origin(tmp_path: Path) -> tuple[Path, str]:
    """A tree whose main has MAINTAINERS; returns it and main's commit (the base)."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "MAINTAINERS").write_text(MAINTAINERS)
    (repo / "README").write_text("hello\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo, git(repo, "rev-parse", "HEAD")


def read(repo: Path, tmp_path: Path, base: str, path: str = "MAINTAINERS", max_bytes: int = 1 << 20,
         branches: tuple[str, ...] = ()):  # fmt: skip
    return read_base_file(mirror_path(tmp_path / "work", "t"), str(repo), base_ref=base, path=path,
                          max_bytes=max_bytes, base_branches=branches)  # fmt: skip


def test_attack_the_file_is_read_at_the_base_never_at_a_later_commit(tmp_path: Path) -> None:
    repo, base = origin(tmp_path)
    # What a series adding its sender to MAINTAINERS makes (its head, which no tree branch holds).
    (repo / "MAINTAINERS").write_text(MAINTAINERS + "\nEVIL\nM:\tMallory <mallory@evil.example>\nF:\t*\n")
    git(repo, "checkout", "-q", "-b", "series")
    git(repo, "commit", "-q", "-am", "add me")
    git(repo, "update-ref", "refs/pull/1/head", "HEAD")
    found = read(repo, tmp_path, base, branches=("main",))
    assert found.base_sha == base and found.data == MAINTAINERS.encode() and found.problem is None


def test_attack_a_base_commit_from_the_past_reads_the_file_as_its_branch_has_it_now(tmp_path: Path) -> None:
    repo, base = origin(tmp_path)
    (repo / "MAINTAINERS").write_text(MAINTAINERS.replace("M:", "R:"))  # a maintainer removed since the base
    git(repo, "commit", "-q", "-am", "demote")
    tip = git(repo, "rev-parse", "HEAD")
    found = read(repo, tmp_path, base, branches=("main",))
    assert found.base_sha == tip and found.data == MAINTAINERS.replace("M:", "R:").encode()


def test_missing_too_large_and_not_a_plain_file_read_as_problems(tmp_path: Path) -> None:
    repo, base = origin(tmp_path)
    assert read(repo, tmp_path, base, path="nope").problem == f"nope is not in the tree at {base[:12]}"
    too_big = read(repo, tmp_path, base, max_bytes=10)
    assert too_big.data is None and "over the cap of 10" in str(too_big.problem)
    os.symlink("/etc/passwd", repo / "LINK")
    git(repo, "add", "LINK")
    git(repo, "commit", "-q", "-m", "link")
    link = read(repo, tmp_path, git(repo, "rev-parse", "HEAD"), path="LINK")
    assert link.data is None and "not a plain file (mode 120000)" in str(link.problem)


def test_attack_a_base_only_a_fork_has_is_not_read(tmp_path: Path) -> None:
    repo, base = origin(tmp_path)
    fork = git(repo, "commit-tree", "main^{tree}", "-p", "main", "-m", "fork")
    git(repo, "update-ref", "refs/pull/1/head", fork)
    found = read(repo, tmp_path, fork, branches=("main",))
    assert found.data is None and "could not determine base" in str(found.problem)
    assert "not a commit" in str(read(repo, tmp_path, "0" * 40).problem)


def test_the_answer_holds_the_file_in_the_artifact_store_and_the_requests_token(tmp_path: Path) -> None:
    repo, base = origin(tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    request = BaseFileRequest(request_id="r:1", token="tok", tree_name="t", tree_url=str(repo), base_ref="main",
                              path="MAINTAINERS", max_bytes=1 << 20)  # fmt: skip
    answer = answer_request(request, tmp_path / "work", store)
    assert (answer.request_id, answer.token, answer.base_sha, answer.problem) == ("r:1", "tok", base, None)
    assert answer.digest is not None and store.get_bytes(answer.digest) == MAINTAINERS.encode()
    gone = answer_request(request.model_copy(update={"tree_url": str(tmp_path / "nowhere"), "tree_name": "u"}),
                          tmp_path / "work", store)  # fmt: skip
    assert gone.digest is None and "cannot clone" in str(gone.problem)
