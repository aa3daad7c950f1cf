"""The lab as the planner sees it: device classes indexed by k=v tag, matched to a test's requirements.

Matching follows compass-ci's scheme: every k=v tag has a posting set (the classes carrying it), and
a test's classes are the intersection of its tags' sets, smallest first, then a memory filter. It
lives in bot/core and not in lab/ (where DESIGN.md first put `lab/inventory.py`): the control plane
matches at plan time, and neither bot/core nor the rest of bot may import `lab`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from bot.core.caps import TestCaps


@dataclass(frozen=True)
class ClassEntry:
    """One device class: what matching reads (tags, memory), where it lives, and what it allows."""

    name: str
    tags: Mapping[str, str]
    memory_mb: int
    capacity: int = 1
    lab: str = "qemu"  # "qemu" (a local QEMU) or "labgrid" (real boards behind a coordinator)
    network: bool = False  # its targets may be given a network, where the tree grants it
    caps: TestCaps = field(default_factory=TestCaps)


@dataclass(frozen=True)
class Requirements:
    """What a test asks of a device class: every k=v tag, and at least this much memory (None: any)."""

    tags: Mapping[str, str]
    memory_mb: int | None = None

    def describe(self) -> str:
        """`arch=arm64 platform=qemu with memory_mb >= 4096`, tags sorted, for reports and errors."""
        text = " ".join(f"{key}={value}" for key, value in sorted(self.tags.items()))
        if self.memory_mb is not None:
            text += f" with memory_mb >= {self.memory_mb}"
        return text


class Inventory:
    """Device classes with an inverted index per k=v tag.

    When several classes match, the pick is deterministic: fewest tags beyond those asked (the
    plainest class that fits, so a test asking only `arch=x86_64` does not take a board with extra
    features), then the least memory (the big machines stay free for tests that need them), then the
    name. The scheduler may later spread load across the whole list; `match` gives it in this order.
    """

    def __init__(self, entries: Iterable[ClassEntry]) -> None:
        self._entries: dict[str, ClassEntry] = {}
        postings: dict[tuple[str, str], set[str]] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise ValueError(f"device class {entry.name!r} is listed twice")
            self._entries[entry.name] = entry
            for tag in entry.tags.items():
                postings.setdefault(tag, set()).add(entry.name)
        self._index = {tag: frozenset(names) for tag, names in postings.items()}

    def __iter__(self) -> Iterator[ClassEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> ClassEntry:
        return self._entries[name]

    def carrying(self, tags: Mapping[str, str]) -> frozenset[str]:
        """Names of the classes carrying every k=v tag: the posting sets intersected, smallest first
        (a rare tag empties the candidates at once)."""
        if not tags:
            return frozenset(self._entries)
        sets = sorted((self._index.get(tag, frozenset()) for tag in tags.items()), key=len)
        names = set(sets[0])
        for posting in sets[1:]:
            if not names:
                break
            names &= posting
        return frozenset(names)

    def match(self, wanted: Requirements) -> list[str]:
        """Names of the classes meeting the requirements, best first (see the class docstring)."""
        fits = [self._entries[name] for name in self.carrying(wanted.tags)]
        if wanted.memory_mb is not None:
            fits = [entry for entry in fits if entry.memory_mb >= wanted.memory_mb]
        fits.sort(key=lambda entry: (len(entry.tags) - len(wanted.tags), entry.memory_mb, entry.name))
        return [entry.name for entry in fits]

    def why_none(self, wanted: Requirements) -> str:
        """Why no class meets the requirements, for the plan's author: missing tags, or too little memory."""
        why = f"no device class carries {wanted.describe()}"
        carrying = self.carrying(wanted.tags)
        if carrying and wanted.memory_mb is not None:
            most = max(self._entries[name].memory_mb for name in carrying)
            why += f" (those carrying the tags have at most {most} MB)"
        return why
