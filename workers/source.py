"""A build's source tree: the tested commit's files, exported from the mirror into a fresh directory.

The export holds no `.git`: the build runs the change's code, and a `.git` it could rewrite
(a config with core.fsmonitor, hooks) would be run by the next git command in that
directory, which would be root's. Git here only writes into a directory that nothing has
touched yet, with its index kept outside it, and never runs in the tree again afterwards:
the worker deletes it with plain file operations.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from workers.errors import InfraError, UserError


def export_tree(mirror: Path, sha: str, dest: Path, index_file: Path) -> None:
    """Write the files of commit sha into the empty directory dest."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InfraError(f"{dest} is not empty; a source export needs a fresh directory")
    env = {**os.environ, "GIT_INDEX_FILE": str(index_file), "GIT_TERMINAL_PROMPT": "0"}
    git = ["git", f"--git-dir={mirror}", "-c", "core.hooksPath=/dev/null", "-c", "checkout.workers=0"]
    for argv in ([*git, "read-tree", sha], [*git, f"--work-tree={dest}", "checkout-index", "--all", "--force"]):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            # The mirror and the commit are known good (the checkout made them): what fails here is
            # the tree's own content (a name too long, more than the disk cap), so it is the change's.
            raise UserError(f"the tested tree {sha[:12]} cannot be written out for the build: "
                            f"{done.stderr.strip()[-600:]}")  # fmt: skip
    index_file.unlink(missing_ok=True)


def give_to(uid: int | None, *paths: Path) -> None:
    """Hand the job's directories to the sandbox's uid (root keeps nothing it must trust in them).
    Nothing of the job runs yet, so walking without following links is enough."""
    if uid is None:
        return
    try:
        for path in paths:
            os.lchown(path, uid, uid)
            for top, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    os.lchown(os.path.join(top, name), uid, uid)
    except OSError as exc:
        raise InfraError(f"handing {exc.filename} to uid {uid} failed: {exc.strerror}") from exc
