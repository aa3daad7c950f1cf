"""Slash commands: forms, quotes, code blocks, inline code, HTML comments, CRLF, several per comment."""

from __future__ import annotations

import pytest

from bot.core.commands import HELP_TEXT, NAMES, Command, parse_commands, render_help

OK = Command("ok-to-test", ())
RETEST = Command("retest", ())
CANCEL = Command("cancel", ())
HELP = Command("help", ())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/ok-to-test", [OK]),
        ("/ok-to-test abc1234", [Command("ok-to-test", ("abc1234",))]),
        ("/ok-to-test ABC1234DEF", [Command("ok-to-test", ("abc1234def",))]),
        ("/ok-to-test " + "a" * 40, [Command("ok-to-test", ("a" * 40,))]),
        ("/ok-to-test hardware", [Command("ok-to-test", ("hardware",))]),
        ("/ok-to-test Hardware", [Command("ok-to-test", ("hardware",))]),
        ("/ok-to-test abc1234 hardware", [Command("ok-to-test", ("abc1234", "hardware"))]),
        ("/retest", [RETEST]),
        ("/retest build", [Command("retest", ("build",))]),
        ("/retest   qemu x86_64 boot  ", [Command("retest", ("qemu x86_64 boot",))]),
        ("/retest build (arm64, defconfig)", [Command("retest", ("build (arm64, defconfig)",))]),
        ("/cancel", [CANCEL]),
        ("/help", [HELP]),
        ("/RETEST", [RETEST]),
        ("/retest\t", [RETEST]),
        ("/cancel  ", [CANCEL]),
    ],
)
def test_forms(body: str, expected: list[Command]) -> None:
    assert parse_commands(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        "",
        "looks good to me",
        "/ok-to-test once the typo is fixed",  # not an approval of anything
        "/ok-to-test abc123",  # 6 digits: too short to name a commit
        "/ok-to-test <sha>",  # copied from the help text
        "/ok-to-test xyz1234",
        "/ok-to-test abc1234 def5678",
        "/ok-to-test hardware abc1234",
        "/ok-to-test hardware hardware",
        "/ok-to-test " + "a" * 41,
        "/cancel please",
        "/help me",
        "/foo",
        "/lgtm",
        "/retest.",
        "/retesting",
        "/ok-to-test:",
        "please /retest",
        "- /retest",
        "//retest",
        "/ retest",
    ],
)
def test_not_commands(body: str) -> None:
    assert parse_commands(body) == []


def test_up_to_three_spaces_of_indent() -> None:
    assert parse_commands("   /retest") == [RETEST]
    assert parse_commands("    /retest") == []
    assert parse_commands("\t/retest") == []


def test_several_commands_in_order() -> None:
    body = "Thanks!\n\n/ok-to-test abc1234\n/retest boot arm64\nsome text\n/cancel\n/help\n/retest\n"
    assert parse_commands(body) == [
        Command("ok-to-test", ("abc1234",)),
        Command("retest", ("boot arm64",)),
        CANCEL,
        HELP,
        RETEST,
    ]


def test_crlf_and_cr_line_ends() -> None:
    assert parse_commands("Looks fine.\r\n/retest build x86\r\n/cancel\r\n") == [
        Command("retest", ("build x86",)),
        CANCEL,
    ]
    assert parse_commands("/retest\r/help") == [RETEST, HELP]


@pytest.mark.parametrize(
    "body",
    [
        "> /retest",
        ">/retest",
        "  > /ok-to-test",
        "> > /ok-to-test",
        "> Please run\n> /ok-to-test abc1234\n\nI disagree.",
    ],
)
def test_quoted_replies_do_nothing(body: str) -> None:
    assert parse_commands(body) == []


def test_command_after_quote() -> None:
    body = "> someone said\n> /retest\n\n/help"
    assert parse_commands(body) == [HELP]
    # A line typed right under a quote is the commenter's own, even if Markdown would draw it inside the quote.
    assert parse_commands("> can you re-run?\n/retest") == [RETEST]


