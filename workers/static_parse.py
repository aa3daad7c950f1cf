"""What the static stage's tools print, read into annotations (the shape workers/spec.py describes).

All of it is text a change controls in part (checkpatch quotes the patch, kernel-doc names its
identifiers, git names its files): file names that could not name a file in the tree are dropped
to "", and every text is shown on one printable line, cut short.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from workers.patchname import shown
from workers.spec import unsafe_path_reason

MAX_TEXT = 300
MAX_SLUG = 50

# checkpatch --terse --show-types, on a patch file: "PATCH:LINE: LEVEL:TYPE: text", LINE counting the
# patch file's lines (its --showfile gets the commit message and the sign-off's position wrong).
_CHECKPATCH = re.compile(r"^.*?:(?P<line>\d+): (?P<level>ERROR|WARNING|CHECK):(?:(?P<type>[A-Z0-9_]+):)? (?P<text>.*)$")
# kernel-doc -none: "./FILE:LINE: warning: text" (we name every file "./..."; see workers/static.py).
_KERNEL_DOC = re.compile(r"^\./(?P<file>.+?):(?P<line>\d+): (?P<level>warning|error): (?P<text>.*)$")
# git diff --check: "FILE:LINE: what." then the offending line itself, "+..." (not always: EOF blanks).
_DIFF_CHECK = re.compile(r"^(?P<file>[^+\-].*?):(?P<line>\d+): (?P<text>.+)$")
_HUNK = re.compile(r"^@@ -\d+(?:,(?P<old>\d+))? \+(?P<new>\d+)(?:,(?P<count>\d+))? @@")
_OCTAL_OR_CHAR = re.compile(rb"\\([0-7]{3}|.)")
_C_ESCAPES = {b"n": b"\n", b"t": b"\t", b'"': b'"', b"\\": b"\\", b"a": b"\a", b"b": b"\b", b"f": b"\f",
              b"r": b"\r", b"v": b"\v"}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    file: str  # "" for the commit message, or a name that could not be a path of the tree
    line: int  # 0 when the finding is about the commit or the file as a whole
    level: str  # error | warning (checkpatch's CHECK is a warning)
    source: str  # checkpatch | diff-check | kernel-doc
    check: str  # checkpatch's type, e.g. CODE_INDENT; "" when the tool names none
    text: str
    commit: str = ""

    def annotation(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "level": self.level, "source": self.source,
                "check": self.check, "text": self.text, "commit": self.commit}  # fmt: skip


def slug(subject: str) -> str:
    """A test name's part from a commit subject: lower-case words joined by '-', cut short."""
    words = re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")
    return words[:MAX_SLUG].rstrip("-") or "patch"


def patch_positions(patch: str) -> list[tuple[str, int]]:
    """(file, line in the new file) for each line of a `git format-patch` mail, index 0 being line 1.
    The mail's headers, message, diffstat and signature are ("", 0); diff headers are (file, 0)."""
    positions: list[tuple[str, int]] = []
    file, new_line, old_left, new_left, in_diff = "", 0, 0, 0, False
    for text in patch.split("\n"):
        if old_left > 0 or new_left > 0:  # inside a hunk: its counts say where it ends, not its text
            where = (file, new_line)
            if text.startswith("-"):
                old_left -= 1
            elif text.startswith("\\"):  # "\ No newline at end of file"
                where = (file, max(new_line - 1, 0))
            else:
                new_left -= 1
                old_left -= 0 if text.startswith("+") else 1
                new_line += 1
            positions.append(where)
            continue
        hunk = _HUNK.match(text)
        if text.startswith("diff --git "):
            file, in_diff = _diff_git_name(text[len("diff --git ") :]), True
        elif not in_diff:  # the mail's headers, message and diffstat
            pass
        elif text.startswith("+++ ") and text[4:] != "/dev/null":
            file = _side_name(text[4:], "b/")
        elif text.startswith("--- ") and text[4:] != "/dev/null":
            file = file or _side_name(text[4:], "a/")
        elif hunk:
            new_line = int(hunk["new"])
            new_left = int(hunk["count"] if hunk["count"] is not None else 1)
            old_left = int(hunk["old"] if hunk["old"] is not None else 1)
        elif text == "-- ":  # format-patch's signature: what follows is no file's
            file, in_diff = "", False
        positions.append((file, 0) if file else ("", 0))
    return positions


