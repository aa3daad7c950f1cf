"""A tiny tree for the static stage's tests: stand-in checkpatch and kernel-doc (Perl, like the real
ones) in the base, commits on top, and the bare mirror the worker reads. The real tools run in the
slow test on Linux 6.1 (tests/workers/test_static_linux_slow.py)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.slots import UidRange
from workers.spec import StaticSpec, TestCase
from workers.static import StaticOutcome, run_static

TEST_UIDS = UidRange(64106, 1)  # a build slot's uid the sandbox tests do not use
GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.org"}  # fmt: skip

# Finds "FIXME" (an error) and "TODO" (a warning) on added lines; says where it ran and with what.
STAND_IN_CHECKPATCH = r"""#!/usr/bin/env perl
use strict;
my $patch = $ARGV[-1];
print STDERR "checkpatch argv: @ARGV\n";
print "conf in cwd: ", (-e ".checkpatch.conf" ? "yes" : "no"), "\n";
open(my $fh, '<', $patch) or die "cannot open $patch: $!";
my ($n, $e, $w) = (0, 0, 0);
while (my $line = <$fh>) {
    $n++;
    sleep 30 if $line =~ /^\+.*SLOWLY/;
    if ($line =~ /^\+.*FIXME/) { print "$patch:$n: ERROR:FIXME_ADDED: a FIXME is added\n"; $e++; }
    elsif ($line =~ /^\+.*TODO/) { print "$patch:$n: CHECK:TODO_ADDED: a TODO is added\n"; $w++; }
}
print "total: $e errors, $w warnings, $n lines checked\n";
exit($e || $w ? 1 : 0);
"""
# Warns on each "/** NAME" line of each file it is given, naming NAME.
STAND_IN_KERNEL_DOC = r"""#!/usr/bin/perl
print STDERR "kernel-doc argv: @ARGV\n";
for my $file (@ARGV) {
    next if $file eq '-none';
    open(my $fh, '<', $file) or die "cannot open $file";
    my $n = 0;
    while (my $line = <$fh>) { $n++; print STDERR "$file:$n: warning: $1 not described\n" if $line =~ m{/\*\* (\w+)}; }
}
"""
BASE_FILES = {
    "scripts/checkpatch.pl": STAND_IN_CHECKPATCH,
    "scripts/kernel-doc": STAND_IN_KERNEL_DOC,
    "scripts/spelling.txt": "abandonned||abandoned\n",
    ".checkpatch.conf": "--max-line-length=100\n",
    "kernel/a.c": "/** old_one */\nint a;\n",
    "README": "tiny tree\n",
}


@dataclass
class Tree:
    repo: Path
    base: str

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.repo, check=True, capture_output=True, text=True,
                              env={**os.environ, **GIT_ENV})  # fmt: skip
        return done.stdout.strip()

    def commit(self, files: dict[str, str | bytes | None], message: str) -> str:
        """A commit on the current branch setting (None: deleting) `files`."""
        for name, content in files.items():
            path = self.repo / name
            if content is None:
                self.git("rm", "-q", "--", name)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            self.git("add", "--", name)
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def mirror(self) -> Path:
        mirror = self.repo.parent / "mirror.git"
        subprocess.run(["rm", "-rf", str(mirror)], check=True)
        subprocess.run(["git", "clone", "-q", "--mirror", str(self.repo), str(mirror)], check=True)
        return mirror


def make_tree(root: Path, base_files: dict[str, str | bytes | None] | None = None) -> Tree:
    repo = root / "tree"
    repo.mkdir(parents=True)
    tree = Tree(repo, "")
    tree.git("init", "-q", "-b", "main")
    tree.base = tree.commit(dict(base_files if base_files is not None else BASE_FILES), "base")
    return tree


def run(tree: Tree, root: Path, head: str, *, max_log_bytes: int = 1 << 20, **spec: object) -> StaticOutcome:
    return run_static(StaticSpec(base_sha=tree.base, head_sha=head, **spec),  # type: ignore[arg-type]
                      mirror=tree.mirror(), job_dir=root / "job", uids=TEST_UIDS,
                      store=ArtifactStore(root / "artifacts"), max_log_bytes=max_log_bytes)  # fmt: skip


def read_log(root: Path, outcome: StaticOutcome) -> str:
    return ArtifactStore(root / "artifacts").get_bytes(outcome.log_digest).decode(errors="replace")


def check_run(root: Path, files: dict[str, str | bytes | None], message: str, **spec: object) -> StaticOutcome:
    """The static stage on one commit changing `files` on the tiny tree."""
    tree = make_tree(root)
    return run(tree, root, tree.commit(files, message), **spec)  # type: ignore[arg-type]


def case_named(outcome: StaticOutcome, path: str) -> TestCase:
    return next(case for case in outcome.tests if case.path == path)
