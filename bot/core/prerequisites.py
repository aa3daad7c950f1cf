"""Which recorded patches a series' b4 prerequisite trailers name, in the order to apply them, or what is missing.

b4 names what a series sits on in two ways, and lists both for one prerequisite series:
`prerequisite-change-id: ID:vN` (that version of another series) and one `prerequisite-patch-id:` per
patch of it (`git patch-id --stable`, bot/core/patch_id.py). Both are looked up among the series the
caller recorded from the same Patchwork project, never anywhere else.

Nothing is guessed, since a wrong prerequisite reports on code nobody sent:
- a change-id resolves to the complete series of that id and version; when patch-ids are named too,
  only to one whose every patch is among them (the ids pin which one the sender meant);
- a patch-id already covered by a resolved change-id is a confirmation, else it resolves to a recorded
  patch of that id;
- a stable patch-id is blind to whitespace, so recorded candidates whose diffs differ verbatim are
  ambiguous: missing, never picked from;
- a recorded mail that holds more than one patch, or a hunk above its diff (git am applies them all,
  patch-id reads neither), has no patch-id here.
A prerequisite's own prerequisites are not followed: b4 lists the whole chain in the dependent series.
The caller weighs who sent what is applied (`used`): a prerequisite is code its sender wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.core.patch_id import stable_patch_ids
from bot.core.series import Series, Trailers

MAX_NAMED = 5  # missing prerequisites named in full; the rest are counted
_DIFF_LINE = re.compile(r"^diff ", re.MULTILINE)
# What git apply would read as (part of) a patch above a mail's first "diff " line.
_PATCH_LINE = re.compile(r"^(?:--- |\+\+\+ |@@ |Index: |GIT binary patch)", re.MULTILINE)


@dataclass(frozen=True)
class Recorded:
    """A series recorded from the same project, read: what a prerequisite may resolve to."""

    label: str  # how reports name it, e.g. "series 12 v3"
    series: Series
    patches: tuple[tuple[str, bytes], ...]  # git am's input, one per series.patches entry, in order


@dataclass(frozen=True)
class Prerequisites:
    patches: tuple[tuple[str, bytes], ...] = ()  # to apply before the series' own, in order
    used: tuple[int, ...] = ()  # indexes of the candidates some of whose patches are applied
    applied: tuple[str, ...] = ()  # one line per resolved trailer, for the report
    missing: tuple[str, ...] = ()  # one line per trailer that did not resolve

    def missing_text(self) -> str:
        """The missing ones, the first few named: `change-id X:v3, patch-id 3f1e… and 2 more`."""
        shown = ", ".join(self.missing[:MAX_NAMED])
        more = len(self.missing) - MAX_NAMED
        return f"{shown} and {more} more" if more > 0 else shown


def resolve_prerequisites(trailers: Trailers, candidates: Sequence[Recorded]) -> Prerequisites:
    """The prerequisites `trailers` name among `candidates` (newest first: the first of equal ones is taken)."""
    resolver = _Resolver(candidates, set(trailers.prerequisite_patch_ids))
    for named in trailers.prerequisite_change_ids:
        resolver.change_id(named)
    for patch_id in trailers.prerequisite_patch_ids:
        resolver.patch_id(patch_id)
    if resolver.missing:
        return Prerequisites(missing=tuple(resolver.missing))
    patches = tuple((f"prerequisite {candidates[c].label} {candidates[c].patches[p][0]}", candidates[c].patches[p][1])
                    for c, p in resolver.taken)  # fmt: skip
    return Prerequisites(patches, tuple(sorted({c for c, _ in resolver.taken})), tuple(resolver.applied))


class _Resolver:
    def __init__(self, candidates: Sequence[Recorded], pinned: set[str]) -> None:
        self.candidates, self.pinned = candidates, pinned
        self.stable = [[_only_patch_id(m.mail.body) for m in c.series.patches] for c in candidates]
        self.exact = [[_only_patch_id(m.mail.body, verbatim=True) for m in c.series.patches] for c in candidates]
        self.taken: list[tuple[int, int]] = []  # (candidate, patch) in the order to apply
        self.applied: list[str] = []
        self.missing: list[str] = []

    def take(self, candidate: int, patch: int) -> None:
        exact = self.exact[candidate][patch]
        if exact is None or exact not in {self.exact[c][p] for c, p in self.taken}:
            self.taken.append((candidate, patch))

    def change_id(self, named: str) -> None:
        """`ID:vN` (or `ID`: the newest version recorded): a whole complete series, its patches in order."""
        change_id, _, version = named.partition(":v")
        found = [i for i, c in enumerate(self.candidates)
                 if c.series.is_complete and c.series.trailers.change_id == change_id]  # fmt: skip
        wanted = int(version) if version else max((self.candidates[i].series.version for i in found), default=0)
        found = [i for i in found if self.candidates[i].series.version == wanted]
        if self.pinned:  # the patch-ids say which of them the sender meant
            found_pinned = [i for i in found if all(patch_id in self.pinned for patch_id in self.stable[i])]
            if found and not found_pinned:
                self.missing.append(f"change-id {named} (no recorded one has the patches the patch-ids name)")
                return
            found = found_pinned
        if not found:
            self.missing.append(f"change-id {named}")
        elif len({tuple(self.exact[i]) for i in found}) > 1:
            self.missing.append(f"change-id {named} ({len(found)} recorded series differ: ambiguous)")
        else:
            for patch in range(len(self.candidates[found[0]].patches)):
                self.take(found[0], patch)
            self.applied.append(f"change-id {named} ({self.candidates[found[0]].label})")

    def patch_id(self, patch_id: str) -> None:
        """One patch of that stable id, unless a resolved change-id brought it already (b4 names both)."""
        if any(self.stable[c][p] == patch_id for c, p in self.taken):
            return
        found = [(c, p) for c, ids in enumerate(self.stable) for p, s in enumerate(ids) if s == patch_id]
        if len({self.exact[c][p] for c, p in found}) > 1:
            self.missing.append(f"patch-id {patch_id} ({len(found)} recorded patches differ: ambiguous)")
        elif not found:
            self.missing.append(f"patch-id {patch_id}")
        else:
            candidate, patch = found[0]
            self.take(candidate, patch)
            label, total = self.candidates[candidate].label, len(self.candidates[candidate].patches)
            self.applied.append(f"patch-id {patch_id[:12]} ({label} patch {patch + 1}/{total})")


def _only_patch_id(body: str, *, verbatim: bool = False) -> str | None:
    """The patch id of a mail that holds one patch; None for none, or for several: git am applies every
    diff in the mail, so a mail whose first patch has the id named may carry another (behind a `commit`
    line) that the id does not name. Such a mail is no patch of that id, nor a twin of one."""
    first_diff = _DIFF_LINE.search(body)
    if first_diff is None or _PATCH_LINE.search(body, 0, first_diff.start()):
        return None  # a hunk above the first "diff " line is applied too, and no patch-id reads it
    ids = stable_patch_ids(body.encode("utf-8", "surrogateescape"), verbatim=verbatim)
    return ids[0] if len(ids) == 1 else None
