"""Issue 11's poison attack: an untrusted kernel build plants what would make a later build use its
code or run its commands as root (a future-dated object, a `.git/config` with core.fsmonitor, git hooks,
entries in the shared ccache) in every place it can write. Then a trusted build of the same warm key
runs: it recompiles what it must, builds exactly what a cold build in a fresh worker builds, no command
the attack planted ever ran, and the warm source and shared ccache hold nothing of the attack's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.workers.warm_project import FILES, KEY, SCRIPT, Project, git, snapshot

root_only = pytest.mark.needs("root", "the worker runs as root: slot uids, loop disks, binds")

EVIL_UTIL = '#include "util.h"\nint util(int x) { return 99; }\n'


def _attack(marker: Path) -> str:
    """Shell lines planting in every writable place (and trying the read-only ones too)."""
    hook = f"#!/bin/sh\ntouch {marker}\n"
    places = '"$LABGATE_BUILD" /labgate/ccache-local /tmp "$LABGATE_SRC" /labgate/ccache /labgate'
    return f"""
cat > /tmp/evil.c <<'EOF'
{EVIL_UTIL}EOF
gcc -I"$LABGATE_SRC" -c /tmp/evil.c -o /tmp/evil.o
for dir in {places}; do
  mkdir -p "$dir/.git/hooks" 2>/dev/null || continue
  printf '[core]\\n\\tfsmonitor = touch {marker}\\n\\thooksPath = %s/.git/hooks\\n' "$dir" > "$dir/.git/config"
  for h in pre-commit post-checkout post-merge pre-auto-gc reference-transaction fsmonitor-watchman; do
    printf '{hook}' > "$dir/.git/hooks/$h"; chmod +x "$dir/.git/hooks/$h"
  done
  echo "planted .git in $dir"
done
# A future-dated object where the next build would look for util.o, and one beside every other object.
for dir in "$LABGATE_BUILD" /labgate/ccache-local /tmp; do
  cp /tmp/evil.o "$dir/util.o" 2>/dev/null && touch -d 2099-01-01 "$dir/util.o" && echo "planted util.o in $dir"
done
# The shared ccache: written directly, and through ccache with the read-only attribute left off.
touch /labgate/ccache/planted 2>/dev/null && echo "WROTE SHARED CCACHE"
CCACHE_REMOTE_STORAGE=file:/labgate/ccache CCACHE_REMOTE_ONLY=1 ccache gcc -I"$LABGATE_SRC" -c /tmp/evil.c \\
  -o /tmp/evil2.o 2>&1 | tail -1
true
"""


def _fresh_digest(tmp_path: Path, sha: str, repo: Path) -> str:
    """What a cold trusted build of sha in a worker that never saw the attack builds."""
    fresh = Project(repo, tmp_path / "fresh-mirror.git", tmp_path / "fresh-work", Project.make_store(tmp_path))
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(fresh.mirror)], check=True)
    outcome = fresh.build(sha, trusted=True)
    assert outcome.result == "pass" and outcome.kernel is not None
    assert outcome.kernel["warm"]["mode"] == "cold"
    return str(outcome.kernel["binary_digest"])


@root_only
def test_an_untrusted_build_cannot_poison_the_next_trusted_build(tmp_path: Path) -> None:
    marker = tmp_path / "planted-command-ran"
    project = Project.make(tmp_path / "lab")
    assert project.build(project.mirror_head(), trusted=True).result == "pass"
    shared_ccache = project.shared_ccache
    ccache_before = snapshot(shared_ccache)
    assert ccache_before, "the trusted base build filled the shared ccache"
    build_before = snapshot(project.build_dir)

    hostile = project.commit({"main.c": FILES["main.c"].replace("- 2", "- 4")}, "untrusted change")
    attack = project.build(hostile, trusted=False, script=_attack(marker) + SCRIPT)
    log = project.log(attack)
    assert attack.result == "pass", log
    assert "planted .git in /labgate/build" in log and "planted util.o in /labgate/build" in log, log
    assert "planted .git in /labgate/src" not in log and "WROTE SHARED CCACHE" not in log, log
    assert attack.kernel is not None and attack.kernel["warm"]["mode"] == "copy"
    # Nothing the untrusted build wrote reached the warm state.
    assert snapshot(project.build_dir) == build_before
    assert snapshot(shared_ccache) == ccache_before
    assert not (project.work / "work" / f"job-{project.jobs}").exists(), "the job's own disk is thrown away"

    trusted = project.commit({"util.c": FILES["util.c"].replace("x + 1", "x + 3")}, "trusted change")
    outcome = project.build(trusted, trusted=True)
    assert outcome.result == "pass", project.log(outcome)
    assert outcome.kernel is not None
    assert outcome.kernel["warm"]["mode"] == "warm"
    # main.c went back to the base's text (the source moved on from the hostile commit): both recompile.
    assert sorted(outcome.kernel["recompiled"]) == ["main.o", "util.o"]
    assert outcome.kernel["binary_digest"] == _fresh_digest(tmp_path, trusted, project.repo)
    assert not marker.exists(), "a command the untrusted build planted ran"
    # The warm source is exactly the trusted commit's files: no .git, no planted file.
    listed = sorted(git(project.repo, "ls-tree", "-r", "--name-only", trusted).split("\n"))
    on_disk = sorted(os.path.relpath(os.path.join(top, name), project.source)
                     for top, _dirs, files in os.walk(project.source) for name in files)  # fmt: skip
    assert on_disk == listed
    for name in listed:
        assert (project.source / name).read_bytes() == git(project.repo, "show", f"{trusted}:{name}").encode() + b"\n"
    assert not marker.exists()
    assert KEY in str(project.build_dir)


@root_only
def test_another_trees_trusted_build_neither_feeds_nor_reads_this_trees_ccache(tmp_path: Path) -> None:
    """Trust is per tree: a build trusted by another tree (its owner's own code) writes the shared ccache
    it is given. Were that ccache this tree's too, the objects it stored would be linked into this tree's
    builds (ccache hits), and this tree's untrusted builds could read what a private tree compiled."""
    project = Project.make(tmp_path / "lab")
    sha = project.mirror_head()
    plant = 'echo "private tree text" > /labgate/ccache/planted\n'
    other = project.build(sha, trusted=True, script=plant + SCRIPT, tree="someone/else")
    assert other.result == "pass", project.log(other)
    stats = SCRIPT + "ccache --print-stats | grep -E '^remote_storage_hit'\n"
    peek = 'cat /labgate/ccache/planted 2>/dev/null || echo "NOTHING PLANTED HERE"\n'
    untrusted = project.build(sha, trusted=False, script=peek + stats)
    log = project.log(untrusted)
    assert untrusted.result == "pass", log
    assert "private tree text" not in log and "NOTHING PLANTED HERE" in log, log
    assert "remote_storage_hit\t3" not in log, "objects another tree's build stored were used"
    trusted = project.build(sha, trusted=True, script=stats)
    log = project.log(trusted)
    assert trusted.result == "pass", log
    assert "remote_storage_hit\t3" not in log, "objects another tree's build stored were used"
