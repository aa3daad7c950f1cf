"""The warm state's parts without a sandbox: the warm source brought from commit to commit by rewriting only
what differs, paths that would leave the tree, the eviction of least recently used build dirs, the ledger."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.workers.warm_project import Project, git, snapshot
from workers import kbuild, warm
from workers.errors import InfraError, UserError
from workers.source import TreeChange, apply_changes, changed_between
from workers.spec import KernelBuild


def _tree(tmp_path: Path) -> tuple[Project, warm.TreeWarm]:
    project = Project.make(tmp_path, {"keep.c": "keep\n", "edit.c": "old\n", "gone.c": "gone\n",
                                      "run.sh": "#!/bin/sh\n", "dir/file": "x\n", "link": "keep.c"})  # fmt: skip
    root = warm.warm_root(tmp_path / "warm")
    return project, warm.TreeWarm(root, "some/tree")


def _sync(project: Project, tree: warm.TreeWarm, sha: str) -> warm.SourceUpdate:
    return warm.prepare_source(tree, project.mirror, sha, tree.root / "index")


def test_the_source_is_exported_once_then_only_changed_files_are_written(tmp_path: Path) -> None:
    project, tree = _tree(tmp_path)
    assert _sync(project, tree, project.mirror_head()).how == "exported"
    assert os.stat(tree.root).st_mode & 0o777 == 0o700
    (tree.source / "link").unlink()
    os.symlink("keep.c", tree.source / "link")  # as git would: the symlink test needs one made by us
    before = snapshot(tree.source)
    os.chmod(project.repo / "run.sh", 0o755)
    (project.repo / "link").unlink()
    os.symlink("edit.c", project.repo / "link")
    sha = project.commit({"edit.c": "new\n", "gone.c": None, "added/deep/new.c": "new\n", "dir/file": None,
                          "dir": "now a file\n"}, "change")  # fmt: skip
    update = _sync(project, tree, sha)
    assert update.how == "synced" and update.changed == 7
    after = snapshot(tree.source)
    assert after["keep.c"] == before["keep.c"], "an unchanged file keeps its mtime: make leaves its object alone"
    assert after["edit.c"][2] == b"new\n" and after["edit.c"][1] > before["edit.c"][1]
    assert "gone.c" not in after and after["added/deep/new.c"][2] == b"new\n"
    assert after["dir"][2] == b"now a file\n"
    assert after["run.sh"][0] & 0o777 == 0o755
    assert os.readlink(tree.source / "link") == "edit.c"
    assert _sync(project, tree, sha).how == "kept"
    # And back: the base's files again, those that differ with fresh mtimes.
    assert _sync(project, tree, project.git_rev("HEAD~1")).how == "synced"
    assert (tree.source / "dir" / "file").read_text() == "x\n" and (tree.source / "gone.c").exists()


def test_a_source_left_half_written_is_exported_again(tmp_path: Path) -> None:
    project, tree = _tree(tmp_path)
    _sync(project, tree, project.mirror_head())
    (tree.dir / "src.json").unlink()  # what a worker killed while changing the tree leaves
    (tree.source / "keep.c").write_text("half\n")
    sha = project.commit({"edit.c": "new\n"}, "change")
    assert _sync(project, tree, sha).how == "exported"
    assert (tree.source / "keep.c").read_text() == "keep\n"


def test_writing_never_follows_a_link_out_of_the_tree(tmp_path: Path) -> None:
    project, tree = _tree(tmp_path)
    _sync(project, tree, project.mirror_head())
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tree.source / "escape")
    blob = project.git_rev("HEAD:keep.c")
    with pytest.raises(InfraError, match="not a directory"):
        apply_changes(project.mirror, [TreeChange("escape/planted", "100644", blob)], tree.source)
    assert not list(outside.iterdir())


def test_a_commit_with_a_git_directory_is_refused(tmp_path: Path) -> None:
    project, tree = _tree(tmp_path)
    base = project.mirror_head()
    blob = project.git_blob(b"[core]\n\tfsmonitor = touch /tmp/x\n")
    hostile = project.commit_tree_with(base, ".GIT/config", blob)
    with pytest.raises(UserError, match=r"\.git component"):
        changed_between(project.mirror, base, hostile)


def _with_duplicate(project: Project, parent: str, name: str, blob: str) -> str:
    """A commit whose top tree lists `name` twice (mktree takes it; git's checkout and diff each pick
    one entry of the two, not the same one), pushed to the mirror as a hostile head would be."""
    entries = git(project.repo, "ls-tree", parent) + f"\n100644 blob {blob}\t{name}\n"
    tree = git(project.repo, "mktree", input_bytes=entries.encode())
    sha = git(project.repo, "commit-tree", tree, "-p", parent, "-m", "hostile")
    git(project.repo, "push", "-q", "-f", str(project.mirror), f"{sha}:refs/heads/hostile")
    return sha


@pytest.mark.parametrize("cold", [False, True], ids=["synced", "exported"])
def test_a_tree_listing_a_name_twice_never_reaches_the_warm_source(tmp_path: Path, cold: bool) -> None:
    """The sync trusts that the warm source holds exactly the last commit's files. A hostile tree naming a
    file twice broke that: git diff paired one entry with the next commit's file and called the other
    deleted, so the next (trusted) build's source lost keep.c, a file of its own commit."""
    project, tree = _tree(tmp_path)
    base = project.mirror_head()
    if not cold:
        _sync(project, tree, base)
    hostile = _with_duplicate(project, base, "keep.c", project.git_blob(b"evil\n"))
    with pytest.raises(UserError, match="keep.c.*twice"):
        _sync(project, tree, hostile)
    assert _sync(project, tree, base).how in ("kept", "exported")
    assert (tree.source / "keep.c").read_text() == "keep\n"


