"""`git patch-id --stable` of a patch's text, in pure Python: b4's `prerequisite-patch-id:` trailers name
patches by it, and the control plane (which runs no git) matches them against the patches it recorded.

It follows git's builtin/patch-id.c line by line, quirks included, as git 2.39 has it (the first to read
a one-line hunk header as one line and to hash binary diffs by their blob ids; later gits read only
malformed hunk headers otherwise, which no diff git writes has): the id is a sum of one
SHA-1 per file, each over the file's diff lines with every whitespace byte removed, hunk line numbers
and `index` lines left out. So it identifies a diff up to whitespace, never its exact bytes: two
patches with one id may differ in meaning (spaces inside a string), which callers must weigh.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

_SPACE = frozenset(b" \t\n\v\f\r")  # C's isspace in the C locale
_OID = re.compile(rb"[0-9a-fA-F]{40}")  # get_oid_hex: 40 hex digits, whatever follows
_STRTOL = re.compile(rb"[ \t\n\v\f\r]*[+-]?[0-9]+")


def stable_patch_ids(text: bytes, *, verbatim: bool = False) -> list[str]:
    """Every id `git patch-id --stable` prints for `text` (a mail, `git show` or `git log -p` output), in order.
    `verbatim`: `git patch-id --verbatim`'s, whitespace kept (what tells two diffs of one stable id apart)."""
    lines = _lines(text)
    ids: list[str] = []
    position = 0
    while position < len(lines):
        reader = _Patch(verbatim=verbatim)
        position = reader.read(lines, position)
        if reader.length:
            ids.append(reader.result.hex())
    return ids


def stable_patch_id(text: str, *, verbatim: bool = False) -> str | None:
    """The patch id of one patch mail's body (decoded text, hashed as UTF-8); None if it holds no diff."""
    ids = stable_patch_ids(text.encode("utf-8", "surrogateescape"), verbatim=verbatim)
    return ids[0] if ids else None


def _lines(text: bytes) -> list[bytes]:
    """Lines as git's strbuf_getwholeline reads them (each with its "\\n"), cut at a NUL as C strings are."""
    parts = text.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return [line.split(b"\0", 1)[0] for line in lines]


@dataclass
class _Patch:
    """One get_one_patchid() call: reads from a position up to the end of one patch."""

    verbatim: bool = False
    result: bytearray = field(default_factory=lambda: bytearray(20))
    length: int = 0  # bytes hashed: git prints nothing for a patch of none
    before: int = -1  # lines left in the current hunk's old side; -1: in a file's header
    after: int = -1
    binary: bool = False
    old_blob: bytes = b""
    new_blob: bytes = b""
    sha: hashlib._Hash = field(default_factory=hashlib.sha1)

    def read(self, lines: list[bytes], position: int) -> int:
        while position < len(lines):
            line = lines[position]
            position += 1
            if not self._take(line):
                break
        self._flush()
        return position

    def _take(self, line: bytes) -> bool:
        """Hash one line; False where git stops reading this patch."""
        rest = line[7:] if line.startswith(b"commit ") else line[5:] if line.startswith(b"From ") else None
        if rest is None and line.startswith(b"\\ ") and len(line) > 12:
            if self.verbatim:  # "\ No newline at end of file": only a verbatim id tells it
                self.sha.update(line)
            return True
        if _OID.match(line if rest is None else rest):
            return False  # the next commit's header
        if not self.length and not line.startswith(b"diff "):
            return True  # the commit message
        if self.before == -1:
            if line.startswith((b"GIT binary patch", b"Binary files")):
                self.binary, self.before = True, 0
                self.sha.update(self.old_blob)
                self.sha.update(self.new_blob)
                self._flush()
                return True
            if line.startswith(b"index "):
                self._read_index(line)
                return True
            if line.startswith(b"--- "):
                self.before = self.after = 1
            elif not (line[:1].isalpha() and line[:1].isascii()):
                return False
        if self.binary:
            if line.startswith(b"diff "):
                self.binary, self.before = False, -1
            return True
        if self.before == 0 and self.after == 0:
            if line.startswith(b"@@ -"):
                self._scan_hunk_header(line)
                return True
            if not line.startswith(b"diff "):
                return False  # the end of the patch (a mail's "-- " signature)
            self._flush()  # the next file
            self.before = self.after = -1
        if line[:1] in (b"-", b" "):
            self.before -= 1
        if line[:1] in (b"+", b" "):
            self.after -= 1
        kept = line if self.verbatim else bytes(byte for byte in line if byte not in _SPACE)
        self.length += len(kept)
        self.sha.update(kept)
        return True

    def _flush(self) -> None:
        """Add this file's SHA-1 to the result, bytewise with carry (so the order of files does not matter)."""
        digest = self.sha.digest()
        self.sha = hashlib.sha1()
        carry = 0
        for index in range(20):
            carry += self.result[index] + digest[index]
            self.result[index] = carry & 0xFF
            carry >>= 8

    def _read_index(self, line: bytes) -> None:
        """`index OLD..NEW [MODE]`: the blob ids a binary diff is hashed by."""
        dots = line.find(b"..")
        if dots < 0:
            return
        space = line.find(b" ", dots)
        end = space if space >= 0 else len(line) - 1
        self.old_blob, self.new_blob = line[6:dots][:64], line[dots + 2 : end][:64]

    def _scan_hunk_header(self, line: bytes) -> None:
        """The old and new line counts of `@@ -a[,b] +c[,d] @@` (a missing count is 1); set one by one, as git
        does, so a malformed header leaves what it had already read."""
        self.before, position, digits = _count(line, 4)
        if digits == 0 or line[position + digits : position + digits + 2] != b" +":
            return
        self.after = _count(line, position + digits + 2)[0]


def _count(line: bytes, position: int) -> tuple[int, int, int]:
    """One side of a hunk header (`a[,b]` at `position`): its count (1 without `,b`), and where the number git
    goes on from starts and how many digits it has."""
    digits = _digits(line, position)
    if line[position + digits : position + digits + 1] != b",":
        return 1, position, digits
    position += digits + 1
    return _atoi(line, position), position, _digits(line, position)


def _digits(line: bytes, position: int) -> int:
    """strspn(line + position, "0123456789")."""
    end = position
    while line[end : end + 1].isdigit():
        end += 1
    return end - position


def _atoi(line: bytes, position: int) -> int:
    """C's atoi as glibc has it: (int) strtol, which clamps to a 64-bit long first."""
    found = _STRTOL.match(line, position)
    if found is None:
        return 0
    value = max(-(2**63), min(2**63 - 1, int(found.group()))) & 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value
