"""Safety checks on a patch before `git am` touches a worktree (KernelCI's rules)."""

from __future__ import annotations

import re

from workers.errors import UserError

MAX_PATCH_BYTES = 8 * 1024 * 1024
_DIFF_HEADER = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_SYMLINK_MODE = re.compile(r"^(new file|old|new|deleted file) mode 120000$")


def check_patch(name: str, data: bytes) -> None:
    """Raise UserError naming the patch and the first rule it breaks."""
    if len(data) > MAX_PATCH_BYTES:
        raise UserError(f"{name}: {len(data)} bytes is over the {MAX_PATCH_BYTES} byte cap")
    text = data.decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        header = _DIFF_HEADER.match(line)
        if header:
            for path in header.groups():
                _check_path(name, number, path)
        elif line.startswith("GIT binary patch") or (
            line.startswith("Binary files ") and line.endswith(" differ")
        ):
            raise UserError(f"{name}:{number}: binary patches are not accepted")
        elif _SYMLINK_MODE.match(line):
            raise UserError(f"{name}:{number}: patches that create or change symlinks are not accepted")


def _check_path(name: str, number: int, path: str) -> None:
    parts = path.split("/")
    if path.startswith("/") or ".." in parts:
        raise UserError(f"{name}:{number}: path {path!r} leaves the tree")
    if ".git" in parts:
        raise UserError(f"{name}:{number}: path {path!r} touches git metadata")
