"""Patch mail subjects: `[PATCH net-next v2 3/7] foo: bar` -> tags, version, position, normalised title.

Subjects are written by anyone who can send mail, so this reads them in one left-to-right pass with
no backtracking regex, caps what it keeps, and never raises: what it cannot read it says in
`problems` and leaves at its default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_SUBJECT = 1000  # characters kept; RFC 5322 lines are 998 at most, and b4 folds long subjects
MAX_VERSION = 999
MAX_PATCHES = 999  # b4 and git format-patch number to 3 digits in practice; Patchwork's own cap is similar
UNREADABLE_VERSION = 0  # below every real version: a series whose "vN" cannot be read supersedes nothing
_REPLY_PREFIXES = ("re:", "fwd:", "fw:", "aw:", "sv:")  # aw/sv: German and Nordic clients' "Re:"
_WORD_SPLIT = re.compile(r"[\s,]+")  # Patchwork splits the words of a bracket on commas and whitespace
_VERSION = re.compile(r"v([0-9]+)", re.IGNORECASE)
_POSITION = re.compile(r"([0-9]+)/([0-9]+)")
_JOINED_VERSION = re.compile(r"(patch|rfc|resend)v([0-9]+)", re.IGNORECASE)  # "PATCHv2", as older tools wrote


@dataclass(frozen=True)
class SubjectTags:
    """What a subject says about its mail's place in a series."""

    title: str  # after the prefixes, whitespace collapsed, case kept
    normalised: str  # the title lowercased: what versions of one series share
    tags: tuple[str, ...] = ()  # bracket words that are not PATCH, vN or n/m: "net-next", "RFC", "RESEND"
    is_patch: bool = False  # a bracket said PATCH
    version: int = 1
    index: int | None = None
    total: int | None = None
    is_reply: bool = False  # Re:/Fwd: before the brackets: a reply about a patch, not the patch
    problems: tuple[str, ...] = ()

    @property
    def is_cover(self) -> bool:
        return self.index == 0

    def has_tag(self, tag: str) -> bool:
        return tag.casefold() in (own.casefold() for own in self.tags)


def parse_subject(subject: str) -> SubjectTags:
    """Read one subject; never raises, whatever the text."""
    problems: list[str] = []
    if len(subject) > MAX_SUBJECT:
        problems.append(f"subject is {len(subject)} characters; only the first {MAX_SUBJECT} are read")
        subject = subject[:MAX_SUBJECT]
    text = "".join(char if char.isprintable() else " " for char in subject)  # controls, zero-widths, newlines
    state = _Reading(problems)
    rest = state.prefixes(text)
    title = " ".join(rest.split())
    return SubjectTags(
        title=title,
        normalised=title.casefold(),
        tags=tuple(state.tags),
        is_patch=state.is_patch,
        version=state.version,
        index=state.index,
        total=state.total,
        is_reply=state.is_reply,
        problems=tuple(problems),
    )


class _Reading:
    """The state of one pass over a subject's prefixes."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.tags: list[str] = []
        self.is_patch = False
        self.version = 1
        self.index: int | None = None
        self.total: int | None = None
        self.is_reply = False
        self._versions_seen = 0

    def prefixes(self, text: str) -> str:
        """Consume "Re:", "Fwd:" and "[...]" groups from the left; return what follows them."""
        position = 0
        while True:
            while position < len(text) and text[position].isspace():
                position += 1
            lowered = text[position : position + 4].lower()
            reply = next((prefix for prefix in _REPLY_PREFIXES if lowered.startswith(prefix)), None)
            if reply is not None:
                self.is_reply = True
                position += len(reply)
            elif text.startswith("[", position):
                close = text.find("]", position + 1)
                if close < 0:
                    self.problems.append(f"bracket at character {position + 1} never closes")
                    return text[position + 1 :]
                self.bracket(text[position + 1 : close])
                position = close + 1
            else:
                return text[position:]

    def bracket(self, inside: str) -> None:
        for word in _WORD_SPLIT.split(inside):
            if word:
                self.word(word)

    def word(self, word: str) -> None:
        joined = _JOINED_VERSION.fullmatch(word)
        if joined:
            self.word(joined.group(1))
            self.word(f"v{joined.group(2)}")
            return
        if word.casefold() == "patch":
            self.is_patch = True
        elif version := _VERSION.fullmatch(word):
            self.read_version(word, version.group(1))
        elif position := _POSITION.fullmatch(word):
            self.read_position(word, position.group(1), position.group(2))
        else:
            self.tags.append(word)

    def read_version(self, word: str, digits: str) -> None:
        self._versions_seen += 1
        number = _bounded_int(digits, MAX_VERSION)
        if number is None or number < 1:
            self.problems.append(f"version {word!r} is not between v1 and v{MAX_VERSION}")
            self.version = UNREADABLE_VERSION
        elif self._versions_seen > 1 and number != self.version:
            self.problems.append(f"two versions in one subject ({word!r} after v{self.version})")
            self.version = UNREADABLE_VERSION
        elif self.version != UNREADABLE_VERSION:
            self.version = number

    def read_position(self, word: str, index_digits: str, total_digits: str) -> None:
        index, total = _bounded_int(index_digits, MAX_PATCHES), _bounded_int(total_digits, MAX_PATCHES)
        if self.total is not None:
            self.problems.append(f"two positions in one subject ({word!r} after {self.index}/{self.total})")
            self.index = self.total = None
        elif index is None or total is None or total < 1 or index > total:
            self.problems.append(f"position {word!r} is not n/m with 0 <= n <= m <= {MAX_PATCHES}, m >= 1")
        else:
            self.index, self.total = index, total


def _bounded_int(digits: str, cap: int) -> int | None:
    """int() of a digit string, None above `cap`; the length check first, as int() of 5000 digits raises."""
    digits = digits.lstrip("0") or "0"  # "03/12" as git format-patch pads, and "0003" alike
    if len(digits) > len(str(cap)):
        return None
    number = int(digits)
    return number if number <= cap else None
