"""A patch series from its decoded mails: cover letter, patches in order, b4 trailers, which version supersedes.

Everything here comes from mail anyone can send, so nothing is guessed: a missing or doubled patch,
totals or versions that disagree, a trailer given twice are named in `problems` (and `missing`,
`duplicates`) for the caller to refuse on. Decoding the MIME is the caller's (the email package
does I/O-free work, but bot/core keeps to its own imports); this takes headers and body as text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum

from bot.core.subjects import UNREADABLE_VERSION, SubjectTags, parse_subject

__all__ = ["IdentityGrade", "Mail", "Sender", "Series", "SeriesMail", "SubjectTags", "Trailers",
           "parse_sender", "parse_series", "parse_subject", "supersedes", "version_identity"]  # fmt: skip

MAX_MAILS = 1000
MAX_PREREQUISITES = 100
MAX_HEADER = 998  # RFC 5322's line limit: a longer message id or date is not one
_ADDRESS = re.compile(r"[^\s<>()@,;:\"\[\]\\]+@[^\s<>()@,;:\"\[\]\\]+")
_MESSAGE_ID = re.compile(r"<([^<>\s]{1,996})>")
_DATE = re.compile(
    r"(?:[A-Za-z]{3},\s*)?([0-9]{1,2})\s+([A-Za-z]{3})\s+([0-9]{4})\s+([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?"
    r"(?:\s+([+-][0-9]{4}|[A-Za-z]{1,5}))?(?:\s+\(.{0,64}\))?\s*"
)
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
# RFC 5322 4.3's obsolete zone names; any other name is an unknown zone, which it says to read as UTC.
_ZONES = {"ut": 0, "gmt": 0, "z": 0, "edt": -4, "est": -5, "cdt": -5, "cst": -6, "mdt": -6, "mst": -7, "pdt": -7,
          "pst": -8}  # fmt: skip
_TRAILER = re.compile(r"(change-id|base-commit|prerequisite-patch-id|prerequisite-change-id|prerequisite-message-id):"
                      r"[ \t]*(\S+)[ \t]*")  # fmt: skip
_TRAILER_VALUE = {
    "change-id": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"),
    "base-commit": re.compile(r"[0-9a-f]{7,64}"),
    "prerequisite-patch-id": re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}"),
    "prerequisite-change-id": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(?::v[0-9]{1,3})?"),  # b4: id:vN
    "prerequisite-message-id": re.compile(r"<?[^<>\s]{1,996}>?"),
}


class IdentityGrade(IntEnum):
    """How far a series' sender is proven, in order: only a higher or equal grade may supersede."""

    UNVERIFIED = 0  # From: is whatever the sender typed
    MAINTAINER_CLAIM = 1  # From: is an M:/R: address for the paths (or allowlisted), but only claimed
    VERIFIED = 2  # a signature we checked (patatt against the tree's keyring, or DKIM) proves From:

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Mail:
    """One decoded mail: header (name, value) pairs in order, RFC 2047 words decoded, and the body text."""

    headers: tuple[tuple[str, str], ...]
    body: str

    def header(self, name: str) -> str | None:
        """The first header of that name (case-insensitive), unfolded."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return " ".join(value.split())
        return None


@dataclass(frozen=True)
class Sender:
    name: str
    address: str  # lowercased: mail systems compare the domain case-blind, and lists treat the local part so


@dataclass(frozen=True)
class SeriesMail:
    """A mail of the series and what its headers say."""

    subject: SubjectTags
    message_id: str | None  # with its angle brackets, as In-Reply-To and References want it
    in_reply_to: str | None
    sender: Sender | None
    date: datetime | None
    has_diff: bool
    mail: Mail


@dataclass(frozen=True)
class Trailers:
    """b4's series trailers (git format-patch --base writes the first two, b4 prep the rest)."""

    change_id: str | None = None
    base_commit: str | None = None
    prerequisite_patch_ids: tuple[str, ...] = ()
    prerequisite_change_ids: tuple[str, ...] = ()
    prerequisite_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Series:
    cover: SeriesMail | None
    patches: tuple[SeriesMail, ...]  # by index; mails of one index in the order they came
    version: int  # UNREADABLE_VERSION (0) when the mails disagree or say nonsense
    total: int | None  # None when the mails disagree, or no patch said n/m
    trailers: Trailers
    missing: tuple[int, ...] = ()
    duplicates: tuple[int, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def first(self) -> SeriesMail | None:
        """The mail that speaks for the series: the cover letter, else the first patch."""
        return self.cover or (self.patches[0] if self.patches else None)

    @property
    def is_complete(self) -> bool:
        """Every patch 1..total exactly once, at one readable version: nothing to guess before applying."""
        return (
            bool(self.patches)
            and not (self.missing or self.duplicates)
            and self.total == len(self.patches)
            and self.version != UNREADABLE_VERSION
        )


def parse_series(messages: Sequence[Mail]) -> Series:
    """Order the mails of one series. Replies (Re:, Fwd:) are set aside, and named in `problems`."""
    problems: list[str] = []
    if len(messages) > MAX_MAILS:
        problems.append(f"{len(messages)} mails; only the first {MAX_MAILS} are read")
    mails = []
    for mail in messages[:MAX_MAILS]:
        read = _read_mail(mail, problems)
        if read.subject.is_reply:
            problems.append(f"reply {read.message_id or read.subject.title!r} is not part of the series")
        else:
            mails.append(read)
    covers = [mail for mail in mails if mail.subject.is_cover]
    if not covers:  # no 0/N: a mail with no diff and no position is the cover letter git or b4 wrote
        covers = [mail for mail in mails if mail.subject.index is None and not mail.has_diff]
    patches = [mail for mail in mails if not any(mail is cover for cover in covers)]
    if len(covers) > 1:
        problems.append(f"{len(covers)} cover letters")
    cover = covers[0] if len(covers) == 1 else None
    positions = _positions(patches, problems)
    total = _total(mails, problems)
    counts = Counter(positions)
    duplicates = [index for index, count in counts.items() if index is not None and count > 1]
    duplicates += [0] if len(covers) > 1 else []
    missing = [index for index in range(1, total + 1) if index not in counts] if total is not None else []
    if len(patches) == 1 and total is None and positions == [None]:
        total = 1  # one "[PATCH] foo": a series of one
    ordered = [mail for _, mail in sorted(enumerate(patches), key=lambda pair: (positions[pair[0]] or 0, pair[0]))]
    _check_senders(mails, problems)
    speaker = cover or (ordered[0] if ordered else None)
    return Series(
        cover=cover,
        patches=tuple(ordered),
        version=_version(mails, problems),
        total=total,
        trailers=_trailers(speaker, problems),
        missing=tuple(missing),
        duplicates=tuple(sorted(duplicates)),
        problems=tuple(problems),
    )


def version_identity(series: Series) -> str:
    """What every version of one series shares: b4's change-id, else the sender and the normalised subject.

    Both are claims anyone can copy; `supersedes` weighs them with the grade of who sent each.
    """
    if series.trailers.change_id:
        return f"change-id:{series.trailers.change_id}"
    first = series.first
    address = first.sender.address if first and first.sender else ""
    return f"subject:{address}:{first.subject.normalised if first else ''}"


def supersedes(new: Series, old: Series, new_grade: IdentityGrade, old_grade: IdentityGrade) -> bool:
    """Whether `new` replaces `old` (cancel old's run): same series, a higher version, and a sender proven
    at least as well, so that a stranger's "v2" cannot cancel a verified maintainer's v1."""
    return (
        version_identity(new) == version_identity(old)
        and UNREADABLE_VERSION < old.version < new.version
        and new_grade >= old_grade
    )


def parse_sender(value: str) -> Sender | None:
    """The one mailbox of a From: header, or None.

    Read: `Name <user@host>`, `"Last, First" <user@host>`, `user@host (Name)`, `user@host`. None for
    anything else, and for several mailboxes (a From: naming two people names nobody).
    """
    value = value.strip()[:MAX_HEADER]
    outside, angles = _outside_quotes(value)
    if "," in outside or ";" in outside or len(angles) > 1:
        return None
    if angles:
        start, end = angles[0]
        address, name = value[start + 1 : end].strip(), value[:start].strip()
        if value[end + 1 :].strip():
            return None
    else:
        address, _, comment = value.partition("(")
        address, name = address.strip(), comment.rpartition(")")[0].strip()
    if not _ADDRESS.fullmatch(address):
        return None
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return Sender(name=name, address=address.lower())


def _outside_quotes(value: str) -> tuple[str, list[tuple[int, int]]]:
    """The text outside "quoted strings", and the (start, end) of each <...> there: one pass."""
    outside: list[str] = []
    angles: list[tuple[int, int]] = []
    quoted = escaped = False
    opened = -1
    for index, char in enumerate(value):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            quoted = True
        elif char == "<" and opened < 0:
            opened = index
        elif char == ">" and opened >= 0:
            angles.append((opened, index))
            opened = -1
        elif opened < 0:
            outside.append(char)
    return "".join(outside), angles


def _read_mail(mail: Mail, problems: list[str]) -> SeriesMail:
    subject = parse_subject(mail.header("subject") or "")
    message_id = _message_id(mail.header("message-id"))
    where = message_id or f"mail {subject.title[:60]!r}"
    problems += [f"{where}: {problem}" for problem in subject.problems]
    sender_text = mail.header("from")
    sender = parse_sender(sender_text) if sender_text else None
    if sender is None:
        problems.append(f"{where}: From: {(sender_text or '')[:80]!r} is not one readable address")
    date_text = mail.header("date")
    date = _date(date_text) if date_text else None
    if date is None:
        problems.append(f"{where}: Date: {(date_text or '')[:80]!r} is not an RFC 5322 date")
    return SeriesMail(
        subject=subject,
        message_id=message_id,
        in_reply_to=_message_id(mail.header("in-reply-to")),
        sender=sender,
        date=date,
        has_diff=_has_diff(mail.body),
        mail=mail,
    )


def _message_id(value: str | None) -> str | None:
    found = _MESSAGE_ID.search(value[:MAX_HEADER]) if value else None
    return f"<{found.group(1)}>" if found else None


def _date(value: str) -> datetime | None:
    found = _DATE.fullmatch(value.strip()[:200])
    if not found:
        return None
    day, month_name, year, hour, minute, second, zone = found.groups()
    month = _MONTHS.get(month_name.lower())
    offset = _offset(zone or "")
    if month is None or offset is None:
        return None
    try:
        return datetime(int(year), month, int(day), int(hour), int(minute), int(second or 0), tzinfo=offset)
    except ValueError:  # 31 Feb, hour 25: read, but no date
        return None


def _offset(zone: str) -> timezone | None:
    if zone[:1] in "+-" and zone:
        hours, minutes = int(zone[1:3]), int(zone[3:5])
        if minutes >= 60 or hours >= 24:
            return None
        sign = -1 if zone[0] == "-" else 1
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    return timezone(timedelta(hours=_ZONES.get(zone.lower(), 0))) if zone else UTC


def _has_diff(body: str) -> bool:
    """A git diff, or a traditional one ("--- a" directly followed by "+++ b")."""
    return (
        body.startswith("diff --git ")
        or "\ndiff --git " in body
        or re.search(r"(?m)^--- \S.*\n\+\+\+ \S", body) is not None
    )


def _positions(patches: list[SeriesMail], problems: list[str]) -> list[int | None]:
    positions = [mail.subject.index for mail in patches]
    if len(patches) > 1 and None in positions:
        problems.append(f"{positions.count(None)} of {len(patches)} patches say no n/m position")
    return positions


def _total(mails: list[SeriesMail], problems: list[str]) -> int | None:
    totals = sorted({mail.subject.total for mail in mails if mail.subject.total is not None})
    if len(totals) > 1:
        problems.append(f"the mails disagree on how many patches there are: {', '.join(map(str, totals))}")
        return None
    return totals[0] if totals else None


def _version(mails: list[SeriesMail], problems: list[str]) -> int:
    versions = sorted({mail.subject.version for mail in mails})
    if len(versions) > 1:
        problems.append(f"the mails disagree on the version: {', '.join(f'v{v}' for v in versions)}")
        return UNREADABLE_VERSION
    return versions[0] if versions else UNREADABLE_VERSION


def _check_senders(mails: list[SeriesMail], problems: list[str]) -> None:
    addresses = sorted({mail.sender.address for mail in mails if mail.sender})
    if len(addresses) > 1:
        problems.append(f"the mails come from different addresses: {', '.join(addresses)}")


def _trailers(speaker: SeriesMail | None, problems: list[str]) -> Trailers:
    """The trailers of the cover letter (its whole body), or of patch 1 (below its "---"), up to the signature."""
    if speaker is None:
        return Trailers()
    lines = speaker.mail.body.split("\n")
    if not speaker.subject.is_cover and speaker.has_diff:
        lines = lines[lines.index("---") + 1 :] if "---" in lines else []  # a commit message says no trailer
    found: dict[str, list[str]] = {}
    where = speaker.message_id or "the first mail"
    for line in lines:
        if line.rstrip("\r") == "-- ":
            break
        trailer = _TRAILER.fullmatch(line.rstrip("\r"))
        if not trailer:
            continue
        key, value = trailer.group(1), trailer.group(2)
        if not _TRAILER_VALUE[key].fullmatch(value):
            problems.append(f"{where}: {key}: {value[:80]!r} is not a valid value")
        elif value not in found.setdefault(key, []):
            found[key].append(value)
    for key in ("change-id", "base-commit"):
        if len(found.get(key, [])) > 1:
            problems.append(f"{where}: {key} given {len(found[key])} times")
            found[key] = []
    for key in ("prerequisite-patch-id", "prerequisite-change-id", "prerequisite-message-id"):
        if len(found.get(key, [])) > MAX_PREREQUISITES:
            problems.append(f"{where}: {len(found[key])} {key} trailers; only {MAX_PREREQUISITES} are read")
            found[key] = found[key][:MAX_PREREQUISITES]
    return Trailers(
        change_id=next(iter(found.get("change-id", [])), None),
        base_commit=next(iter(found.get("base-commit", [])), None),
        prerequisite_patch_ids=tuple(found.get("prerequisite-patch-id", [])),
        prerequisite_change_ids=tuple(found.get("prerequisite-change-id", [])),
        prerequisite_message_ids=tuple(found.get("prerequisite-message-id", [])),
    )
