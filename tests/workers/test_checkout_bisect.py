"""A bisection's checkouts on a real git repository: the first-parent commits with their authors, and a commit
reverted on the head in the bare mirror (no worktree), a revert that conflicts being the tree's error."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.core.bisect import author_address, parse_commit_list
from workers.checkout import CheckoutOutcome, mirror_path, prepare_checkout
from workers.errors import UserError
from workers.spec import CheckoutSpec, JobSpec
from workers.tasks import execute_checkout


def git(repo: Path, *args: str, author: str = "Dev <dev@example.org>") -> str:
    name, _, mail = author.partition(" <")
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": mail.rstrip(">"),
           "GIT_COMMITTER_NAME": "c", "GIT_COMMITTER_EMAIL": "c@example.org"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, path: str, text: str, author: str = "Dev <dev@example.org>") -> str:
    (repo / path).write_text(text)
    git(repo, "add", path)
    git(repo, "commit", "-qm", f"write {path}", author=author)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def staging(tmp_path: Path) -> tuple[Path, list[str]]:
    """A branch of eight commits after `good` (index 0), the fourth breaking `status`, with a merge in it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    shas = [commit(repo, "status", "ok\n")]
    for n in range(1, 9):
        if n == 4:
            shas.append(commit(repo, "status", "broken\n", author="Culprit Person <culprit@example.org>"))
        elif n == 6:  # a merged topic: first-parent order lists the merge, not the topic's commits
            git(repo, "checkout", "-qb", "topic", "HEAD")
            commit(repo, "topic", "topic\n")
            git(repo, "checkout", "-q", "main")
            git(repo, "merge", "-q", "--no-ff", "-m", "merge topic", "topic")
            shas.append(git(repo, "rev-parse", "HEAD"))
        else:
            shas.append(commit(repo, f"file{n}", f"{n}\n"))
    return repo, shas


def checkout(repo: Path, tmp_path: Path, base: str, ref: str, **kwargs: object) -> CheckoutOutcome:
    return prepare_checkout(mirror_path(tmp_path / "data", "t"), str(repo), base_ref=base, ref=ref, patches=(),
                            plan_path=".labgate/plan.yaml", plan_from="head", worktree=tmp_path / "wt",
                            keep_ref="refs/labgate/pipelines/1", **kwargs)  # type: ignore[arg-type]  # fmt: skip


def show(tmp_path: Path, rev: str) -> str:
    return git(mirror_path(tmp_path / "data", "t"), "show", rev)


def test_the_first_parent_commits_are_listed_oldest_first_with_their_authors(staging: tuple[Path, list[str]],
                                                                             tmp_path: Path) -> None:  # fmt: skip
    repo, shas = staging
    outcome = checkout(repo, tmp_path, shas[0], shas[-1], list_commits=True)
    assert outcome.commits is not None
    assert [sha for sha, _ in outcome.commits] == shas[1:]  # the topic's own commit is not on the first parents
    commits, authors = parse_commit_list([list(pair) for pair in outcome.commits], shas[0], shas[-1])
    assert commits == tuple(shas)
    assert author_address(authors[shas[4]]) == "culprit@example.org"
    assert checkout(repo, tmp_path, shas[0], shas[-1]).commits is None  # only when asked


def test_the_culprit_is_reverted_on_the_head_without_a_worktree(staging: tuple[Path, list[str]],
                                                                tmp_path: Path) -> None:  # fmt: skip
    repo, shas = staging
    outcome = checkout(repo, tmp_path, shas[0], shas[-1], revert_sha=shas[4])
    assert outcome.head_sha == shas[-1] and outcome.tested_sha != shas[-1]
    mirror = mirror_path(tmp_path / "data", "t")
    assert git(mirror, "show", f"{outcome.tested_sha}:status") == "ok"
    assert git(mirror, "rev-parse", f"{outcome.tested_sha}^1") == shas[-1]  # one commit on the head
    assert git(mirror, "show", f"{outcome.tested_sha}:file8") == "8"  # the rest of the head is kept
    assert git(mirror, "rev-parse", "refs/labgate/pipelines/1") == outcome.tested_sha  # kept for the builds
    assert not (tmp_path / "wt").exists()
    assert git(repo, "rev-parse", "HEAD") == shas[-1]  # the tree itself is untouched


