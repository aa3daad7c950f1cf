"""The paths a patch's diff touches, read from its `diff --git` and `---`/`+++` lines (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_PATHS = 10_000  # a series touching more is read no further: claims rest on the first ones
_GIT_HEADER = re.compile(r"^diff --git (\"?)a/(.+?)\1 (\"?)b/(.+?)\3$")
_SIDE = re.compile(r"^(?:---|\+\+\+) (\"?)[ab]/(.+?)\1(?:\t.*)?$")


def touched_paths(diffs: Iterable[str]) -> frozenset[str]:
    """Old and new paths of every file in the diffs (a rename touches both): repository-relative, as
    MAINTAINERS' F: patterns are matched against. C-quoted names are taken as written between the quotes."""
    found: set[str] = set()
    for text in diffs:
        for line in text.split("\n"):
            if len(found) >= MAX_PATHS:
                return frozenset(found)
            header = _GIT_HEADER.match(line)
            if header:
                found.update((header[2], header[4]))
                continue
            side = _SIDE.match(line)
            if side:
                found.add(side[2])
    return frozenset(path for path in found if path and not path.startswith("/") and path != "dev/null")