def parse_checkpatch(output: str, patch: str, commit: str) -> list[Finding]:
    """checkpatch's terse findings on one patch, placed in the tree's files."""
    positions = patch_positions(patch)
    found = []
    for text in output.split("\n"):
        match = _CHECKPATCH.match(text)
        if not match:
            continue
        number = int(match["line"])
        file, line = positions[number - 1] if 0 < number <= len(positions) else ("", 0)
        level = "error" if match["level"] == "ERROR" else "warning"
        found.append(Finding(safe_file(file), line, level, "checkpatch", match["type"] or "",
                             shown(match["text"], MAX_TEXT), commit))  # fmt: skip
    return found


def parse_kernel_doc(output: str) -> list[Finding]:
    """kernel-doc's findings; all of them warn (kernel-doc's "errors" do not break a build either)."""
    found = []
    for text in output.split("\n"):
        match = _KERNEL_DOC.match(text)
        if match:
            words = shown(match["text"], MAX_TEXT)
            found.append(Finding(safe_file(match["file"]), int(match["line"]), "warning", "kernel-doc", "",
                                 words if match["level"] == "warning" else f"error: {words}"))  # fmt: skip
    return found


def parse_diff_check(output: str) -> list[Finding]:
    """`git diff --check`'s findings: every one is an error."""
    found = []
    for text in output.split("\n"):
        match = _DIFF_CHECK.match(text)
        if match:
            file = unquote(match["file"]) if match["file"].startswith('"') else match["file"]
            found.append(Finding(safe_file(file), int(match["line"]), "error", "diff-check", "",
                                 shown(match["text"].rstrip("."), MAX_TEXT)))  # fmt: skip
    return found


def new_findings(head: list[Finding], base: list[Finding]) -> list[Finding]:
    """The head's findings the base does not have, by (file, text): a line shift keeps a finding old."""
    left: dict[tuple[str, str], int] = {}
    for finding in base:
        left[(finding.file, finding.text)] = left.get((finding.file, finding.text), 0) + 1
    fresh = []
    for finding in head:
        key = (finding.file, finding.text)
        if left.get(key, 0) > 0:
            left[key] -= 1
        else:
            fresh.append(finding)
    return fresh


def safe_file(name: str) -> str:
    """The name when it can be a file of the tree; "" otherwise (it then names nothing)."""
    return name if name and unsafe_path_reason(name) is None and name.isprintable() else ""


def unquote(name: str) -> str:
    """A C-quoted name as git prints it ("a\\tb", octal bytes of UTF-8); unquoted names as they are."""
    if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
        return name
    raw = name[1:-1].encode("utf-8", "surrogateescape")

    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        return bytes([int(code, 8) & 0xFF]) if len(code) == 3 else _C_ESCAPES.get(code, code)

    return _OCTAL_OR_CHAR.sub(one, raw).decode("utf-8", "replace")


def _side_name(text: str, prefix: str) -> str:
    name = unquote(text.rstrip("\t"))
    return name[len(prefix) :] if name.startswith(prefix) else name


def _diff_git_name(rest: str) -> str:
    """The new name of `diff --git a/X b/X`; "" when the names are ambiguous (the +++ line says it later)."""
    if rest.startswith('"'):
        quoted = re.match(r'^("(?:[^"\\]|\\.)*")\s+(.*)$', rest)
        return _side_name(quoted.group(2), "b/") if quoted else ""
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[:half].startswith("a/") and rest[half + 1 :].startswith("b/"):
        return rest[half + 3 :]
    return ""
