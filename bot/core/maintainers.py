"""A tree's MAINTAINERS file: its sections, and who maintains or reviews a set of paths.

The format is the kernel's (the top of linux/MAINTAINERS): a section is a name line followed by
`X:<whitespace>value` lines. F:/X: are globs, as scripts/get_maintainer.pl reads them: a trailing
"/" is the directory and everything below it; otherwise `*` and `?` stay within one path segment
(get_maintainer turns `*` into `.*` but demands as many "/" in the file as in the pattern, which
comes to the same); a plain name that is a directory covers what is below it. X: is tested first
and shuts the section out; N: is a regex searched in the path (Perl's /x).

One deliberate difference: get_maintainer anchors F: only at the start, so `F: foo.c` also takes
`foo.c.orig`; here a pattern matches the whole path (fewer claims, never more). K: (content regexes)
is parsed but not used: a claim of maintainership rests on paths, not on words an author can type.

The file is read at the change's base, and the base may be a fork's branch: so its size is capped,
its patterns are matched in linear time (bot/core/linear_match.py), and a pattern that cannot be
matched safely is left out and named in `problems`, never fatal for the rest of the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bot.core.linear_match import MAX_PATTERN, LinearPattern, PatternError, compile_glob, compile_regex
from workers.errors import UserError

MAX_MAINTAINERS_BYTES = 8 * 1024 * 1024  # the kernel's is 0.7 MiB
MAX_PATH = 4096  # PATH_MAX: a longer path is no file of the tree, and matches nothing
# N: regexes are run on every path (no prefix rules them out), so their number is what a path costs;
# the kernel has 92.
MAX_REGEXES = 2000
_TAG_LINE = re.compile(r"([A-Z]):[ \t]*(.*)")
_GLOB_SPECIAL = frozenset("*?[\\")
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}# \t")
_ADDRESS = re.compile(r"[^\s<>()@,;\"]+@[^\s<>()@,;\"]+")


@dataclass(frozen=True)
class Section:
    """One MAINTAINERS section, its values as written (M:/R: keep the name and the address)."""

    name: str
    line: int
    maintainers: tuple[str, ...] = ()  # M:
    reviewers: tuple[str, ...] = ()  # R:
    lists: tuple[str, ...] = ()  # L:
    status: str | None = None  # S:
    files: tuple[str, ...] = ()  # F:
    excluded: tuple[str, ...] = ()  # X:
    regexes: tuple[str, ...] = ()  # N:
    keywords: tuple[str, ...] = ()  # K:

    @property
    def addresses(self) -> frozenset[str]:
        """The M: and R: addresses, lowercased; an entry without an address ("M: Orphan") gives none."""
        return frozenset(filter(None, (address_of(entry) for entry in (*self.maintainers, *self.reviewers))))


@dataclass(frozen=True)
class _SectionMatcher:
    files: tuple[_PathPattern, ...]
    excluded: tuple[_PathPattern, ...]
    regexes: tuple[LinearPattern | str, ...]  # a str is a literal: a substring test stands in for the regex

    def covers(self, path: str) -> bool:
        if any(pattern.matches(path) for pattern in self.excluded):
            return False
        if any(pattern.matches(path) for pattern in self.files):
            return True
        return any(regex in path if isinstance(regex, str) else regex.search(path) for regex in self.regexes)


@dataclass(frozen=True)
class _PathPattern:
    """An F:/X: value: the literal part before any wildcard is checked first, as most patterns are plain."""

    prefix: str
    glob: str | None  # None: the pattern is all literal, the prefix
    pieces: tuple[str, ...] = ()  # literal runs between wildcards: a match has them all, in this order
    # Compiled on first need: most globs are ruled out by their prefix and pieces, so a file of many
    # costs little more than its reading.
    _compiled: list[LinearPattern] = field(default_factory=list, compare=False, repr=False)

    def matches(self, path: str) -> bool:
        if not path.startswith(self.prefix):
            return False
        if self.glob is None:  # "net/core" names the directory when a path goes on below it
            return path == self.prefix or self.prefix.endswith("/") or path[len(self.prefix)] == "/"
        if not _has_in_order(path, len(self.prefix), self.pieces):
            return False
        if not self._compiled:
            # The directory and everything below: get_maintainer's `^pattern` prefix match, its `.*` crossing "/".
            below = self.glob.endswith("/")
            self._compiled.append(compile_glob(self.glob + "*" if below else self.glob, crossing=below))
        return self._compiled[0].fullmatch(path)


@dataclass(frozen=True)
class Maintainers:
    """A parsed MAINTAINERS file; `problems` says what was left out of it, with the line."""

    sections: tuple[Section, ...]
    problems: tuple[str, ...] = ()
    _matchers: tuple[_SectionMatcher, ...] = field(default=(), compare=False, repr=False)

    def sections_for(self, paths: Iterable[str]) -> tuple[Section, ...]:
        """The sections covering any of the paths (repository-relative, no leading "/" or "a/")."""
        wanted = [path for path in paths if 0 < len(path) <= MAX_PATH]
        return tuple(
            section
            for section, matcher in zip(self.sections, self._matchers, strict=True)
            if any(matcher.covers(path) for path in wanted)
        )

    def files_of_section(self, name: str, paths: Iterable[str]) -> list[str] | None:
        """The paths that the sections named `name` cover (X: first, then F: and N:, as for maintainers);
        None when the file has no section of that name. A plan's `areas` select tests with it."""
        matchers = [matcher for section, matcher in zip(self.sections, self._matchers, strict=True)
                    if section.name == name]  # fmt: skip
        if not matchers:
            return None
        wanted = [path for path in paths if 0 < len(path) <= MAX_PATH]
        return [path for path in wanted if any(matcher.covers(path) for matcher in matchers)]

    def partly_read(self) -> frozenset[str]:
        """Names of the sections an F: or N: line of which was left out (see `problems`): what they cover
        is more than files_of_section can tell."""
        return frozenset(
            section.name
            for section, matcher in zip(self.sections, self._matchers, strict=True)
            if len(matcher.files) < sum(1 for value in section.files if value)
            or len(matcher.regexes) < sum(1 for value in section.regexes if value)
        )

    def maintainers_for(self, paths: Iterable[str]) -> set[str]:
        """The M: and R: addresses (lowercased) of every section covering one of the paths."""
        return {address for section in self.sections_for(paths) for address in section.addresses}

    def maintainers_of_every(self, paths: Iterable[str]) -> set[str]:
        """The M: and R: addresses (lowercased) that a section covering it gives each one of the paths:
        what a claim to maintain a whole change rests on. None for no paths, or for a path too long to
        be matched (it cannot be shown to be anyone's)."""
        common: set[str] | None = None
        for path in paths:
            if not 0 < len(path) <= MAX_PATH:
                return set()
            covering = {address for section, matcher in zip(self.sections, self._matchers, strict=True)
                        if matcher.covers(path) for address in section.addresses}  # fmt: skip
            common = covering if common is None else common & covering
            if not common:
                return set()
        return common or set()


