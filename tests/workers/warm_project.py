"""A tiny C project built like a kernel (BuildSpec.kernel set): its Makefile honours O= and CC, so the
warm build tests and the poison attack run the real worker path in seconds, not minutes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.build import BuildOutcome, run_build
from workers.slots import BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS, UidRange
from workers.spec import BuildLimits, BuildSpec, KernelBuild
from workers.warm import TreeWarm, ccache_dir

MAKEFILE = """\
O ?= .
OBJS := $(O)/main.o $(O)/util.o $(O)/noisy.o
all: $(O)/prog
$(O)/%.o: $(LABGATE_SRC)/%.c $(LABGATE_SRC)/util.h
\t$(CC) -Wall -Wunused-variable -O1 -c $< -o $@
$(O)/prog: $(OBJS)
\t$(CC) -o $@ $(OBJS)
"""
FILES = {
    "Makefile": MAKEFILE,
    "util.h": "int util(int x);\n",
    "main.c": '#include "util.h"\nint main(void) { return util(1) - 2; }\n',
    "util.c": '#include "util.h"\n/* util */\nint util(int x) { return x + 1; }\n',
    # A unit that always warns: its warning must stay in the ledger after builds that do not recompile it.
    "noisy.c": "int noisy(void) { int unused_here; return 0; }\n",
}
# As bot/core/plans.py renders a kernel recipe: make with O= and CC="$LABGATE_CC gcc".
SCRIPT = 'make -s -f "$LABGATE_SRC/Makefile" O="$LABGATE_BUILD" CC="$LABGATE_CC gcc"\n'
KEY = "0123456789abcdef0123456789abcdef"
TREE = "tiny/tree"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip


def git(repo: Path, *args: str, input_bytes: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, input=input_bytes, check=True,
                          env={**os.environ, **GIT_ENV})  # fmt: skip
    return done.stdout.decode().strip()


@dataclass
class Project:
    """A repo to commit to (the test's own, never a build's) and a bare mirror the worker reads."""

    repo: Path
    mirror: Path
    work: Path
    store: ArtifactStore
    jobs: int = 0

    @classmethod
    def make(cls, root: Path, files: dict[str, str] = FILES) -> Project:
        repo = root / "repo"
        repo.mkdir(parents=True)
        git(repo, "init", "-q", "-b", "main")
        project = cls(repo, root / "mirror.git", root / "work", cls.make_store(root))
        project.commit(files, "base")
        return project

    @staticmethod
    def make_store(root: Path) -> ArtifactStore:
        return ArtifactStore(root / "store")

    def commit(self, files: Mapping[str, str | None], message: str) -> str:
        """Write (None: delete) files, commit, push to the mirror; the new commit's sha."""
        for name, text in files.items():
            path = self.repo / name
            if text is None:
                path.unlink()
                if path.parent != self.repo and not any(path.parent.iterdir()):
                    path.parent.rmdir()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        if not self.mirror.exists():
            subprocess.run(["git", "clone", "-q", "--bare", str(self.repo), str(self.mirror)], check=True)
        else:
            git(self.repo, "push", "-q", "-f", str(self.mirror), "main")
        return git(self.repo, "rev-parse", "HEAD")

    def build(self, sha: str, *, trusted: bool, script: str = SCRIPT, key: str = KEY, timeout_s: int = 60,
              artifacts: tuple[str, ...] = ("prog",), tree: str = TREE) -> BuildOutcome:  # fmt: skip
        self.jobs += 1
        spec = BuildSpec(name="tiny", head_sha=sha, script=script, artifacts=artifacts, timeout_s=timeout_s,
                         limits=BuildLimits(disk_bytes=256 << 20, memory_bytes=1 << 30),
                         kernel=KernelBuild(arch="x86_64", warm_key=key), trusted=trusted)  # fmt: skip
        return run_build(spec, mirror=self.mirror, job_dir=self.work / "work" / f"job-{self.jobs}",
                         uids=UidRange.from_env(BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS), store=self.store,
                         max_log_bytes=1 << 20, tree_name=tree, warm_dir=self.work / "warm")  # fmt: skip

    def mirror_head(self) -> str:
        return git(self.repo, "rev-parse", "HEAD")

    def git_rev(self, rev: str) -> str:
        return git(self.repo, "rev-parse", rev)

    def git_blob(self, content: bytes) -> str:
        return git(self.repo, "hash-object", "-w", "--stdin", input_bytes=content)

    def commit_tree_with(self, parent: str, path: str, blob: str) -> str:
        """A commit adding DIR/NAME (which git's own checkout would refuse, e.g. a .git component), made
        with mktree: update-index refuses such a path, a hostile pusher's git need not."""
        directory, name = path.split("/")
        subtree = git(self.repo, "mktree", input_bytes=f"100644 blob {blob}\t{name}\n".encode())
        entries = git(self.repo, "ls-tree", parent) + f"\n040000 tree {subtree}\t{directory}\n"
        tree = git(self.repo, "mktree", input_bytes=entries.encode())
        sha = git(self.repo, "commit-tree", tree, "-p", parent, "-m", "hostile")
        git(self.repo, "push", "-q", "-f", str(self.mirror), f"{sha}:refs/heads/hostile")
        return sha

    @property
    def script(self) -> str:
        return SCRIPT

    def log(self, outcome: BuildOutcome) -> str:
        return self.store.get_bytes(outcome.log_digest).decode(errors="replace")

    @property
    def warm(self) -> Path:
        return self.work / "warm"

    @property
    def tree(self) -> TreeWarm:
        return TreeWarm(self.warm, TREE)

    @property
    def shared_ccache(self) -> Path:
        """The tree's shared ccache of the builds' (arch, toolchain)."""
        return ccache_dir(self.tree, KernelBuild(arch="x86_64", warm_key=KEY))

    @property
    def source(self) -> Path:
        return self.tree.source

    @property
    def build_dir(self) -> Path:
        return self.tree.build_dir(KEY)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path below root: (mode, mtime_ns, content or link target); links never followed."""
    found = {}
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(top, name)
            info = os.lstat(path)
            if os.path.islink(path):
                content = os.readlink(path).encode()
            elif os.path.isfile(path):
                content = Path(path).read_bytes()
            else:
                content = b""
            found[os.path.relpath(path, root)] = (info.st_mode, info.st_mtime_ns, content)
    return found
