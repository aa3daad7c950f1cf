"""Markdown reports: what a change wrote (logs, test names, reasons) is shown as text, never read as markdown.

Rendered with markdown-it-py (CommonMark, plus GFM tables), installed with rich: what a forge's renderer would
make of each report, asserted on its tokens (a code block's content, a link's target, a table's cells)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.core.render import FailedTest, JobView, fenced, inline_code, inline_text, link, render_job_markdown

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
