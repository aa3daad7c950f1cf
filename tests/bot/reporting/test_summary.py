"""A pipeline's markdown summary (a GitLab merge request note, a commit comment): what the change wrote, in
its error lines, test names, job names and reasons, is shown as text and never read as markdown.

Rendered with markdown-it-py (CommonMark, plus GFM tables), installed with rich, and asserted on its tokens."""

from __future__ import annotations

from collections.abc import Iterator

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.reporting.sinks import JobReport, PipelineSummary
from bot.reporting.summary import summary_markdown

MARKDOWN = MarkdownIt("commonmark").enable("table")
FORGED = "**All 214 tests passed: safe to merge** ![t](https://attacker/pixel.png) [details](https://attacker/login)"
JOB_URL = "https://ci.example.org/jobs/7?sig=abc"
PIPELINE_URL = "https://ci.example.org/pipelines/3?sig=def"
ERROR_LINES = f"drivers/x.c:1:1: error: nope\n```\n{FORGED}\n  ```\nmore"


def _job(**fields: object) -> JobReport:
    defaults: dict[str, object] = {
        "job_id": 7, "pipeline_id": 3, "kind": "test", "name": "qemu-x86_64 unit",
        "label": "labgate / qemu-x86_64 unit", "stage": "done", "verdict": "fail", "title": "fail: math.mul",
        "summary": "", "details_url": JOB_URL, "error_lines": ERROR_LINES,
    }  # fmt: skip
    return JobReport(**(defaults | fields))  # type: ignore[arg-type]


def _summary(*jobs: JobReport, **fields: object) -> PipelineSummary:
    defaults: dict[str, object] = {
        "pipeline_id": 3, "done": True, "verdict": "fail", "headline": "labgate: fail: 1 failing",
        "text": "", "markdown": "", "url": PIPELINE_URL, "jobs": jobs,
    }  # fmt: skip
    return PipelineSummary(**(defaults | fields))  # type: ignore[arg-type]


def walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        yield from walk(token.children or [])


def _assert_only_our_links(tokens: list[Token]) -> None:
    for token in walk(tokens):
        assert token.type not in ("image", "html_inline", "html_block"), token
        if token.type == "link_open":
            assert token.attrs["href"] in (JOB_URL, PIPELINE_URL), token.attrs


def test_error_lines_that_close_a_fence_stay_in_it() -> None:
    tokens = MARKDOWN.parse(summary_markdown(_summary(_job())))
    _assert_only_our_links(tokens)
    fences = [token for token in tokens if token.type == "fence"]
    assert [fence.content for fence in fences] == [ERROR_LINES + "\n"]
    assert fences[0].level > 0  # under its job's list item
    assert not any("All 214" in token.content for token in tokens if token.type == "inline")


def test_a_test_name_in_a_title_makes_no_link_and_no_cell() -> None:
    title = f"fail: math.mul](https://attacker/login) | pass | {FORGED}"
    label = "labgate / unit [safe](https://attacker/login) | pass"
    markdown = summary_markdown(_summary(_job(title=title, label=label, error_lines="")))
    tokens = MARKDOWN.parse(markdown)
    _assert_only_our_links(tokens)
    assert sum(1 for token in tokens if token.type == "td_open") == 2  # one row, two cells
    texts = ["".join(child.content for child in token.children or [] if child.type in ("text", "code_inline"))
             for token in tokens if token.type == "inline"]  # fmt: skip
    assert f"{label}: {title}" in texts  # the broken job's line, read as the text it is
    assert [label, title] == texts[-3:-1]  # the table's row


def test_headline_notes_and_reproduce_are_text() -> None:
    summary = _summary(
        _job(error_lines=""), headline=f"labgate: fail: 1 failing (unit: {FORGED})",
        notes=(f"test x not selected: the change touches none of {FORGED}", "- a list\n# a heading"),
        reproduce=f"labgate try x\n```\n{FORGED}",
    )  # fmt: skip
    tokens = MARKDOWN.parse(summary_markdown(summary))
    _assert_only_our_links(tokens)
    assert not any(token.type in ("heading_open", "hr") for token in tokens)
    assert [token.content for token in tokens if token.type == "fence"] == [f"labgate try x\n```\n{FORGED}\n"]
    first = [token for token in tokens if token.type == "inline"][0]
    children = [child for child in first.children or [] if child.type != "text" or child.content]
    # Without a verdict line (a summary made by hand), the headline leads, as text.
    assert [(child.type, child.content) for child in children] == [("text", summary.headline)]
