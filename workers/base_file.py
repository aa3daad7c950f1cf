"""One file of a tree read at a base commit, for the control side (a series' MAINTAINERS).

The control plane runs no git and holds no mirror; the checkout worker does both. It reads the file
at the base only, never at a change's head: a series that adds its sender to MAINTAINERS must not
make them a maintainer of it. A base the series names by a commit (its `base-commit:`) stands for the
tree branch it is on, read at that branch's tip: the sender picks the commit, and an old one would
bring back an old MAINTAINERS (one that still listed a maintainer removed since). The answer is
capped in size and must be a plain file (a symlink's target text or a submodule is not the file the
tree's MAINTAINERS means).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.artifacts import ArtifactStore
from workers.checkout import GIT_IDENTITY, check_base_on_branches, git, locked, mirror_path, resolve, update_mirror
from workers.errors import InfraError, UserError
from workers.spec import BaseFileAnswer, BaseFileRequest

PLAIN_FILE_MODES = ("100644", "100755")


@dataclass(frozen=True)
class BaseFile:
    base_sha: str | None
    data: bytes | None  # None: see `problem`
    problem: str | None = None


def read_base_file(mirror: Path, url: str, *, base_ref: str, path: str, max_bytes: int,
                   base_branches: Sequence[str] = ()) -> BaseFile:  # fmt: skip
    """`path` at `base_ref`; a base named by a commit must be on one of `base_branches`, and the file is
    read at the tip of the first of them it is on."""
    with locked(mirror):
        update_mirror(mirror, url)
        try:
            base_sha = resolve(mirror, base_ref, "base")
            if base_branches:
                # The branch as it is now, not the commit the sender named: a base from before a
                # maintainer was removed must not make them one again.
                branch = check_base_on_branches(mirror, base_ref, base_sha, base_branches)
                base_sha = resolve(mirror, f"refs/heads/{branch}", "base")
        except UserError as error:
            return BaseFile(None, None, str(error))
        listed = git(["ls-tree", "-z", "--full-tree", base_sha, "--", path], mirror).stdout
        entry = listed.split("\0")[0]
        if not entry:
            return BaseFile(base_sha, None, f"{path} is not in the tree at {base_sha[:12]}")
        mode, kind, _ = entry.split(" ", 2)
        if kind != "blob" or mode not in PLAIN_FILE_MODES:
            return BaseFile(base_sha, None, f"{path} at {base_sha[:12]} is not a plain file (mode {mode})")
        size = int(git(["cat-file", "-s", f"{base_sha}:{path}"], mirror).stdout.strip())
        if size > max_bytes:
            return BaseFile(base_sha, None, f"{path} at {base_sha[:12]} is {size} bytes, over the cap of {max_bytes}")
        shown = git_bytes(["cat-file", "blob", f"{base_sha}:{path}"], mirror)
    return BaseFile(base_sha, shown)


def git_bytes(args: Sequence[str], cwd: Path) -> bytes:
    """git's stdout as bytes: the file's own bytes, whatever their encoding (git() reads text)."""
    process = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False,
                             env={**os.environ, **GIT_IDENTITY})  # fmt: skip
    if process.returncode != 0:
        raise InfraError(f"git {' '.join(args)} failed: {process.stderr.decode('utf-8', 'replace').strip()[:500]}")
    return process.stdout


def answer_request(request: BaseFileRequest, work_dir: Path, store: ArtifactStore) -> BaseFileAnswer:
    """What the checkout worker sends back: the file in the artifact store, or why there is none.
    An InfraError (git failing on our side) is raised for the task to retry."""
    try:
        found = read_base_file(mirror_path(work_dir, request.tree_name), request.tree_url, base_ref=request.base_ref,
                               path=request.path, max_bytes=request.max_bytes,
                               base_branches=request.base_branches)  # fmt: skip
    except UserError as error:  # the tree cannot be cloned
        found = BaseFile(None, None, str(error))
    digest = store.put_bytes(found.data) if found.data is not None else None
    return BaseFileAnswer(request_id=request.request_id, token=request.token, base_sha=found.base_sha,
                          digest=digest, problem=found.problem)  # fmt: skip
