"""The paths a patch mail's diff touches, read as generously as git am could read them (pure).

A claim rests on these paths: MAINTAINERS makes a sender a maintainer of a series only when it lists
them for every path the series touches (bot/intake/base_maintainers.py). So a path git would change
must never be missed, and a path read where git would read none only costs a claim:
- every part of the mail is read as sent and with its transfer encoding undone (git am decodes base64
  and quoted-printable; a soft line break can hide or make a header line in either reading);
- names come from `diff --git` lines (every split of one, as a name may hold a space) and `---`/`+++`
  lines, their first component dropped as `git apply -p1` does whatever it is ("a/", "i/", "orig/"),
  and from `rename`/`copy` `from`/`to` lines, which name a path by themselves whatever the `diff --git`
  line says; C-quoted names are unquoted, repeated "/" squashed;
- a header line anywhere counts, also in a commit message (git am ends the message there).
"""

from __future__ import annotations

import binascii
import email
import email.policy
import quopri
import re
from collections.abc import Iterable

MAX_PATHS = 10_000  # a series touching more claims nothing: its paths are not all read
_SIDE = re.compile(r"^(?:---|\+\+\+)[ \t]+(\S.*?)(?:\t.*)?$")
_EXTENDED = re.compile(r"^(?:rename|copy) (?:from|to) (.+)$")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(set(range(256)) - set(_BASE64_ALPHABET))
_OCTAL = re.compile(r"\\([0-7]{1,3})|\\(.)")
_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def mail_texts(raw: bytes) -> list[str]:
    """The mail as sent, and read through every transfer encoding git am might undo: each part's as its
    headers say (Python's reading), and the whole mail and each part as quoted-printable and as base64
    whatever they say (git's reading of the headers may differ: of two Content-Transfer-Encoding
    headers, Python takes the first and git the last)."""
    texts = [raw.decode("utf-8", "replace"), *_decodings(raw)]
    for part in email.message_from_bytes(raw, policy=email.policy.compat32).walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            texts.append(payload.decode("utf-8", "replace"))
        undecoded = part.get_payload(decode=False)
        if isinstance(undecoded, str):
            texts.extend(_decodings(undecoded.encode("utf-8", "surrogateescape")))
    return texts


def _decodings(data: bytes) -> list[str]:
    """`data` as quoted-printable, and as base64 the way git mailinfo decodes it: line by line, each on
    its own, characters outside the alphabet skipped, a line's last incomplete group giving what it can."""
    lines = []
    for line in data.split(b"\n"):
        kept = line.translate(None, _NOT_BASE64)
        kept = kept[: len(kept) - 1] if len(kept) % 4 == 1 else kept
        lines.append(binascii.a2b_base64(kept + b"=" * (-len(kept) % 4)) if kept else b"")
    return [quopri.decodestring(data).decode("utf-8", "replace"), b"".join(lines).decode("utf-8", "replace")]


def touched_paths(diffs: Iterable[str]) -> frozenset[str] | None:
    """Every path the diffs may touch (a rename both), repository-relative as MAINTAINERS' F: patterns
    are matched against; None when there are more than MAX_PATHS (not all of them were read)."""
    found: set[str] = set()
    for text in diffs:
        for line in text.split("\n"):
            line = line.removesuffix("\r")
            if line.startswith("diff --git "):
                found.update(_git_header_names(line.removeprefix("diff --git ")))
            elif side := _SIDE.match(line):
                # git also reads a traditional "--- name date" as the name before the date.
                for name in {side[1], side[1].split()[0]}:
                    found.update(_without_first_component(_name(name)))
            elif extended := _EXTENDED.match(line):
                found.add(_name(extended[1]))
            if len(found) > MAX_PATHS:
                return None
    return frozenset(_squashed(path) for path in found if path and path not in ("dev/null", "/dev/null"))


def _git_header_names(rest: str) -> set[str]:
    """The names a `diff --git` line may give, whatever its prefixes (git drops the first component
    of each: "a/", "b/", or "i/", "w/" under diff.mnemonicPrefix): where a name holds a space the line
    does not say where the first ends, so every split is taken."""
    names: set[str] = set()
    for index, char in enumerate(rest):
        if char == " ":
            for half in (rest[:index], rest[index + 1 :]):
                names.update(_without_first_component(_name(half)))
    return names


def _name(text: str, quote: str | None = None) -> str:
    """A name as git reads it: C-quoted ("...") unquoted, else as written."""
    if quote is None and len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text, quote = text[1:-1], '"'
    if not quote:
        return text
    data = bytearray()
    position = 0
    for match in _OCTAL.finditer(text):
        data += text[position : match.start()].encode("utf-8", "surrogateescape")
        if match[1] is not None:
            data.append(int(match[1], 8) & 0xFF)
        else:
            data += _C_ESCAPES.get(match[2], match[2]).encode("utf-8", "surrogateescape")
        position = match.end()
    data += text[position:].encode("utf-8", "surrogateescape")
    return data.decode("utf-8", "replace")


def _without_first_component(name: str) -> set[str]:
    """What `git apply -p1` keeps (all after the first "/"), and, for a name it leaves absolute or
    with nothing to drop, the name without leading "/" too: more names cost a claim, never hide one."""
    if name == "/dev/null" or "/" not in name:
        return {name}
    kept = name.split("/", 1)[1]
    return {kept, kept.lstrip("/")}


def _squashed(path: str) -> str:
    return re.sub("/+", "/", path)
