"""Patch safety checks (KernelCI's rules): on the mails before `git am`, and on what it applied after."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email import errors as mail_errors
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32

from workers.errors import InfraError, UserError

MAX_PATCH_BYTES = 8 * 1024 * 1024
MAX_SHOWN = 100  # characters of a path or mode a refusal quotes
REGULAR_MODES = ("100644", "100755")
_MODE_KINDS = {"120000": "a symlink", "160000": "a submodule link (gitlink)"}
_MODE_REFUSALS = {"120000": "symlinks are not accepted", "160000": "submodules are not accepted"}

# The extended header lines git apply reads after `diff --git` (apply.c's optable); the header
# ends at the first other line, so a "new mode ..." line in a commit message is not a mode.
_MODE_PREFIXES = ("old mode ", "new mode ", "new file mode ", "deleted file mode ")
_NAME_PREFIXES = ("rename from ", "rename to ", "rename old ", "rename new ", "copy from ", "copy to ")
_HEADER_PREFIXES = (*_MODE_PREFIXES, *_NAME_PREFIXES, "--- ", "+++ ", "similarity index ", "dissimilarity index ",
                    "index ")  # fmt: skip
# A whole path component "..", or ".git" in any case (case-folding filesystems make .GIT the same);
# loosely, whitespace ends a component too.
_COMPONENT = {
    loose: {
        "..": re.compile(rf"(?:^|{sep})\.\.(?={sep}|\Z)"),
        ".git": re.compile(rf"(?:^|{sep})\.git(?={sep}|\Z)", re.IGNORECASE),
    }
    for loose, sep in ((False, "/"), (True, r"[/\s]"))
}
_C_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}

_ENCODINGS = ("7bit", "8bit", "binary", "base64", "quoted-printable")
_DECODED = ("base64", "quoted-printable")
_BASE64_LINE = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|$)")
_GIT_MIME_HEADER = re.compile(r"(?im)^(content-transfer-encoding|content-type):(\s[^\n]*(?:\n[ \t][^\n]*)*)")
# A bare diff has no header block at all, and a stray "From " line is harmless: git reads both alike.
_HARMLESS_DEFECTS = (mail_errors.MissingHeaderBodySeparatorDefect, mail_errors.MisplacedEnvelopeHeaderDefect)
_PARSER = BytesParser(policy=compat32)  # compat32 keeps header values raw, as git mailinfo sees them


def check_patch_size(name: str, size: int) -> None:
    """Refuse a patch over the cap; the intake calls this before it stores anything."""
    if size > MAX_PATCH_BYTES:
        raise UserError(f"{name}: {size} bytes is over the {MAX_PATCH_BYTES} byte cap")


def check_patch(name: str, data: bytes) -> None:
    """Raise UserError naming the patch, where, and the first rule it breaks.

    The rules run on the raw bytes (file line numbers), then on each mail as git mailsplit and
    mailinfo would decode it, so base64 or quoted-printable cannot hide a diff from them.
    """
    check_patch_size(name, len(data))
    _check_diff_text(name, data.decode("utf-8", "surrogateescape"))
    for number, mail in enumerate(split_mails(data), start=1):
        for where, payload, charset in _decoded_parts(name, number, mail):
            for text in _views(payload, charset):
                _check_diff_text(where, text)


def check_applied(raw_numstat_z: str, *, allow_binary: bool = False, allow_symlinks: bool = False) -> None:
    """Refuse what `git am` really wrote, from `git diff --raw --numstat -z --no-renames <base> <head>`.

    With -z a --raw record is ":<old mode> <new mode> <old sha> <new sha> <status>" NUL <path> NUL
    (two paths for a rename or copy) and a --numstat record is "<added>\\t<deleted>\\t<path>" NUL
    (an empty path, then two paths, for a rename or copy); "-\\t-" marks a binary file.
    """
    fields = iter(raw_numstat_z.split("\0"))
    for field in fields:
        if not field:
            continue
        if field.startswith(":"):
            new_mode, status = _raw_record(field)
            paths = [_next_path(fields) for _ in range(2 if status[0] in "RC" else 1)]
            for path in paths:
                _check_applied_path(path)
            _check_applied_mode(paths[-1], new_mode, allow_symlinks)
        else:
            added, deleted, path = _numstat_record(field)
            paths = [path] if path else [_next_path(fields), _next_path(fields)]
            for path in paths:
                _check_applied_path(path)
            if (added, deleted) == ("-", "-") and not allow_binary:
                raise UserError(f"after applying: {_shown(paths[-1])} is a binary file; binary files are not accepted")


# --- the diff rules, on one text as git apply reads it


def _check_diff_text(origin: str, text: str) -> None:
    in_header = False
    for number, raw_line in enumerate(text.split("\n"), start=1):  # git splits at \n only, not at \x0b, \x1c, ...
        line = raw_line.removesuffix("\r")  # git reads "100644\r" as 100644: CR is whitespace to it
        problem = _line_problem(line, in_header)
        if problem:
            raise UserError(f"{origin}:{number}: {problem}")
        in_header = line.startswith("diff --git ") or (in_header and line.startswith(_HEADER_PREFIXES))


def _line_problem(line: str, in_header: bool) -> str | None:
    if "\0" in line:  # a text hunk can carry NUL bytes into the tree: a binary file by another road
        return "NUL byte: binary content is not accepted"
    if line.startswith("diff --git "):
        return _diff_git_problem(line.removeprefix("diff --git "))
    if line.startswith(("--- ", "+++ ")):  # checked outside git headers too: traditional diffs have only these
        name = _name(line[4:])
        return "malformed quoted path" if name is None else _prefixed_path_problem(name)
    if line == "GIT binary patch" or (line.startswith(("Binary files ", "Files ")) and line.endswith(" differ")):
        return "binary patches are not accepted"
    if not in_header:
        return None
    for prefix in _MODE_PREFIXES:
        if line.startswith(prefix):
            return _mode_problem(line.removeprefix(prefix))
    if line.startswith("index "):
        mode = _index_mode(line.removeprefix("index "))
        return None if mode is None else _mode_problem(mode)
    for prefix in _NAME_PREFIXES:
        if line.startswith(prefix):
            name = _name(line.removeprefix(prefix))
            return "malformed quoted path" if name is None else _path_problem(name, loose=True)
    return None


def _mode_problem(mode: str) -> str | None:
    """Only the two regular file modes, spelled exactly: git reads "0120000" or "120000 " as a symlink."""
    if mode in REGULAR_MODES:
        return None
    if mode in _MODE_KINDS:
        return f"mode {mode} is {_MODE_KINDS[mode]}; {_MODE_REFUSALS[mode]}"
    shown = mode[:MAX_SHOWN] if re.fullmatch(r"[0-9]+", mode) else _quoted(mode)
    return f"mode {shown} is not a regular file mode (only 100644 and 100755 are accepted)"


def _index_mode(rest: str) -> str | None:
    """The mode of an `index <old>..<new> <mode>` line: after "..", the first space (where git apply looks)."""
    dots = rest.find("..")
    space = rest.find(" ", dots + 2) if dots >= 0 else -1
    return None if space < 0 else rest[space + 1 :]


def _diff_git_problem(rest: str) -> str | None:
    if '"' not in rest:
        # Unquoted names with spaces are ambiguous: git picks a split at a space where both halves
        # match. Checking every "/"- or space-separated piece covers every split git could pick.
        if "//" in rest or re.search(r"(?:^|\s)/", rest):
            return f"path {_quoted(rest)} leaves the tree"
        return _prefixed_path_problem(rest)
    if rest.startswith('"'):
        quoted = _unquote(rest)
        first, second = (None, None) if quoted is None else (quoted[0], _name(quoted[1].lstrip()))
    else:
        quote = rest.index('"')
        first, second = rest[:quote].rstrip(), _name(rest[quote:])
    if first is None or second is None:
        return "malformed quoted path"
    return _prefixed_path_problem(first) or _prefixed_path_problem(second)


def _prefixed_path_problem(name: str) -> str | None:
    """Check a name as `git apply -p1` takes it: without its first component ("a/", "b/")."""
    if name == "/dev/null":
        return None
    slash = name.find("/")
    return _path_problem(name[slash + 1 :] if slash > 0 else name, loose=True)


def _name(text: str) -> str | None:
    """A file name as a patch writes it, C-unquoted if git quoted it; None when the quoting is broken."""
    quoted = _unquote(text) if text.startswith('"') else (text, "")
    return None if quoted is None else quoted[0]


def _unquote(text: str) -> tuple[str, str] | None:
    """git's C-style quoting ("a/\\303\\251\\n"): the name and what follows the closing quote."""
    out = bytearray()
    index = 1
    while index < len(text):
        char = text[index]
        if char == '"':
            return out.decode("utf-8", "surrogateescape"), text[index + 1 :]
        escape = text[index + 1 : index + 2]
        if char != "\\":
            out += char.encode("utf-8", "surrogateescape")
            index += 1
        elif escape in _C_ESCAPES:
            out.append(_C_ESCAPES[escape])
            index += 2
        elif re.fullmatch(r"[0-3][0-7]{2}", text[index + 1 : index + 4]):
            out.append(int(text[index + 1 : index + 4], 8))
            index += 4
        else:
            return None
    return None


