"""A base named by a commit (a series' base-commit: trailer) is used only when it is on one of the tree's
branches: real git, a bare mirror that also holds a fork's ref (refs/pull/1/head)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import EXAMPLES
from workers.checkout import CheckoutOutcome, mirror_path, prepare_checkout
from workers.errors import UserError
from workers.spec import CheckoutSpec

PATCH = EXAMPLES / "hello" / "patches" / "pass.patch"


def git(repo: Path, *args: str) -> str:
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(["git", *env, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_on(repo: Path, start: str, text: str) -> str:
    """A commit on top of `start`, left on no branch (the caller names a ref for it)."""
    git(repo, "checkout", "-q", "--detach", start)
    (repo / "NOTES").write_text(text)
    git(repo, "add", "NOTES")
    git(repo, "commit", "-qm", text)
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return sha


def checkout(repo: Path, tmp_path: Path, base: str, branches: tuple[str, ...]) -> CheckoutOutcome:
    return prepare_checkout(
        mirror_path(tmp_path / "data", "hello"), str(repo), base_ref=base, ref=None,
        patches=[("pass.patch", PATCH.read_bytes())], plan_path=".labgate/plan.yaml", plan_from="base",
        worktree=tmp_path / "wt", keep_ref="refs/labgate/t", base_branches=branches,
    )  # fmt: skip


def test_attack_a_base_commit_only_a_fork_has_is_refused_with_the_words(hello_repo: Path, tmp_path: Path) -> None:
    fork = commit_on(hello_repo, "main", "only in a fork")
    git(hello_repo, "update-ref", "refs/pull/1/head", fork)
    with pytest.raises(UserError) as refused:
        checkout(hello_repo, tmp_path, fork, ("main", "next"))
    assert str(refused.value) == (f"could not determine base: {fork} is not on any of the tree's branches "
                                  "(main, next)")  # fmt: skip
    # It is in the mirror all the same: only the branch rule refuses it.
    mirror = mirror_path(tmp_path / "data", "hello")
    assert git(mirror, "rev-parse", "refs/pull/1/head") == fork
    # And again once the mirror exists (a fetch, not a clone): an abbreviated trailer too.
    with pytest.raises(UserError, match="is not on any of the tree's branches"):
        checkout(hello_repo, tmp_path, fork[:12], ("main",))


def test_attack_a_tag_or_a_branch_the_tree_does_not_list_is_not_enough(hello_repo: Path, tmp_path: Path) -> None:
    tagged = commit_on(hello_repo, "main", "tagged, on no branch")
    git(hello_repo, "tag", "v-evil", tagged)
    side = commit_on(hello_repo, "main", "on a branch labgate is not told of")
    git(hello_repo, "branch", "side", side)
    for sha in (tagged, side):
        with pytest.raises(UserError, match="could not determine base: .* is not on any of the tree's branches"):
            checkout(hello_repo, tmp_path, sha, ("main",))


def test_a_base_commit_on_a_configured_branch_is_used(hello_repo: Path, tmp_path: Path) -> None:
    old_main = git(hello_repo, "rev-parse", "main")
    git(hello_repo, "branch", "next", commit_on(hello_repo, "main", "on next"))
    (hello_repo / "MORE").write_text("main moves on\n")
    git(hello_repo, "add", "MORE")
    git(hello_repo, "commit", "-qm", "main moves on")
    on_next = git(hello_repo, "rev-parse", "next")
    for base in (old_main, on_next):  # an older commit of main; the head of the second branch
        outcome = checkout(hello_repo, tmp_path, base, ("main", "next"))
        assert outcome.base_sha == base and outcome.head_sha != base


def test_a_branch_base_is_not_checked_as_before(hello_repo: Path, tmp_path: Path) -> None:
    """Pull requests and `labgate try` name a branch and pass no branches: unchanged."""
    assert checkout(hello_repo, tmp_path, "main", ()).base_sha == git(hello_repo, "rev-parse", "main")


def test_attack_a_tag_named_like_the_branch_is_not_the_base(hello_repo: Path, tmp_path: Path) -> None:
    """git's own order reads `main` as refs/tags/main before refs/heads/main: whoever may push a tag (not
    the branch) could choose the base, and with it the plan, of every change into main."""
    main = git(hello_repo, "rev-parse", "main")
    git(hello_repo, "tag", "main", commit_on(hello_repo, "main", "the tag's own plan"))
    assert checkout(hello_repo, tmp_path, "main", ()).base_sha == main


@pytest.mark.parametrize("name", ["-x", "a..b", "a b", "main^", "a:b", "", "refs//x", "x.lock", "a@{1}"])
def test_attack_a_branch_name_git_would_read_as_something_else_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="branch"):
        CheckoutSpec(base_ref="0" * 40, base_branches=(name,))
    assert CheckoutSpec(base_ref="0" * 40, base_branches=("main", "net-next/main")).base_branches[1] == "net-next/main"