def test_a_tree_with_a_file_where_a_directory_is_is_refused_as_the_changes(tmp_path: Path) -> None:
    project, tree = _tree(tmp_path)
    base = project.mirror_head()
    _sync(project, tree, base)
    hostile = project.commit_tree_with(base, "keep.c/inner.c", project.git_blob(b"x\n"))
    with pytest.raises(UserError, match="keep.c.*both a file and a directory"):
        _sync(project, tree, hostile)


def test_least_recently_used_build_dirs_are_evicted_past_the_cap(tmp_path: Path) -> None:
    root = warm.warm_root(tmp_path / "warm")
    with warm.holding_tree(root, "a") as tree:
        for number, key in enumerate(("1" * 16, "2" * 16, "3" * 16)):
            path = warm.mark_dirty(tree, key)
            (path / "obj.o").write_bytes(b"\0" * (1 << 20))
            warm.mark_clean(tree, key)
            state = tree.build_dir(key).with_name(f"{key}.json")
            state.write_text(json.dumps({**json.loads(state.read_text()), "used": number}))
        held = warm.evict(root, tree, "1" * 16, max_bytes=int(1.5 * (1 << 20)))
        assert tree.build_dir("1" * 16).exists(), "the build dir in use is never evicted"
        assert not tree.build_dir("2" * 16).exists()
        assert not tree.build_dir("3" * 16).exists()
        assert held < 1.5 * (1 << 20)
        assert warm.take_build_dir(tree, "2" * 16) is None


def test_other_trees_sources_go_when_build_dirs_are_not_enough(tmp_path: Path) -> None:
    project, _ = _tree(tmp_path)
    root = warm.warm_root(tmp_path / "warm")
    for name in ("old", "current"):
        with warm.holding_tree(root, name) as tree:
            _sync(project, tree, project.mirror_head())
    with warm.holding_tree(root, "current") as current:
        held = warm.evict(root, current, "1" * 16, max_bytes=1)
        assert current.source.is_dir() and not warm.TreeWarm(root, "old").source.exists()
        assert held > 0  # the current tree's source stays, whatever the cap


def test_other_trees_ccaches_go_last(tmp_path: Path) -> None:
    """Each tree has its own ccache (never read or written by another tree's builds), so a tree that builds
    no more would keep its ccache for ever: past the cap, other trees' ccaches go too."""
    root = warm.warm_root(tmp_path / "warm")
    kernel = KernelBuild(arch="x86_64", warm_key="1" * 16)
    for name in ("old", "current"):
        with warm.holding_tree(root, name) as tree:
            (warm.ccache_dir(tree, kernel) / "entry").write_bytes(b"x" * 8192)
    with warm.holding_tree(root, "current") as current:
        assert warm.ccache_dir(current, kernel) != warm.ccache_dir(warm.TreeWarm(root, "old"), kernel)
        held = warm.evict(root, current, "1" * 16, max_bytes=1)
        assert (warm.ccache_dir(current, kernel) / "entry").exists()
        assert not (root / "ccache" / warm.TreeWarm(root, "old").dir.name).exists()
        assert held > 0


def test_warnings_are_parsed_with_paths_relative_to_the_tree() -> None:
    text = ("/labgate/src/kernel/printk/printk.c:12:5: warning: unused variable 'x' [-Wunused-variable]\n"
            "In file included from /labgate/src/init/main.c:3:\n"
            "./include/generated/autoconf.h:1:2: error: bad thing\n"
            "/labgate/build/arch/x86/gen.h:7: warning: no column\n")  # fmt: skip
    found = kbuild.parse_warnings(text)
    assert found == [
        {"file": "kernel/printk/printk.c", "line": 12, "col": 5, "level": "warning", "flag": "-Wunused-variable",
         "text": "unused variable 'x'"},
        {"file": "<build>/include/generated/autoconf.h", "line": 1, "col": 2, "level": "error", "flag": "",
         "text": "bad thing"},
        {"file": "<build>/arch/x86/gen.h", "line": 7, "col": 0, "level": "warning", "flag": "", "text": "no column"},
    ]  # fmt: skip


def test_the_shared_ccache_is_pruned_least_recently_used_first(tmp_path: Path) -> None:
    cache = tmp_path / "ccache"
    (cache / "ab").mkdir(parents=True)
    for number in range(4):
        entry = cache / "ab" / f"entry{number}"
        entry.write_bytes(b"x" * 8192)
        os.utime(entry, (number, number))
    held = warm.prune_ccache(cache, 2 * 8192)
    assert sorted(path.name for path in (cache / "ab").iterdir()) == ["entry2", "entry3"]
    assert held <= 2 * 8192


def test_tree_names_never_leave_the_warm_root_nor_share_a_dir(tmp_path: Path) -> None:
    root = warm.warm_root(tmp_path / "warm")
    dirs = {warm.TreeWarm(root, name).dir for name in ("..", ".", "a/b", "a_b", "a.b")}
    assert len(dirs) == 5 and all(path.parent == root / "trees" for path in dirs)
    with pytest.raises(InfraError, match="name of its tree"), warm.holding_tree(root, ""):
        pass


def test_the_warm_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(warm.WARM_MAX_BYTES_ENV, "12345")
    assert warm.warm_max_bytes() == 12345
    monkeypatch.setenv(warm.WARM_MAX_BYTES_ENV, "lots")
    with pytest.raises(Exception, match="LABGATE_WARM_MAX_BYTES='lots'"):
        warm.warm_max_bytes()
