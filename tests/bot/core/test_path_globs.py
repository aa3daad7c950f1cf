"""Plan path globs: `*` within a directory, `**` across, a trailing "/" below, a plain name and below."""

from __future__ import annotations

import time

import pytest

from bot.core.path_globs import MAX_GLOB, compiled, first_match, glob_matches, glob_problem, literal_ends


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("drivers/*.c", "drivers/a.c", True),
    ("drivers/*.c", "drivers/net/a.c", False),  # `*` does not cross "/"
    ("drivers/*.c", "drivers/a.h", False),
    ("*.c", "a.c", True),
    ("*.c", "lib/a.c", False),
    ("drivers/**/*.c", "drivers/a.c", True),  # `**/` may be no directory at all
    ("drivers/**/*.c", "drivers/net/a.c", True),
    ("drivers/**/*.c", "drivers/net/phy/a.c", True),
    ("drivers/**/*.c", "drivers/net/phy/a.h", False),
    ("drivers/**/*.c", "driversX/a.c", False),
    ("**/Kconfig", "Kconfig", True),
    ("**/Kconfig", "drivers/net/Kconfig", True),
    ("**/Kconfig", "drivers/net/Kconfig.debug", False),
    ("drivers/**", "drivers/a/b/c.c", True),
    ("drivers/**", "drivers", False),
    ("drivers/", "drivers/net/a.c", True),  # a trailing "/" is everything below
    ("drivers/", "drivers", False),
    ("drivers/", "driversX/a.c", False),
    ("kernel/printk", "kernel/printk/printk.c", True),  # a plain name: itself or below (yesterday's prefix)
    ("kernel/printk", "kernel/printk", True),
    ("kernel/printk", "kernel/printkx.c", False),
    ("MAINTAINERS", "MAINTAINERS", True),
    ("MAINTAINERS", "MAINTAINERS.orig", False),
    ("lib/a?c", "lib/abc", True),
    ("lib/a?c", "lib/a/c", False),  # `?` does not match "/" either
    ("lib/test_[ab].c", "lib/test_b.c", True),
    ("lib/test_[ab].c", "lib/test_c.c", False),
    ("lib/test_[!a].c", "lib/test_c.c", True),
    ("lib/test_[!a].c", "lib/test_a.c", False),
    ("lib/test_[0-9].c", "lib/test_7.c", True),
    ("lib/[]x].c", "lib/].c", True),  # "]" first in a class is a member
    ("a+b(c)|d.c", "a+b(c)|d.c", True),  # regex characters are literals
    ("a+b(c)|d.c", "aab(c)|d.c", False),
    ("doc/*.rst", "doc/a\nb.rst", True),  # whatever a path holds, it is matched, not interpreted
    (r"odd\*name", "odd*name", True),
    (r"odd\*name", "oddXname", False),
    ("lib/[ab", "lib/[ab", True),  # a class that never closes is literal
])  # fmt: skip
def test_glob_rules(pattern: str, path: str, expected: bool) -> None:
    assert glob_problem(pattern) is None
    assert glob_matches(pattern, path) is expected


@pytest.mark.parametrize(("pattern", "why"), [
    ("/etc/", "is absolute"),
    ("../x", "'..' component"),
    ("a//b", "empty or '.' component"),
    ("./a", "empty or '.' component"),
    ("", "is empty"),
    ("a" * (MAX_GLOB + 1), "over the cap"),
])  # fmt: skip
def test_unusable_globs_say_why(pattern: str, why: str) -> None:
    problem = glob_problem(pattern)
    assert problem is not None and why in problem


def test_first_match_names_the_glob_that_matched() -> None:
    assert first_match(("lib/", "drivers/**/*.c"), "drivers/x/y.c") == "drivers/**/*.c"
    assert first_match(("lib/",), "drivers/x/y.c") is None


def test_a_hostile_glob_on_a_long_path_is_matched_in_linear_time() -> None:
    # With a backtracking matcher this pair takes (path length)^(number of stars): years.
    pattern = "**" + "a**" * 40 + "b"
    assert glob_problem(pattern) is None
    path = "a/" * 2000
    start = time.monotonic()
    assert not glob_matches(pattern, path)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("pattern", "ends"), [
    ("drivers/**/*.c", ("drivers/", ".c")),
    ("**/Kconfig", ("", "Kconfig")),  # not "/Kconfig": `**/` may be no directory
    ("a/**/b", ("a/", "b")),
    ("lib/test_[ab].c", ("lib/test_", ".c")),
    (r"odd\*name", ("odd", "name")),
    ("drivers/*/", ("drivers/", "")),
    ("drivers/", ("drivers/", "")),
    ("a]b", ("a]b", "")),  # no wildcard: a plain name, "]" and all
    (r"a\b", ("ab", "")),
])  # fmt: skip
def test_the_literal_ends_every_match_has(pattern: str, ends: tuple[str, str]) -> None:
    assert literal_ends(pattern) == ends


@pytest.mark.parametrize("path", ["a]b", "a]b/c", "ab", "Kconfig", "a/b", "odd*name", "x/Kconfig"])
def test_the_literal_ends_never_refuse_what_the_glob_matches(path: str) -> None:
    for pattern in ("a]b", r"a\b", "**/Kconfig", "a/**/b", r"odd\*name", "**", "**/*"):
        assert glob_matches(pattern, path) == compiled(pattern).fullmatch(path), (pattern, path)


def test_a_glob_of_too_many_wildcards_says_so() -> None:
    assert glob_problem("drivers/net/ethernet/intel/ice/**/*.[ch]") is None
    problem = glob_problem("a/" + "*x" * 60)
    assert problem is not None and problem.startswith("has too many wildcards: its matcher is 362 characters")