def _path_problem(path: str, *, loose: bool) -> str | None:
    """Why a path may not be written, or None. Loose: patch text, where git may end a name at whitespace."""
    if path.startswith("/") or (".." in path and _COMPONENT[loose][".."].search(path)):
        return f"path {_quoted(path)} leaves the tree"
    if ".git" in path.lower() and _COMPONENT[loose][".git"].search(path):
        return f"path {_quoted(path)} touches git metadata"
    if re.search("[\udc80-\udcff]", path):  # bytes that surrogateescape could not read as UTF-8
        return f"path {_quoted(path)} is not UTF-8"
    return None


# --- mails, split and decoded the way git mailsplit and git mailinfo do


def split_mails(data: bytes) -> list[bytes]:
    """The mails git mailsplit makes of `git am`'s input: one per "From " line, or one bare mail."""
    parts = data.lstrip(b" \t\n\v\f\r").split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    mbox = bool(lines) and _is_from_line(lines[0])
    mails: list[list[bytes]] = []
    for line in lines:
        if not mails or (mbox and _is_from_line(line)):
            mails.append([])
        mails[-1].append(line[:-2] + b"\n" if line.endswith(b"\r\n") else line)
    return [b"".join(mail) for mail in mails]


def _is_from_line(line: bytes) -> bool:
    """git mailsplit's test: "From ", then something like a time ("12:34:56") and a year after 1990."""
    if len(line) < 20 or not line.startswith(b"From "):
        return False
    colon = line.rfind(b":", 5, len(line) - 2)
    if colon < 0:
        return False
    digits = line[colon - 4 : colon - 3] + line[colon - 2 : colon] + line[colon + 1 : colon + 3]
    year = re.match(rb"\s*([+-]?[0-9]+)", line[colon + 3 :])
    return len(digits) == 5 and digits.isdigit() and year is not None and int(year.group(1)) > 90