@pytest.mark.parametrize(
    "body",
    [
        "```\n/retest\n```",
        "```sh\n/retest\n```",
        "~~~\n/ok-to-test\n~~~",
        "````\n```\n/retest\n```\n````",  # a shorter fence inside does not close a longer one
        "~~~\n```\n/retest\n~~~",  # nor does the other fence character
        "  ```\n/retest\n  ```",
        "- item\n\n      ```\n/retest\n      ```",  # fence nested in a list item
        "```\n/retest",  # an unclosed fence runs to the end
        "    /retest",
        "text\n\n    /retest\n    /cancel",
        "text\n    /retest",  # a continuation line, but still indented like code
        "\t/retest",
    ],
)
def test_code_blocks_do_nothing(body: str) -> None:
    assert parse_commands(body) == []


def test_commands_after_code_blocks() -> None:
    body = "Output:\n```\n/retest\n```\n/cancel\n~~~ text\n/help\n~~~\n/retest boot\n    code\n\n/help"
    assert parse_commands(body) == [CANCEL, Command("retest", ("boot",)), HELP]


def test_fence_info_with_backtick_is_not_a_fence() -> None:
    # CommonMark: a backtick fence's info string may not hold a backtick; this line is inline code.
    assert parse_commands("``` a ` b\n/retest") == [RETEST]


def test_closing_fence_needs_only_fence_characters() -> None:
    assert parse_commands("```\n``` not a close\n/retest\n```\n/help") == [HELP]


@pytest.mark.parametrize(
    "body",
    [
        "`/retest`",
        "type `/retest` to run again",
        "type `\n/retest\n` to run again",  # a code span may cross lines
        "type ``a ` \n/retest`` here",
    ],
)
def test_inline_code_does_nothing(body: str) -> None:
    assert parse_commands(body) == []


def test_unclosed_backtick_is_literal() -> None:
    assert parse_commands("a stray ` here\n/retest") == [RETEST]
    assert parse_commands("`a`\n/retest") == [RETEST]


def test_inline_code_ends_at_paragraph() -> None:
    assert parse_commands("open `\n\n/retest\n`") == [RETEST]


@pytest.mark.parametrize(
    "body",
    [
        "<!-- /retest -->",
        "<!--\n/retest\n-->",
        "<!-- template: use\n/ok-to-test\nto approve -->",
        "<!-- unclosed\n/retest",
    ],
)
def test_html_comments_do_nothing(body: str) -> None:
    assert parse_commands(body) == []


def test_text_around_html_comments_counts() -> None:
    assert parse_commands("<!-- note -->\n/retest") == [RETEST]
    assert parse_commands("/retest <!-- which one? -->") == [RETEST]
    assert parse_commands("<!--\nhidden\n-->\n/cancel") == [CANCEL]
    assert parse_commands("<!-- a --> /help") == [HELP]


def test_code_fence_inside_html_comment_is_hidden_too() -> None:
    assert parse_commands("<!--\n```\n-->\n/retest") == [RETEST]


def test_html_comment_markers_inside_code_are_code() -> None:
    assert parse_commands("```\n<!--\n```\n/retest") == [RETEST]


def test_command_in_middle_of_paragraph() -> None:
    assert parse_commands("Fixed the typo.\n/retest\nThanks.") == [RETEST]


def test_help_lists_every_command_and_who_may_use_it() -> None:
    assert render_help() == HELP_TEXT
    for name in NAMES:
        assert f"`/{name}" in HELP_TEXT
    assert "/ok-to-test <sha>" in HELP_TEXT
    assert "/retest <job name>" in HELP_TEXT
    assert "maintain" in HELP_TEXT and "Anyone" in HELP_TEXT
    assert all(line.startswith("- ") for line in HELP_TEXT.splitlines() if line.startswith(("-", "`/")))


def test_help_text_has_no_commands_of_its_own() -> None:
    # Our own help reply, quoted back or not, must not trigger anything when read as a comment.
    assert parse_commands(HELP_TEXT) == []
