"""Checkout: mirror, git am with safety checks, speculative merge, plan and changed lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from workers.checkout import CheckoutOutcome, mirror_path, parse_changed_lines, prepare_checkout
from workers.errors import UserError
from workers.patchcheck import check_patch

PATCHES = EXAMPLES / "hello" / "patches"


def _checkout(repo: Path, tmp_path: Path, **kwargs: object) -> CheckoutOutcome:
    defaults: dict[str, object] = {
        "base_ref": "main",
        "ref": None,
        "patches": (),
        "plan_path": ".labgate/plan.yaml",
        "plan_from": "head",
        "worktree": tmp_path / "wt",
        "keep_ref": "refs/labgate/t",
    }
    defaults.update(kwargs)
    return prepare_checkout(mirror_path(tmp_path / "data", "hello"), str(repo), **defaults)  # type: ignore[arg-type]


def test_patch_applies_and_the_commit_outlives_the_worktree(hello_repo: Path, tmp_path: Path) -> None:
    outcome = _checkout(hello_repo, tmp_path, patches=[("pass.patch", (PATCHES / "pass.patch").read_bytes())])
    assert outcome.head_sha != outcome.base_sha and outcome.tested_sha == outcome.head_sha
    assert outcome.plan_text and outcome.plan_text.startswith("#")
    assert outcome.changed_files and all(outcome.changed_lines[f] for f in outcome.changed_lines)
    assert not (tmp_path / "wt").exists()
    mirror = mirror_path(tmp_path / "data", "hello")
    kept = subprocess.run(["git", "rev-parse", "refs/labgate/t"], cwd=mirror, capture_output=True, text=True)
    assert kept.stdout.strip() == outcome.head_sha


def test_conflicting_patch_names_itself_and_gits_message(hello_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        _checkout(hello_repo, tmp_path, patches=[("conflict.patch", (PATCHES / "conflict.patch").read_bytes())])
    message = str(info.value)
    assert message.startswith('patch "[PATCH] greet: say Hi": conflict.patch does not apply on main@')
    assert "error: patch failed: src/greet.c" in message


def test_unknown_base_is_a_user_error(hello_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="base 'nope' is not a commit in the tree"):
        _checkout(hello_repo, tmp_path, base_ref="nope")


def test_speculative_merge_and_its_conflict(hello_repo: Path, tmp_path: Path) -> None:
    def commit(branch: str, text: str) -> str:
        subprocess.run(["git", "checkout", "-q", "-B", branch, "main"], cwd=hello_repo, check=True)
        (hello_repo / "src" / "greet.c").write_text((hello_repo / "src" / "greet.c").read_text() + text)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", text], cwd=hello_repo,
                       check=True)  # fmt: skip
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=hello_repo, capture_output=True, text=True
        ).stdout.strip()

    topic = commit("topic", "/* topic */\n")
    merged = _checkout(hello_repo, tmp_path, ref=topic, merge=True)
    assert merged.tested_sha == merged.head_sha == topic  # already on main: no merge
    moved = commit("main", "/* main */\n")
    with pytest.raises(UserError, match=rf"merge conflict with main@{moved[:12]}: src/greet.c"):
        _checkout(hello_repo, tmp_path, ref=topic, merge=True, worktree=tmp_path / "wt2")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("diff --git a/../etc/passwd b/../etc/passwd\n", "leaves the tree"),
        ("diff --git a/.git/config b/.git/config\n", "touches git metadata"),
        ("diff --git a/x b/x\nGIT binary patch\n", "binary patches are not accepted"),
        ("diff --git a/x b/x\nnew file mode 120000\n", "symlinks are not accepted"),
    ],
)
def test_unsafe_patches_are_refused(text: str, problem: str) -> None:
    with pytest.raises(UserError, match=problem):
        check_patch("evil.patch", text.encode())


def test_oversized_patch_is_refused() -> None:
    with pytest.raises(UserError, match="byte cap"):
        check_patch("big.patch", b"x" * (9 * 1024 * 1024))


def test_changed_lines_follow_the_new_side_of_each_hunk() -> None:
    diff = "+++ b/x.c\n@@ -3 +3,2 @@\n@@ -10,2 +11,0 @@\n+++ b/y.c\n@@ -1 +1 @@\n"
    assert parse_changed_lines(diff) == {"x.c": [(3, 4)], "y.c": [(1, 1)]}


def test_a_tree_no_filesystem_can_hold_is_the_changes_error(hello_repo: Path, tmp_path: Path) -> None:
    """A ref whose tree has a 300-byte name: git stores it, no build could be given it."""
    git = ["git", "-C", str(hello_repo), "-c", "user.name=m", "-c", "user.email=m@m"]
    blob = subprocess.run([*git, "hash-object", "-w", "--stdin"], input="x", capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    subprocess.run([*git, "update-index", "--add", "--cacheinfo", f"100644,{blob},{'n' * 300}"], check=True)
    subprocess.run([*git, "commit", "-qm", "long name"], check=True)
    with pytest.raises(UserError, match="path too long for a filesystem: nnnn"):
        _checkout(hello_repo, tmp_path, ref="main")


def test_a_tree_listing_a_name_twice_is_the_changes_error(hello_repo: Path, tmp_path: Path) -> None:
    """A ref whose tree (made with mktree, as a hostile pusher's git may) lists a name twice: git's checkout
    and diff each take one entry of the two; the static stage would write both, the warm source one."""

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", "-C", str(hello_repo), "-c", "user.name=m", "-c", "user.email=m@m", *args],
                              input=stdin, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    blob = git("hash-object", "-w", "--stdin", stdin="evil\n")
    twice = f"100644 blob {blob}\tREADME.dup\n" * 2
    tree = git("mktree", stdin=git("ls-tree", "HEAD") + "\n" + twice)
    head = git("commit-tree", tree, "-p", "HEAD", "-m", "twice")
    git("update-ref", "refs/heads/topic", head)
    with pytest.raises(UserError, match="lists 'README.dup' twice"):
        _checkout(hello_repo, tmp_path, ref="topic")
    # Merged onto a base that moved on, git merge-tree keeps one entry of the two: the merged tree is
    # clean, the head the static stage reads from is not.
    git("commit", "-q", "--allow-empty", "-m", "base moves on")
    with pytest.raises(UserError, match="lists 'README.dup' twice"):
        _checkout(hello_repo, tmp_path, ref="topic", merge=True, worktree=tmp_path / "wt2")