def _decoded_parts(name: str, number: int, mail: bytes) -> Iterator[tuple[str, bytes, str | None]]:
    """(where, decoded bytes, charset) of each part; git mailinfo passes every part on, attachments too."""
    message = _PARSER.parsebytes(mail)
    problem = _structure_problem(message) or _git_header_problem(mail, message)
    if problem:
        raise UserError(f"{name} (mail {number}): {problem}")
    leaves = [part for part in message.walk() if not part.is_multipart()]
    for index, part in enumerate(leaves, start=1):
        encoding = _encoding(part)
        where = f"{name} (mail {number}, " + (f"{encoding} body)" if part is message else f"part {index}, {encoding})")
        # The encoded text; only base64 and quoted-printable use it, and only ASCII in it is valid there.
        raw = str(part.get_payload()).encode("utf-8", "surrogateescape")
        problem = _encoding_problem(encoding, raw)
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""  # a leaf always decodes to bytes
        if not problem and _defects(part):  # decoding records its own defects, e.g. base64 padding
            problem = f"cannot be decoded ({', '.join(_defects(part))})"
        if not problem and index < len(leaves) and _joins_next(encoding, raw, payload):
            problem = "does not end with a newline, so git would join its last line to the next part's first"
        if problem:
            raise UserError(f"{where}: {problem}")
        yield where, payload, part.get_content_charset()


def _structure_problem(message: Message) -> str | None:
    """One level of parts, one of each content header, and only encodings both git and Python know."""
    for part in message.walk():
        if _defects(part):
            return f"malformed MIME ({', '.join(_defects(part))})"
        if part.get_content_maintype() == "message" or (part is not message and part.is_multipart()):
            return "nested MIME parts and attached mails are not accepted"
        for header in ("content-type", "content-transfer-encoding"):
            if len(part.get_all(header, [])) > 1:
                return f"more than one {header} header in one part"  # git takes the last, Python the first
        if _encoding(part) not in _ENCODINGS:
            return f"Content-Transfer-Encoding {_quoted(_encoding(part))} is not one of {', '.join(_ENCODINGS)}"
    return None