def test_a_merge_is_reverted_against_its_first_parent(staging: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, shas = staging
    outcome = checkout(repo, tmp_path, shas[0], shas[-1], revert_sha=shas[6])
    mirror = mirror_path(tmp_path / "data", "t")
    listed = git(mirror, "ls-tree", "--name-only", outcome.tested_sha).split()
    assert "topic" not in listed and "file8" in listed


def test_a_revert_that_conflicts_is_the_trees_error(staging: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, shas = staging
    head = commit(repo, "status", "broken and then edited\n")
    with pytest.raises(UserError, match=rf"the revert of {shas[4][:12]} does not apply on {head[:12]}: .*status"):
        checkout(repo, tmp_path, shas[0], head, revert_sha=shas[4])


def test_a_revert_of_a_commit_outside_the_head_is_refused(staging: tuple[Path, list[str]], tmp_path: Path) -> None:
    repo, shas = staging
    git(repo, "checkout", "-qb", "other", shas[0])
    elsewhere = commit(repo, "x", "x\n")
    git(repo, "checkout", "-q", "main")
    with pytest.raises(UserError, match="is not in .*'s history"):
        checkout(repo, tmp_path, shas[0], shas[-1], revert_sha=elsewhere)
    root = git(repo, "rev-list", "--max-parents=0", "HEAD")
    with pytest.raises(UserError, match="has no parent"):
        checkout(repo, tmp_path, shas[0], shas[-1], revert_sha=root)


@pytest.mark.parametrize("value", ["HEAD", "main", "--output=/tmp/x", "a" * 39, "A" * 40, "a" * 40 + "\n"])
def test_the_spec_takes_only_a_commit_id_to_revert(value: str) -> None:
    with pytest.raises(ValidationError):
        CheckoutSpec(base_ref="main", ref="main", revert_sha=value)
    assert CheckoutSpec(base_ref="main", ref="main", revert_sha="a" * 40).revert_sha == "a" * 40


def test_an_author_with_a_line_break_is_listed_as_written_and_refused_as_an_address(tmp_path: Path) -> None:
    """Git keeps what an author wrote (a commit object can hold a CR): the list carries it, the control side's
    address check refuses it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    good = commit(repo, "a", "a\n")
    (repo / "a").write_text("b\n")
    git(repo, "add", "a")
    tree = git(repo, "write-tree")
    raw = (f"tree {tree}\nparent {good}\nauthor Eve\rBcc: victim@example.org <eve@example.org> 0 +0000\n"
           "committer c <c@example.org> 0 +0000\n\nhostile\n")  # fmt: skip
    bad = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--literally", "--stdin"], cwd=repo, input=raw,
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    git(repo, "update-ref", "refs/heads/main", bad)
    outcome = checkout(repo, tmp_path, good, bad, list_commits=True)
    assert outcome.commits is not None and outcome.commits[-1][0] == bad
    assert "Bcc: victim@example.org" in outcome.commits[-1][1]  # after a CR (text mode reads it as a LF)
    assert author_address(outcome.commits[-1][1]) is None


def test_the_checkout_job_sends_what_the_control_side_reads(staging: tuple[Path, list[str]], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Through the checkout task's body: the list as JSON the control side's parse_commit_list takes, and a
    revert step's tested commit; a revert that conflicts raises the tree's error (UserError: not retried)."""
    repo, shas = staging
    monkeypatch.setenv("LABGATE_WORK_DIR", str(tmp_path / "worker"))
    monkeypatch.setenv("LABGATE_ARTIFACTS_DIR", str(tmp_path / "artifacts"))

    def job(**fields: object) -> JobSpec:
        return JobSpec(job_id=9, pipeline_id=4, kind="checkout", tree_name="t", tree_url=str(repo),
                       max_log_bytes=1 << 20,
                       checkout=CheckoutSpec(base_ref=shas[0], ref=shas[-1], **fields))  # type: ignore[arg-type]  # fmt: skip

    listed = execute_checkout(job(list_commits=True), 1, []).outputs
    sent = json.loads(json.dumps(listed))  # as it crosses the results queue
    assert parse_commit_list(sent["commits"], shas[0], shas[-1])[0] == tuple(shas)
    assert "commits" not in execute_checkout(job(), 1, []).outputs
    reverted = execute_checkout(job(revert_sha=shas[4]), 1, []).outputs
    assert reverted["head_sha"] == shas[-1] and reverted["tested_sha"] not in shas
    assert git(mirror_path(tmp_path / "worker", "t"), "show", f"{reverted['tested_sha']}:status") == "ok"
    commit(repo, "status", "edited again\n")
    with pytest.raises(UserError, match="does not apply"):
        execute_checkout(job(revert_sha=shas[4]).model_copy(update={"checkout": CheckoutSpec(
            base_ref=shas[0], ref="main", revert_sha=shas[4])}), 1, [])  # fmt: skip
