"""Path globs of a plan (`paths`, `documentation`): which changed files a pattern names.

A pattern is matched against the whole repository-relative path:
- `*` is any run of characters but "/", `?` one character but "/", `[...]` a class (`[!x]` negates);
- `**` is any number of directories: `**/` matches "", "a/", "a/b/"; a `**` elsewhere any run at all;
- a pattern ending in "/" names everything below that directory (`drivers/` is `drivers/**`);
- a pattern without any wildcard names that file or everything below it (`drivers/net`), so yesterday's
  prefixes keep selecting what they did, short of a file that merely starts with the prefix.

The plan may come from a fork's branch, so patterns go through bot/core/linear_match (no backtracking).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from bot.core.linear_match import MAX_PATTERN, LinearPattern, PatternError, compile_regex
from workers.spec import unsafe_path_reason

_WILDCARDS = frozenset("*?[")
_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")
MAX_GLOB = 200  # characters


def glob_problem(pattern: str) -> str | None:
    """Why a pattern cannot be a path glob; None if it can."""
    if len(pattern) > MAX_GLOB:
        return f"is {len(pattern)} characters, over the cap of {MAX_GLOB}"
    reason = unsafe_path_reason(pattern.removesuffix("/"))
    if reason:
        return f"{reason}: globs are relative to the tree's root"
    regex = glob_regex(pattern)
    if len(regex) > MAX_PATTERN:
        return f"has too many wildcards: its matcher is {len(regex)} characters, over the cap of {MAX_PATTERN}"
    try:
        compiled(pattern)
    except PatternError as error:
        return f"is not a glob labgate can match: {error}"
    return None


def glob_matches(pattern: str, path: str) -> bool:
    # The NFA costs tens of microseconds a path, the literal ends a fraction of one; most globs start with
    # a directory, or end with a suffix, that most paths do not have.
    prefix, suffix = literal_ends(pattern)
    return path.startswith(prefix) and path.endswith(suffix) and compiled(pattern).fullmatch(path)


@lru_cache(maxsize=1024)
def literal_ends(pattern: str) -> tuple[str, str]:
    """What every path the glob matches starts and ends with: its text before the first wildcard or escape,
    and after the last ("" for a plain name or a directory, which names what is below it)."""
    if not any(char in _WILDCARDS for char in pattern):
        return pattern.replace("\\", ""), ""
    specials = [index for index, char in enumerate(pattern) if char in "*?[]\\"]
    if pattern.endswith("/"):
        return pattern[: specials[0]], ""
    suffix = pattern[specials[-1] + 1 :]
    if pattern[: specials[-1] + 1].endswith("**"):
        suffix = suffix.removeprefix("/")  # `**/` may be no directory at all: "**/Kconfig" matches "Kconfig"
    return pattern[: specials[0]], suffix


def first_match(patterns: Iterable[str], path: str) -> str | None:
    """The first of the patterns that matches the path."""
    return next((pattern for pattern in patterns if glob_matches(pattern, path)), None)


@lru_cache(maxsize=1024)
def compiled(pattern: str) -> LinearPattern:
    return compile_regex(glob_regex(pattern))


def glob_regex(pattern: str) -> str:
    """The regex (linear_match's subset) of a glob, for a whole-path match."""
    if pattern.endswith("/"):
        pattern += "**"
    elif not any(char in _WILDCARDS for char in pattern):
        return _literal(literal_ends(pattern)[0]) + "(?:/.*)?"
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
            continue
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := _class_end(pattern, index)) is not None:
            body = pattern[index + 1 : end]
            negated = body[:1] in ("!", "^")
            body = body[1:] if negated else body
            out.append("[" + ("^" if negated else "") + body.replace("\\", "\\\\") + "]")
            index = end + 1
            continue
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(_literal(pattern[index]))
        else:
            out.append(_literal(char))
        index += 1
    return "".join(out)


def _class_end(pattern: str, start: int) -> int | None:
    """The index of the "]" closing the class at `start` (a "]" first in the class is a member)."""
    index = start + 1
    if index < len(pattern) and pattern[index] in "!^":
        index += 1
    index += 1  # the first member, even "]"
    end = pattern.find("]", index)
    return None if end < 0 or index > len(pattern) else end


def _literal(text: str) -> str:
    return "".join("\\" + char if char in _REGEX_SPECIAL else char for char in text)