def _git_header_problem(mail: bytes, message: Message) -> str | None:
    """Refuse what git mailinfo's heuristics would read differently from the email package.

    git takes these headers in any block it thinks holds headers, unfolds them, decodes on finding
    "base64" anywhere in the value, takes "boundary=" anywhere in a Content-Type, and takes any line
    that starts with "--<boundary>" as one. So every such line must mean the same to both.
    """
    text = mail.decode("utf-8", "surrogateescape")
    encodings, boundaries = [], []
    for match in _GIT_MIME_HEADER.finditer(text):
        header, value = match.group(1).lower(), " ".join(match.group(2).split())
        if "=?" in value:  # git decodes RFC 2047 words in these headers before it reads them
            return f"encoded word in a {header} header"
        if header == "content-transfer-encoding":
            if value.lower() not in _ENCODINGS:
                return f"Content-Transfer-Encoding {_quoted(value)} is not one of {', '.join(_ENCODINGS)}"
            encodings.append(value.lower())
        elif "boundary=" in value.lower():
            rest = value[value.lower().index("boundary=") + len("boundary=") :]
            boundaries.append(rest[1:].split('"')[0] if rest.startswith('"') else re.split(r"[; \t]", rest)[0])
    parts = list(message.walk())
    if sorted(boundaries) != sorted(str(part.get_boundary()) for part in parts if part.is_multipart()):
        return f"MIME boundaries {boundaries} would split the mail differently in git"
    for boundary in boundaries:
        exact = re.compile(re.escape(f"--{boundary}") + r"(?:--)?[ \t]*")
        for line in text.split("\n"):
            if line.startswith(f"--{boundary}") and not exact.fullmatch(line):
                return f"line {line[:60]!r} is a MIME boundary to git but not to the email package"
    # git decodes after any such header line it meets, so each must be a leaf's header to Python too.
    decoded_leaves = [part for part in parts if not part.is_multipart() and _encoding(part) in _DECODED]
    if sum(encoding in _DECODED for encoding in encodings) != len(decoded_leaves):
        return "a Content-Transfer-Encoding line outside the MIME part headers"
    return None


def _encoding(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "7bit")).lower()


def _defects(part: Message) -> list[str]:
    return [type(defect).__name__ for defect in part.defects if not isinstance(defect, _HARMLESS_DEFECTS)]


def _encoding_problem(encoding: str, raw: bytes) -> str | None:
    """Only what git (line by line) and the email package (whole part) decode to the same bytes."""
    lines = raw.split(b"\n")
    if encoding == "base64":
        # git decodes each line alone and skips "=" and stray bytes; the email package decodes the
        # whole part and stops at padding. They agree on whole clean lines, padded only at the end.
        filled = [number for number, line in enumerate(lines, start=1) if line]
        for number in filled:
            line = lines[number - 1]
            if not _BASE64_LINE.fullmatch(line) or (line.endswith(b"=") and number != filled[-1]):
                return f"cannot be decoded: line {number} is not clean base64"
    if encoding == "quoted-printable":
        for number, line in enumerate(lines, start=1):
            if _QP_BAD_ESCAPE.search(line):
                return f'cannot be decoded: line {number} has an "=" that is not an escape'
    return None


def _joins_next(encoding: str, raw: bytes, payload: bytes) -> bool:
    """Whether git would run this part's last line into the next part's first (it keeps no line apart)."""
    if encoding == "base64":
        return bool(payload) and not payload.endswith(b"\n")
    return encoding == "quoted-printable" and raw.rstrip(b"\n").endswith(b"=")


def _views(payload: bytes, charset: str | None) -> Iterator[str]:
    """The text in its declared charset (readable names), then byte for byte, which is what git applies."""
    exact = payload.decode("utf-8", "surrogateescape")
    try:
        declared = payload.decode(charset) if charset else exact
    except (LookupError, UnicodeDecodeError):
        declared = exact  # git ignores the charset of a patch, so a wrong one is no reason to refuse
    if declared != exact:
        yield declared
    yield exact


# --- what git applied


def _raw_record(field: str) -> tuple[str, str]:
    parts = field[1:].split(" ")
    if len(parts) != 5 or not parts[4]:
        raise InfraError(f"unexpected git diff --raw record {field!r}")
    return parts[1], parts[4]


def _numstat_record(field: str) -> tuple[str, str, str]:
    parts = field.split("\t", 2)
    if len(parts) != 3:
        raise InfraError(f"unexpected git diff --numstat record {field!r}")
    return parts[0], parts[1], parts[2]


def _next_path(fields: Iterator[str]) -> str:
    path = next(fields, "")
    if not path:
        raise InfraError("git diff -z output ends inside a record")
    return path


def _check_applied_path(path: str) -> None:
    problem = _path_problem(path, loose=False)
    if problem:
        raise UserError(f"after applying: {problem}")


def _check_applied_mode(path: str, mode: str, allow_symlinks: bool) -> None:
    if mode in (*REGULAR_MODES, "000000") or (mode == "120000" and allow_symlinks):
        return
    if mode in _MODE_KINDS:
        raise UserError(f"after applying: {_shown(path)} is {_MODE_KINDS[mode]} (mode {mode}); {_MODE_REFUSALS[mode]}")
    raise UserError(f"after applying: {_shown(path)} has mode {mode} (only 100644 and 100755 are accepted)")


def _shown(path: str) -> str:
    if not path.isprintable() or path.strip() != path:
        return _quoted(path)
    return path if len(path) <= MAX_SHOWN else path[:MAX_SHOWN] + "…"


def _quoted(text: str) -> str:
    """repr() of a name a patch chose, cut short: the refusal must fit a one-line check description."""
    return repr(text) if len(text) <= MAX_SHOWN else repr(text[:MAX_SHOWN]) + "…"
