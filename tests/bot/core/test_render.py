"""Markdown reports: what a change wrote (logs, test names, reasons) is shown as text, never read as markdown.

Rendered with markdown-it-py (CommonMark, plus GFM tables), installed with rich: what a forge's renderer would
make of each report, asserted on its tokens (a code block's content, a link's target, a table's cells)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.core.render import (
    FailedTest,
    JobView,
    TestVerdictView,
    fenced,
    inline_code,
    inline_text,
    link,
    new_problems,
    problem_markdown,
    problem_text,
    problem_title,
    render_job_markdown,
    rest_lines,
    rest_markdown,
    verdict_line,
    verdicts_markdown,
)

MARKDOWN = MarkdownIt("commonmark").enable("table")
FORGED = "**All 214 tests passed: safe to merge** ![t](https://attacker/pixel.png) [details](https://attacker/login)"

# Ways out of a fenced block: a closing fence of each shape CommonMark accepts (indented up to 3 spaces,
# longer than the opening, with trailing spaces), a line ending CommonMark reads but a split on '\n' does
# not, the other fence character, and an HTML block that would follow.
FENCE_BREAKERS = [
    f"cc -c x.c\n```\n{FORGED}",
    f"x\n   ```\n{FORGED}",
    f"x\n````````\n{FORGED}",
    f"x\n```   \n{FORGED}",
    f"x\r```\r{FORGED}",
    f"x\r\n```\r\n{FORGED}",
    f"x\n~~~\n{FORGED}",
    f"```\n{FORGED}\n```",
    f"`` ` ```` `````\n{FORGED}",
    "```\n<img src=https://attacker/pixel.png>\n<script>alert(1)</script>",
    "",
]

# What may make a link, an image, HTML, emphasis, a code span or a new table cell out of one line of text.
INLINE_BREAKERS = [
    FORGED,
    "math.mul](https://attacker/login)",
    "x | forged cell | another",
    "x \\| still one cell",
    "x \\\\| still one cell",
    "<img src=https://attacker/pixel.png>",
    "<https://attacker/login>",
    "`code` and ``more``",
    "[ref]: https://attacker/login",
    "[ref]",
    "line one\nline two\r\n| new row |",
    "*em* _em_ ~~strike~~ \\* __init__ a__b__c x86_64 _é_ é_é",
    "&lt;not an entity&gt; &amp;",
    "trailing backslash \\",
    "# heading",
    "- item",
    "+ item",
    "1. item",
    "12) item",
    "> quote",
    "===",
    "--- x",
    "$\\Huge{PASSED}$ $$x$$",
]


def walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        yield from walk(token.children or [])


def assert_nothing_active(tokens: list[Token], allowed_links: tuple[str, ...] = ()) -> None:
    """No image, no HTML, no autolink, no link but ours."""
    for token in walk(tokens):
        assert token.type not in ("image", "html_inline", "html_block"), token
        if token.type == "link_open":
            assert token.attrs["href"] in allowed_links, token.attrs


@pytest.mark.parametrize("content", FENCE_BREAKERS)
def test_nothing_in_a_fenced_text_closes_its_fence(content: str) -> None:
    tokens = MARKDOWN.parse(fenced(content) + "\n\nafter")
    fences = [token for token in tokens if token.type == "fence"]
    assert len(fences) == 1
    expected = content.replace("\r\n", "\n").replace("\r", "\n")
    assert fences[0].content == (expected + "\n" if expected else "")
    assert_nothing_active(tokens)
    assert [token.content for token in tokens if token.type == "inline"] == ["after"]


@pytest.mark.parametrize("content", FENCE_BREAKERS)
def test_a_fenced_text_indented_in_a_list_item_stays_in_it(content: str) -> None:
    block = "\n".join(f"  {line}" for line in fenced(content).split("\n"))
    tokens = MARKDOWN.parse(f"- [job](https://ci.example.org/jobs/7): fail\n\n{block}\n\nafter")
    fences = [token for token in tokens if token.type == "fence"]
    assert len(fences) == 1 and fences[0].level > 0  # inside the list item
    assert_nothing_active(tokens, allowed_links=("https://ci.example.org/jobs/7",))
    assert tokens[-2].content == "after"


def test_fenced_keeps_the_info_string_and_refuses_one_that_could_break_it() -> None:
    assert fenced("make", info="sh").split("\n")[0] == "```sh"
    assert MARKDOWN.parse(fenced("a ``` b", info="console"))[0].info == "console"
    for info in ("x`", "a\nb", "a b"):
        with pytest.raises(ValueError, match="info string"):
            fenced("x", info=info)


def _paragraph_inline(markdown: str) -> Token:
    tokens = MARKDOWN.parse(markdown)
    assert [token.type for token in tokens] == ["paragraph_open", "inline", "paragraph_close"], tokens
    return tokens[1]


@pytest.mark.parametrize("text", INLINE_BREAKERS)
def test_inline_text_is_read_as_the_same_text_on_one_line(text: str) -> None:
    inline = _paragraph_inline(f"before {inline_text(text)} after")
    assert [child.type for child in inline.children or []] == ["text"]
    assert (inline.children or [])[0].content == f"before {' '.join(text.split())} after"


@pytest.mark.parametrize("text", INLINE_BREAKERS)
@pytest.mark.parametrize("where", ["{}", "para\n{}", "- {}", "- [job](https://ci.example.org/jobs/7): {}"])
def test_inline_text_starting_a_line_or_a_list_item_starts_no_block(text: str, where: str) -> None:
    tokens = MARKDOWN.parse(where.format(inline_text(text)))
    assert [token.type for token in tokens if token.type.endswith("_open")] in (
        ["paragraph_open"],
        ["bullet_list_open", "list_item_open", "paragraph_open"],
    )
    inline = next(token for token in tokens if token.type == "inline")
    assert inline.content.endswith(inline_text(text))
    assert [child.content for child in inline.children or [] if child.type == "text"][-1].endswith(
        " ".join(text.split())
    )
    assert_nothing_active(tokens, allowed_links=("https://ci.example.org/jobs/7",))


@pytest.mark.parametrize("text", INLINE_BREAKERS)
def test_inline_text_is_one_table_cell(text: str) -> None:
    tokens = MARKDOWN.parse(f"| job | result |\n|---|---|\n| {inline_text(text)} | fail |\n\nafter")
    cells = [token for token in tokens if token.type == "td_open"]
    assert len(cells) == 2
    first_cell = tokens[tokens.index(cells[0]) + 1]
    assert [(child.type, child.content) for child in first_cell.children or []] == [("text", " ".join(text.split()))]
    assert_nothing_active(tokens)


@pytest.mark.parametrize("text", [*INLINE_BREAKERS, "`", "``x``", " lead", "trail ", "a`"])
def test_inline_code_is_one_code_span_of_the_same_text(text: str) -> None:
    inline = _paragraph_inline(f"**not ok {inline_code(text)}**")
    spans = [child for child in inline.children or [] if child.type == "code_inline"]
    assert [span.content for span in spans] == [" ".join(text.split())]
    assert_nothing_active([inline])
    kinds = [child.type for child in inline.children or [] if child.type != "text" or child.content]
    assert kinds == ["strong_open", "text", "code_inline", "strong_close"]


def test_link_text_is_text_and_its_target_stays_whole() -> None:
    inline = _paragraph_inline(link(FORGED, "https://ci.example.org/jobs/7?a=(b) c<d>"))
    opened = [child for child in inline.children or [] if child.type == "link_open"]
    assert len(opened) == 1
    assert opened[0].attrs["href"] == "https://ci.example.org/jobs/7?a=%28b%29%20c%3Cd%3E"
    assert [child.content for child in inline.children or [] if child.type == "text"] == [FORGED]
    assert not any(child.type == "image" for child in inline.children or [])


def test_a_job_report_shows_the_changes_text_as_text() -> None:
    job = JobView(
        id=7, kind="test", name="qemu-x86_64 unit", state="done", result="fail",
        error_message=f"kernel panic\n  ```\n{FORGED}",
        failed_tests=(FailedTest(path="math`.mul` ![t](https://attacker/pixel.png) `", diagnostics=f"```\n{FORGED}",
                                 reason="[details](https://attacker/login)"),),
        log_excerpt=f"   ```\n{FORGED}",
    )  # fmt: skip
    tests = (("a | forged | cells", "fail"), ("b](https://attacker/login)", "skip # [x](https://attacker/login)"))
    markdown = render_job_markdown(job, tests=tests, earlier_failure=f"```\n{FORGED}", reproduce=f"```\n{FORGED}")
    tokens = MARKDOWN.parse(markdown)
    assert_nothing_active(tokens)
    assert not any("All 214" in token.content for token in tokens if token.type == "inline")
    codes = [token.content for token in tokens if token.type == "fence"]
    # The earlier attempt, the error message, the failed test's diagnostics, how to reproduce.
    assert codes == [f"```\n{FORGED}\n", f"kernel panic\n  ```\n{FORGED}\n", f"```\n{FORGED}\n", f"```\n{FORGED}\n"]
    spans = [child.content for token in walk(tokens) if token.type == "inline" for child in token.children or []
             if child.type == "code_inline"]  # fmt: skip
    assert spans == ["math`.mul` ![t](https://attacker/pixel.png) `"]
    rows = [token for token in tokens if token.type == "tr_open"]
    assert len(rows) == 3  # the header and one row per test
    assert sum(1 for token in tokens if token.type == "td_open") == 4


# -- verdicts ---------------------------------------------------------------------------------------------

CRASH = "BUG: KASAN: use-after-free in frob_release"
PUBLIC_LOG = "https://ci.example.org/jobs/7/log"
ISSUE_LINK = "https://bugs.example.org/7"


def verdict(test: str = "math.mul", verdict: str = "new", **fields: object) -> TestVerdictView:
    defaults: dict[str, object] = {"job_id": 7, "job": "qemu-x86_64 unit", "test": test,
                                   "device_class": "qemu-x86_64", "verdict": verdict,
                                   "evidence": "failed 4/4 with the change, 0/4 on base", "log_url": PUBLIC_LOG,
                                   "reproduce": "labgate reproduce 7 --server https://ci.example.org"}  # fmt: skip
    return TestVerdictView(**(defaults | fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(("counts", "line"), [
    ({"new": 2, "flaky": 1, "known-issue": 1, "pass": 140}, "2 new failures, 1 flaky, 1 known issue, 140 passed"),
    ({"pass": 1, "fixed": 1, "unconfirmed": 1, "known-issue": 1, "flaky": 2, "pre-existing": 1, "regression": 1,
      "new": 1}, "1 new failure, 1 regression, 1 pre-existing failure, 2 flaky, 1 known issue, 1 unconfirmed, "
                 "1 fixed, 1 passed"),
    ({"regression": 2, "pre-existing": 3, "known-issue": 2, "new": 0, "pass": 0}, "2 regressions, 3 pre-existing "
                                                                                   "failures, 2 known issues"),
    ({"failed": 1, "broken": 2, "incomplete": 1}, "1 failed, 2 failed jobs, 1 incomplete"),
    ({}, "no test results"),
    ({"new": 0}, "no test results"),
])  # fmt: skip
def test_the_verdict_line_counts_in_order_singular_and_plural_leaving_zeros_out(counts: dict[str, int],
                                                                               line: str) -> None:  # fmt: skip
    assert verdict_line(counts) == line


def test_a_verdict_the_line_does_not_know_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown verdicts \\['looks-fine'\\]"):
        verdict_line({"looks-fine": 1})


def test_failures_with_one_crash_title_are_one_problem_with_every_test_it_hit() -> None:
    found = [verdict("a", crash_title=CRASH), verdict("b"), verdict("c", "flaky", crash_title=CRASH),
             verdict("d", crash_title=CRASH, job="qemu-arm64 unit"),
             verdict("e", "regression", crash_title="WARNING in g")]  # fmt: skip
    problems = new_problems(found)
    assert [(p.crash_title, [v.test for v in p.failures]) for p in problems] == [
        (CRASH, ["a", "d"]), ("", ["b"]), ("WARNING in g", ["e"])]  # fmt: skip
    markdown = problem_markdown(problems[0])
    assert markdown.startswith(f"**New crash:** `{CRASH}`, hit 2 tests:")
    assert problem_title(problems[0]).startswith(f"New crash '{CRASH}', hit 2 tests: qemu-x86_64 unit/a on")
    assert problem_markdown(problems[2]).startswith("**New regression:** `qemu-x86_64 unit/e`")
    # Two identical failures (one test reported twice) stay two hits, not one.
    twice = new_problems([verdict("a", crash_title=CRASH), verdict("a", crash_title=CRASH)])
    assert [len(p.failures) for p in twice] == [2]


def test_a_new_failure_block_has_evidence_error_lines_crash_log_and_reproduce_command() -> None:
    lines = "\n".join(f"line {n}" for n in range(50))
    [problem] = new_problems([verdict(crash_title=CRASH, error_lines=lines)])
    tokens = MARKDOWN.parse(problem_markdown(problem))
    assert_nothing_active(tokens, allowed_links=(PUBLIC_LOG,))
    inline = " ".join(token.content for token in tokens if token.type == "inline")
    assert "failed 4/4 with the change, 0/4 on base" in inline and f"Crash: `{CRASH}`" in inline
    fences = [token.content for token in tokens if token.type == "fence"]
    assert fences == ["\n".join(f"line {n}" for n in range(20)) + "\n",
                      "labgate reproduce 7 --server https://ci.example.org\n"]  # fmt: skip
    assert problem_text(problem).split("\n") == [f"crash: {CRASH}", *(f"line {n}" for n in range(20))]


@pytest.mark.parametrize("hostile", INLINE_BREAKERS)
def test_what_a_change_names_in_a_verdict_stays_text(hostile: str) -> None:
    """A test's name (KTAP), a crash title (the console), a device class and job name (the plan), the
    evidence and why re-runs stopped: text in every block, never a link, an image, HTML or a heading."""
    found = [verdict(hostile, crash_title=hostile, job=hostile, device_class=hostile, evidence=hostile),
             verdict(hostile, "flaky", cut_short=hostile), verdict(hostile, "known-issue", known_issue=hostile,
                                                                    known_issue_link=ISSUE_LINK)]  # fmt: skip
    tokens = MARKDOWN.parse(verdicts_markdown(found))
    assert_nothing_active(tokens, allowed_links=(PUBLIC_LOG, ISSUE_LINK))
    assert not any(token.type in ("heading_open", "hr", "table_open", "blockquote_open") for token in tokens)
    # Our three headings are the only emphasis: the new failure's, the flaky and the known issues'.
    assert sum(1 for token in walk(tokens) if token.type in ("strong_open", "em_open", "s_open")) == 3
    said = " ".join(token.content for token in walk(tokens) if token.type in ("text", "code_inline"))
    assert " ".join(hostile.split()) in said


@pytest.mark.parametrize("content", FENCE_BREAKERS)
def test_error_lines_that_close_a_fence_stay_in_the_new_failures_block(content: str) -> None:
    [problem] = new_problems([verdict(error_lines=content)])
    tokens = MARKDOWN.parse(problem_markdown(problem))
    assert_nothing_active(tokens, allowed_links=(PUBLIC_LOG,))
    fences = [token.content for token in tokens if token.type == "fence"]
    assert fences[-1] == "labgate reproduce 7 --server https://ci.example.org\n"  # the block did not end early
    expected = content.replace("\r\n", "\n").replace("\r", "\n")
    assert fences[:-1] == ([expected + "\n"] if expected.strip() else [])


@pytest.mark.parametrize("target", ["javascript:alert(1)", "https://bugs.example.org/7 [x](https://attacker/login)",
                                    "data:text/html,<script>", ""])  # fmt: skip
def test_a_known_issue_links_only_to_a_web_address(target: str) -> None:
    found = [verdict("fs.read", "known-issue", known_issue="KI-7", known_issue_link=target)]
    tokens = MARKDOWN.parse(rest_markdown(found))
    assert_nothing_active(tokens)
    assert "KI-7" in " ".join(token.content for token in tokens if token.type == "inline")


def test_the_rest_lists_each_kind_with_why_it_does_not_count_and_caps_long_lists() -> None:
    found = [verdict(f"t{n}", "flaky") for n in range(60)] + [
        verdict("p", "pre-existing"), verdict("k", "known-issue", known_issue="KI-7", known_issue_link=ISSUE_LINK),
        verdict("u", "unconfirmed", cut_short="the extra-run cap (24) was reached"), verdict("f", "fixed")]  # fmt: skip
    markdown = rest_markdown(found)
    order = ["Pre-existing failures", "Flaky", "Known issues", "Unconfirmed", "Fixed"]
    assert [markdown.index(word) for word in order] == sorted(markdown.index(word) for word in order)
    assert "- … and 10 more" in markdown and "t49" in markdown and "t50" not in markdown
    assert f"[KI-7]({ISSUE_LINK})" in markdown and "the extra-run cap \\(24\\) was reached" in markdown
    plain = rest_lines(found)
    assert plain[2] == (f"Known issues: qemu-x86_64 unit/k on qemu-x86_64 (failed 4/4 with the change, 0/4 on base) "
                        f"[known issue KI-7 {ISSUE_LINK}].")  # fmt: skip
    assert verdicts_markdown([]) == "" and rest_lines([]) == []


def test_a_flood_of_new_failures_and_huge_lines_is_capped() -> None:
    """A change that breaks thousands of tests, or a DUT printing megabytes on one line, makes a report of
    bounded size that still counts everything."""
    huge = "x" * 4_000_000
    flood = [verdict(f"t{n}", crash_title=f"BUG in f{n}", error_lines=huge) for n in range(1000)]
    flood += [verdict(f"c{n}", crash_title=CRASH) for n in range(500)]
    markdown = verdicts_markdown(flood)
    assert len(markdown) < 200_000
    assert markdown.count("**New failure:**") == 20 and "… and 981 more new problems" in markdown
    [crash] = [p for p in new_problems(flood) if p.crash_title == CRASH]
    assert problem_markdown(crash).count("\n- ") == 51 and "- … and 450 more" in problem_markdown(crash)
    assert len(problem_title(crash)) < 10_000 and problem_title(crash).endswith("and 450 more")
    assert max(len(line) for line in problem_text(new_problems(flood)[0]).split("\n")) == 500 + len(" [...]")
