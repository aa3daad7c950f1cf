"""Benchmark: a cold kernel build against a warm incremental build after a one-file patch, same tree,
same run, through the build worker's real path (workers/build.run_build with BuildSpec.kernel: the
warm source, the warm build dir, the shared ccache, the compiler ledger, the sandbox).

Linux 6.1 tinyconfig + the example plan's boot fragment, x86_64, gcc, the script as the plan renders it
(the config steps run again on every build). Builds, in order:

- cold: the base commit, trusted, in a fresh work dir (source exported whole, empty build dir, empty ccache);
- warm: a one-line code change to kernel/printk/printk.c, trusted (the warm build dir);
- noop: the same commit again (what the config steps alone cost on a warm dir);
- copy: a comment-only edit of printk.c (no line moved), untrusted: a throwaway copy of the warm build
  dir, the shared ccache read-only; its binary digest must equal the cold build's.

    .venv/bin/python bench/rebuild.py [--tree /work/linux-tree] [--work DIR]

Needs root (the build slots' uids). Last line: {"bench": "rebuild", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.core.plans import parse_plan, render_build_script  # noqa: E402
from workers.artifacts import ArtifactStore  # noqa: E402
from workers.build import BuildOutcome, run_build  # noqa: E402
from workers.slots import BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS, UidRange  # noqa: E402
from workers.spec import BuildLimits, BuildSpec, KernelBuild  # noqa: E402

TARGETS = {"warm_over_cold": 0.05}
PRINTK = "kernel/printk/printk.c"
COMMENT_LINE = " *  Copyright (C) 1991, 1992  Linus Torvalds\n"
WARM_KEY = "5ebc0de5ebc0de5ebc0de5ebc0de5ebc"
# The example plan's tinyconfig recipe, as the control side renders it (CC on every make, the config steps
# skipped when the worker keeps the warm .config).
SCRIPT = render_build_script(parse_plan((REPO / "examples" / "linux" / "plan.yaml").read_text()).builds[0])


def git(mirror: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(["git", f"--git-dir={mirror}", *args], input=stdin, capture_output=True, check=True,
                          env={**os.environ, **(env or {})})  # fmt: skip
    return done.stdout.decode().strip()


def commit_edit(mirror: Path, parent: str, path: str, edit: str, message: str, scratch: Path) -> str:
    """A commit on parent whose only change is `path` rewritten by `edit` ("code" or "comment"), made with
    plumbing in the bare mirror (no worktree of 78,000 files)."""
    text = git(mirror, "cat-file", "blob", f"{parent}:{path}") + "\n"
    if edit == "comment":  # in place, no line moved: only the comment's text differs
        assert COMMENT_LINE in text
        text = text.replace(COMMENT_LINE, COMMENT_LINE.replace("Torvalds", "Torvalds (labgate)"), 1)
    else:
        text += "\nint labgate_rebuild_marker = 1;\n"
    blob = git(mirror, "hash-object", "-w", "--stdin", stdin=text.encode())
    env = {"GIT_INDEX_FILE": str(scratch / "index"), "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.org"}  # fmt: skip
    git(mirror, "read-tree", parent, env=env)
    git(mirror, "update-index", "--cacheinfo", f"100644,{blob},{path}", env=env)
    tree = git(mirror, "write-tree", env=env)
    os.unlink(scratch / "index")
    return git(mirror, "commit-tree", tree, "-p", parent, "-m", message, env=env)


def build(work: Path, mirror: Path, sha: str, trusted: bool, name: str) -> tuple[BuildOutcome, float]:
    spec = BuildSpec(name="tinyconfig", head_sha=sha, script=SCRIPT, artifacts=("arch/x86/boot/bzImage",),
                     timeout_s=1800, kernel=KernelBuild(arch="x86_64", warm_key=WARM_KEY), trusted=trusted,
                     limits=BuildLimits(disk_bytes=4 << 30))  # fmt: skip
    started = time.monotonic()
    outcome = run_build(spec, mirror=mirror, job_dir=work / "work" / f"job-{name}",
                        uids=UidRange.from_env(BUILD_UIDS_ENV, DEFAULT_BUILD_UIDS), store=ArtifactStore(work / "store"),
                        max_log_bytes=16 << 20, tree_name="linux", warm_dir=work / "warm")  # fmt: skip
    took = time.monotonic() - started
    if outcome.result != "pass" or outcome.kernel is None:
        log = ArtifactStore(work / "store").get_bytes(outcome.log_digest).decode(errors="replace")
        raise SystemExit(f"{name} build: {outcome.result} {outcome.message}\n{log[-4000:]}")
    warm = outcome.kernel["warm"]
    assert isinstance(warm, dict)
    recompiled = outcome.kernel["recompiled"]
    assert isinstance(recompiled, list)
    print(f"{name}: {took:.1f} s ({warm['mode']}, prepare {warm['prepare_s']} s, make {warm['make_s']} s, "
          f"collect {warm['collect_s']} s), {len(recompiled)} recompiled: {recompiled[:5]}", flush=True)  # fmt: skip
    return outcome, took


def bench(tree: Path, work: Path) -> dict[str, object]:
    mirror = work / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--bare", "--shared", str(tree), str(mirror)], check=True)
    base = git(mirror, "rev-parse", "HEAD")
    code = commit_edit(mirror, base, PRINTK, "code", "printk: a one-line change", work)
    comment = commit_edit(mirror, base, PRINTK, "comment", "printk: a comment-only change", work)
    cold, cold_s = build(work, mirror, base, True, "cold")
    warm, warm_s = build(work, mirror, code, True, "warm")
    noop, noop_s = build(work, mirror, code, True, "noop")
    copy, copy_s = build(work, mirror, comment, False, "copy")
    assert cold.kernel and warm.kernel and noop.kernel and copy.kernel
    warm_info, copy_info = warm.kernel["warm"], copy.kernel["warm"]
    assert isinstance(warm_info, dict) and isinstance(copy_info, dict)
    return {
        "cold_s": round(cold_s, 2),
        "warm_s": round(warm_s, 2),
        "warm_over_cold": round(warm_s / cold_s, 4),
        "warm_make_s": warm_info["make_s"],
        "warm_prepare_s": warm_info["prepare_s"],
        "warm_collect_s": warm_info["collect_s"],
        "warm_recompiled": warm.kernel["recompiled"],
        "noop_s": round(noop_s, 2),
        "noop_recompiled": noop.kernel["recompiled"],
        "copy_s": round(copy_s, 2),
        "copy_prepare_s": copy_info["prepare_s"],
        "copy_recompiled": copy.kernel["recompiled"],
        "comment_only_digest_equal": copy.kernel["binary_digest"] == cold.kernel["binary_digest"],
        "cold_units": len(cold.kernel["recompiled"]),
        "held_bytes": warm_info["held_bytes"],
        "cold_warnings": len(cold.kernel["warnings"]),
        "warm_warnings": len(warm.kernel["warnings"]),
        "load_average": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=Path("/work/linux-tree"), help="a Linux git tree (read only)")
    parser.add_argument("--work", type=Path, help="a scratch directory (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="labgate-rebuild-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = bench(args.tree.resolve(), work)
    print(json.dumps({"bench": "rebuild", "figures": figures, "targets": TARGETS}), flush=True)


if __name__ == "__main__":
    main()