def address_of(entry: str) -> str | None:
    """The address in "Full Name <user@host>" or a bare "user@host", lowercased; None if there is none."""
    if "<" in entry:
        inside = entry[entry.rfind("<") + 1 :].partition(">")[0].strip()
        return inside.lower() if _ADDRESS.fullmatch(inside) else None
    found = _ADDRESS.search(entry)
    return found.group(0).lower() if found else None


def parse_maintainers(text: str, origin: str = "MAINTAINERS") -> Maintainers:
    """Sections of a MAINTAINERS text; raises UserError only when the whole file is over the size cap."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MAINTAINERS_BYTES:
        raise UserError(f"{origin}: {size} bytes is over the {MAX_MAINTAINERS_BYTES} byte cap")
    sections: list[Section] = []
    matchers: list[_SectionMatcher] = []
    problems: list[str] = []
    regexes_read: list[int] = []  # lines of the N: regexes compiled so far, against MAX_REGEXES
    for name, line, entries in _raw_sections(text.split("\n")):
        section, matcher = _section(name, line, entries, origin, problems, regexes_read)
        sections.append(section)
        matchers.append(matcher)
    return Maintainers(tuple(sections), tuple(problems), tuple(matchers))


def _raw_sections(lines: list[str]) -> Iterable[tuple[str, int, list[tuple[int, str, str]]]]:
    """(name, line, [(line, tag, value)]) for each name line followed by tag lines; prose has none, and goes."""
    name: str | None = None
    start = 0
    entries: list[tuple[int, str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        tagged = _TAG_LINE.fullmatch(line)
        if tagged and name is not None:
            entries.append((number, tagged.group(1), tagged.group(2).strip()))
            continue
        if entries and name is not None:
            yield name, start, entries
        entries = []
        # A section name starts at the margin; indented lines and blank ones are prose or separators.
        name, start = (line.strip(), number) if line.strip() and not line[0].isspace() and not tagged else (None, 0)
    if entries and name is not None:
        yield name, start, entries


def _section(
    name: str, line: int, entries: list[tuple[int, str, str]], origin: str, problems: list[str], regexes_read: list[int]
) -> tuple[Section, _SectionMatcher]:
    values: dict[str, list[str]] = {}
    files: list[_PathPattern] = []
    excluded: list[_PathPattern] = []
    regexes: list[LinearPattern | str] = []
    for number, tag, value in entries:
        values.setdefault(tag, []).append(value)
        try:
            if tag in "FX" and value:
                (files if tag == "F" else excluded).append(_path_pattern(value))
            elif tag == "N" and value and len(regexes_read) >= MAX_REGEXES:
                raise PatternError(f"more than {MAX_REGEXES} N: regexes in the file")
            elif tag == "N" and value:
                regexes.append(_path_regex(value))
                regexes_read.append(number)
        except PatternError as error:
            problems.append(f"{origin}:{number}: {tag}: {value[:80]!r} left out: {error}")
    section = Section(
        name=name,
        line=line,
        maintainers=tuple(values.get("M", ())),
        reviewers=tuple(values.get("R", ())),
        lists=tuple(values.get("L", ())),
        status=values["S"][0] if "S" in values else None,
        files=tuple(values.get("F", ())),
        excluded=tuple(values.get("X", ())),
        regexes=tuple(values.get("N", ())),
        keywords=tuple(values.get("K", ())),
    )
    return section, _SectionMatcher(tuple(files), tuple(excluded), tuple(regexes))


def _path_pattern(value: str) -> _PathPattern:
    pattern = value.split()[0]  # get_maintainer reads up to the first whitespace too
    cut = next((index for index, char in enumerate(pattern) if char in _GLOB_SPECIAL), len(pattern))
    if cut == len(pattern):
        return _PathPattern(pattern, glob=None)
    if len(pattern) >= MAX_PATTERN:  # the one way compiling a glob fails, checked now as it compiles later
        raise PatternError(f"pattern is {len(pattern)} characters, over the cap of {MAX_PATTERN - 1}")
    return _PathPattern(pattern[:cut], glob=pattern, pieces=_literal_pieces(pattern[cut:]))


def _literal_pieces(rest: str) -> tuple[str, ...]:
    """The plain runs of a glob's wildcard part; a class or an escape just ends a run (fewer pieces, same answer)."""
    return tuple(piece for piece in re.split(r"\[[^]]*\]?|\\.?|[*?\[]", rest) if piece)


def _has_in_order(path: str, start: int, pieces: tuple[str, ...]) -> bool:
    """A cheap test before the NFA: each piece found after the one before it."""
    for piece in pieces:
        found = path.find(piece, start)
        if found < 0:
            return False
        start = found + len(piece)
    return True


def _path_regex(value: str) -> LinearPattern | str:
    if len(value) > MAX_PATTERN:
        raise PatternError(f"pattern is {len(value)} characters, over the cap of {MAX_PATTERN}")
    if not any(char in _REGEX_SPECIAL for char in value):
        return value
    return compile_regex(value, extended=True)
