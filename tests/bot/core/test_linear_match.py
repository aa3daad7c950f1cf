"""The linear-time matcher agrees with Python's re on the subset it accepts, and refuses the rest."""

from __future__ import annotations

import re
import time

import pytest

from bot.core.linear_match import PatternError, compile_glob, compile_regex

PATTERNS = ["[^a-z]tegra", "sun[x456789]i", "bcm[9]?47622", "bcm113*", "^abc$", "a|b|cd", "(a+)+$", "x{2,3}y",
            "x{2,}y", "a.c", "\\d+\\.\\w", "(?:ab)*c", "[]a]", "[a-]", "bcm[-_]nsp", "cros[-_]ec", "^$", "a?b+?",
            "(foo|bar)baz", "[^/]+/[^/]+$", "\\s", "\\Wx", "^/pmac"]  # fmt: skip
TEXTS = ["arch/arm/tegra/x.c", "integrator", "sun8i", "bcm47622", "bcm947622", "bcm11", "abc", "xabc", "cd", "aaaa!",
         "xxy", "xxxxy", "xy", "abc", "12.a", "ababc", "]", "-", "bcm_nsp", "", "foobaz", "a/b", "a/b/c", " ", "-x",
         "/pmac/x", "drivers/cros-ec/x.c"]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS)
def test_agrees_with_python_re(pattern: str) -> None:
    ours, theirs = compile_regex(pattern), re.compile(pattern)
    for text in TEXTS:
        assert ours.search(text) == bool(theirs.search(text)), text
        assert ours.fullmatch(text) == bool(theirs.fullmatch(text)), text


def test_extended_mode_ignores_whitespace_and_comments_as_perl_x() -> None:
    pattern = compile_regex("te gra # a comment", extended=True)
    assert pattern.search("drivers/tegra/x.c") and not pattern.search("te gra")
    assert compile_regex("[ ]x", extended=True).search(" x")  # inside a class a space is a space


@pytest.mark.parametrize(
    "pattern", ["(?=a)", "(?i)a", "(?P<n>a)", "\\1", "\\b", "\\p{L}", "a**", "a{2}{3}", "a++", "*a", "(a", "a)", "[a",
                "[z-a]", "\\"],
)  # fmt: skip
def test_refuses_what_it_does_not_support(pattern: str) -> None:
    with pytest.raises(PatternError, match="at offset|unbalanced"):
        compile_regex(pattern)


def test_globs_by_segment_or_crossing() -> None:
    assert compile_glob("drivers/*/qcom/*", crossing=True).fullmatch("drivers/a/b/qcom/x.c")
    segment = compile_glob("drivers/net/*", crossing=False)
    assert segment.fullmatch("drivers/net/a.c") and not segment.fullmatch("drivers/net/x/a.c")
    assert compile_glob("da90??-[!x]*.txt", crossing=False).fullmatch("da9063-onkey.txt")
    assert compile_glob("[unclosed", crossing=False).fullmatch("[unclosed")  # an unclosed class is literal


def test_worst_cases_stay_linear() -> None:
    """Each of these backtracks for minutes or more in Python's re on this text; none matches it."""
    text = "a" * 4000 + "!"
    for pattern in ("(a+)+$", "(a|a)*b", "(a*)*!x", "a*" * 60 + "b", "(.*a){20}!x"):
        started = time.perf_counter()
        assert not compile_regex(pattern).search(text)
        assert time.perf_counter() - started < 1, pattern
