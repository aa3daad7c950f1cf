"""The static stage on Linux 6.1 (issue 11 point 9: checkpatch on a one-line patch), with the real
checkpatch.pl and kernel-doc of the base, in the sandbox. The tree is /work/linux-tree's objects
(shared, never written) or Debian's linux-source tarball made into a tree as tests/test_linux_slow.py does."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.linux_tree import shared_linux_tree
from tests.workers.static_tree import TEST_UIDS, case_named
from workers.artifacts import ArtifactStore
from workers.spec import StaticSpec
from workers.static import StaticOutcome, run_static

pytestmark = [pytest.mark.slow, pytest.mark.needs("root", "the static tools run as a slot's uid")]

SHARED_TREE = Path(os.environ.get("LABGATE_LINUX_TREE", "/work/linux-tree"))  # a prepared tree, read only
PRINTK = "kernel/printk/printk.c"
GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.org", "GIT_COMMITTER_NAME": "Dev",
           "GIT_COMMITTER_EMAIL": "dev@example.org"}  # fmt: skip
STATIC_TARGET_S = 10.0  # "a few seconds": the static stage answers long before any build


class Mirror:
    """A bare mirror sharing a Linux tree's objects; commits are made with plumbing (no worktree)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = self.git("rev-parse", "HEAD")

    def git(self, *args: str, input_bytes: bytes | None = None, index: Path | None = None) -> str:
        env = {**os.environ, **GIT_ENV, **({"GIT_INDEX_FILE": str(index)} if index else {})}
        done = subprocess.run(["git", f"--git-dir={self.path}", *args], input=input_bytes, capture_output=True,
                              check=True, env=env)  # fmt: skip
        return done.stdout.decode().strip()

    def commit(self, parent: str, files: dict[str, bytes], message: str) -> str:
        index = self.path / f"index-{time.monotonic_ns()}"
        self.git("read-tree", parent, index=index)
        for name, data in files.items():
            blob = self.git("hash-object", "-w", "--stdin", input_bytes=data)
            mode = self.git("ls-tree", parent, "--", name).split(" ")[0] or "100644"
            self.git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{name}", index=index)
        tree = self.git("write-tree", index=index)
        index.unlink()
        return self.git("commit-tree", tree, "-p", parent, "-m", message)

    def show(self, sha: str, name: str) -> bytes:
        return subprocess.run(["git", f"--git-dir={self.path}", "show", f"{sha}:{name}"], capture_output=True,
                              check=True).stdout  # fmt: skip


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    root = tmp_path_factory.mktemp("linux-static")
    shared = (SHARED_TREE / "scripts" / "checkpatch.pl").exists()
    source = SHARED_TREE if shared else shared_linux_tree(tmp_path_factory)
    subprocess.run(["git", "clone", "-q", "--bare", "--shared", str(source), str(root / "mirror.git")], check=True)
    yield Mirror(root / "mirror.git")


def _run(mirror: Mirror, root: Path, head: str, **spec: object) -> tuple[StaticOutcome, float]:
    started = time.monotonic()
    outcome = run_static(StaticSpec(base_sha=mirror.base, head_sha=head, **spec),  # type: ignore[arg-type]
                         mirror=mirror.path, job_dir=root / "job", uids=TEST_UIDS, store=ArtifactStore(root / "store"),
                         max_log_bytes=1 << 20)  # fmt: skip
    return outcome, time.monotonic() - started


def _with_line(mirror: Mirror, after: bytes, line: bytes) -> bytes:
    source = mirror.show(mirror.base, PRINTK)
    at = source.index(after) + len(after)
    return source[:at] + line + source[at:]


def test_a_one_line_patch_is_checked_by_the_bases_checkpatch_in_seconds(mirror: Mirror, tmp_path: Path) -> None:
    printk = _with_line(mirror, b'#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt\n', b"        int  x = 1;  \n")
    head = mirror.commit(mirror.base, {PRINTK: printk}, "printk: add x\n\nSigned-off-by: Dev <dev@example.org>\n")
    outcome, elapsed = _run(mirror, tmp_path, head)
    print(
        f"static stage on a one-line Linux 6.1 patch: {elapsed:.2f} s (export {outcome.export_s:.2f} s, "
        f"tools {outcome.command_s:.2f} s)"
    )
    checkpatch = case_named(outcome, "static/checkpatch/1-printk-add-x")
    assert (checkpatch.status, checkpatch.reason) == ("fail", "2 error(s), 2 warning(s)"), checkpatch
    found = {(a["source"], a["file"], a["line"], a["check"]) for a in outcome.annotations}
    assert {("checkpatch", PRINTK, 21, "CODE_INDENT"), ("checkpatch", PRINTK, 21, "TRAILING_WHITESPACE"),
            ("checkpatch", PRINTK, 21, "LEADING_SPACE"), ("diff-check", PRINTK, 21, "")} <= found  # fmt: skip
    assert case_named(outcome, "static/diff-check").status == "fail"
    assert case_named(outcome, "static/kernel-doc").status == "pass"
    assert outcome.result == "fail"
    assert elapsed < STATIC_TARGET_S


def test_a_change_silencing_checkpatch_and_kernel_doc_is_checked_by_the_bases(mirror: Mirror, tmp_path: Path) -> None:
    silent = b"#!/usr/bin/env perl\nexit 0;\n"
    first = mirror.commit(mirror.base, {"scripts/checkpatch.pl": silent, "scripts/kernel-doc": silent},
                          "scripts: simplify\n\nNo sign-off: checkpatch reports it at the mail's end.\n")  # fmt: skip
    documented = (b"/**\n * labgate_probe() - a probe\n * @a: the first\n */\nint labgate_probe(int a, int b)\n"
                  b"{\n\treturn a + b;\n}\n")  # fmt: skip
    source = mirror.show(mirror.base, PRINTK) + b"\n" + documented
    second = mirror.commit(first, {PRINTK: source}, "printk: probe\n\nSigned-off-by: Dev <dev@example.org>\n")
    outcome, _ = _run(mirror, tmp_path, second, checkpatch="strict")
    docs = [a for a in outcome.annotations if a["source"] == "kernel-doc"]
    assert [(a["file"], a["text"]) for a in docs] == [
        (PRINTK, "Function parameter or member 'b' not described in 'labgate_probe'")
    ]
    probe = case_named(outcome, "static/checkpatch/2-printk-probe")
    # The base's checkpatch: the missing declaration in a header is a real checkpatch finding.
    assert any(a["commit"] == second and a["source"] == "checkpatch" for a in outcome.annotations), probe
    assert case_named(outcome, "static/kernel-doc").reason == "1 warning(s)"
    signoff = [(a["file"], a["line"]) for a in outcome.annotations if a["check"] == "MISSING_SIGN_OFF"]
    assert signoff == [("", 0)]  # about the commit, not the last line of its last file
    assert case_named(outcome, "static/checkpatch/1-scripts-simplify").status == "fail"
