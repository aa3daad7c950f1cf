"""Slash commands (/ok-to-test, /retest, /cancel, /help) read from comment text, outside quotes and code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

CommandName = Literal["ok-to-test", "retest", "cancel", "help"]
NAMES: tuple[CommandName, ...] = ("ok-to-test", "retest", "cancel", "help")

_COMMAND = re.compile(r"/([A-Za-z][A-Za-z0-9-]*)(?:[ \t]+(.*))?")
_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_SHA_PREFIX = re.compile(r"[0-9a-fA-F]{7,40}")
_BACKTICKS = re.compile(r"`+")


@dataclass(frozen=True)
class Command:
    name: CommandName
    args: tuple[str, ...]


HELP_TEXT = """\
labgate commands (one per line, at the start of a line of a new comment; quoted text and code are ignored):

- `/ok-to-test` — run CI for the current head of this change, whose author is not trusted yet. \
Only maintainers (people with write, maintain or admin permission on the repository) may approve.
- `/ok-to-test <sha>` — the same, bound to the commit `<sha>` (at least 7 hex digits), so a later push \
is not approved by accident.
- `/ok-to-test hardware`, `/ok-to-test <sha> hardware` — approve the run on real boards too, not only QEMU. \
Maintainers only.
- `/retest` — run the failed jobs of the current head again; `/retest <job name>` runs that one job. \
The author (once trusted or approved) and maintainers.
- `/cancel` — cancel the running pipeline of this change. The author and maintainers.
- `/help` — show this list. Anyone.

Each approval covers one commit: a new push needs a new `/ok-to-test`.
"""


def render_help() -> str:
    """The reply to `/help`: markdown list of the commands and who may use them."""
    return HELP_TEXT


def parse_commands(body: str) -> list[Command]:
    """Commands in a comment, in order; unknown or misused ones are left out."""
    commands: list[Command] = []
    paragraph: list[tuple[str, bool]] = []  # (line, may hold a command)
    fence: str | None = None
    in_comment = False
    for raw in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if fence is not None:
            if _closes_fence(raw, fence):
                fence = None
            continue
        line, in_comment = _strip_html_comments(raw, in_comment)
        stripped = line.strip()
        indent = _indent(line)
        opener = _FENCE_OPEN.fullmatch(stripped)
        # Fences count at any indentation: one nested in a list item still hides what it holds.
        if opener and not (opener.group(1)[0] == "`" and "`" in opener.group(2)):
            commands += _commands_in(paragraph)
            paragraph, fence = [], opener.group(1)
        elif not stripped or stripped.startswith(">"):
            # A quoted reply repeats someone else's words, commands included: never act on them.
            commands += _commands_in(paragraph)
            paragraph = []
        elif indent >= 4 and not paragraph:
            pass  # an indented code block (4+ columns after a blank line)
        else:
            paragraph.append((line, indent < 4))
    return commands + _commands_in(paragraph)


def _indent(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


def _closes_fence(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


def _strip_html_comments(line: str, in_comment: bool) -> tuple[str, bool]:
    """Drop `<!-- ... -->` text; an unclosed one hides the rest of the body, as Markdown renderers do."""
    out: list[str] = []
    while True:
        if in_comment:
            end = line.find("-->")
            if end < 0:
                return "".join(out), True
            line, in_comment = line[end + 3 :], False
        start = line.find("<!--")
        if start < 0:
            out.append(line)
            return "".join(out), False
        out.append(line[:start])
        line, in_comment = line[start + 4 :], True


def _commands_in(paragraph: list[tuple[str, bool]]) -> list[Command]:
    """Commands on the lines of one paragraph that do not start inside an inline code span
    (a span may cross lines, so it is matched over the whole paragraph)."""
    text = "\n".join(line for line, _ in paragraph)
    spans = _code_spans(text)
    found = []
    offset = 0
    for line, may_command in paragraph:
        start = offset + len(line) - len(line.lstrip())
        offset += len(line) + 1
        if not may_command or any(lo <= start < hi for lo, hi in spans):
            continue
        command = _parse_line(line.strip())
        if command is not None:
            found.append(command)
    return found


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Inline code spans as CommonMark matches them: a backtick run closes at the next run of the same length;
    an opener that never closes is literal text."""
    runs = [(m.start(), m.end()) for m in _BACKTICKS.finditer(text)]
    # The next run of each length, found in one backward pass: comments come from anyone, so stay linear.
    next_same: list[int | None] = [None] * len(runs)
    last_of_length: dict[int, int] = {}
    for index in range(len(runs) - 1, -1, -1):
        length = runs[index][1] - runs[index][0]
        next_same[index] = last_of_length.get(length)
        last_of_length[length] = index
    spans = []
    index = 0
    while index < len(runs):
        closer = next_same[index]
        if closer is None:
            index += 1
            continue
        spans.append((runs[index][0], runs[closer][1]))
        index = closer + 1
    return spans


def _parse_line(line: str) -> Command | None:
    match = _COMMAND.fullmatch(line)
    if match is None:
        return None
    name = match.group(1).lower()
    rest = (match.group(2) or "").strip()
    if name == "ok-to-test":
        return _parse_ok_to_test(rest.split())
    if name == "retest":
        # A job name may contain spaces ("build arm64 defconfig"): the rest of the line is one argument.
        return Command("retest", (rest,) if rest else ())
    if name == "cancel" and not rest:
        return Command("cancel", ())
    if name == "help" and not rest:
        return Command("help", ())
    return None


def _parse_ok_to_test(words: list[str]) -> Command | None:
    # Anything but the documented forms approves nothing: "/ok-to-test once the typo is fixed" is not an approval.
    hardware: tuple[str, ...] = ()
    if words and words[-1].lower() == "hardware":
        words, hardware = words[:-1], ("hardware",)
    if not words:
        return Command("ok-to-test", hardware)
    if len(words) == 1 and _SHA_PREFIX.fullmatch(words[0]):
        return Command("ok-to-test", (words[0].lower(), *hardware))
    return None
