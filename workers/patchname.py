"""How a refusal names a patch: its mail's Subject and Message-Id, made safe to show anywhere.

A refusal travels to a Patchwork check, a report mail and the results page, so the names in it are
the sender's text shown to maintainers: line breaks, terminal escapes, bidi overrides and the bytes
of a broken charset become harmless, and each name is cut short so the rule after it stays visible.
"""

from __future__ import annotations

from email import policy
from email.errors import HeaderParseError
from email.message import Message
from email.parser import BytesHeaderParser

MAX_SUBJECT = 100
MAX_MESSAGE_ID = 100
_PARSER = BytesHeaderParser(policy=policy.default)  # decodes RFC 2047 words, as the mail's readers see them


def shown(text: str, limit: int) -> str:
    """`text` on one line of printable characters, at most `limit` of them (cut with "…")."""
    safe = "".join(char if char.isprintable() else " " if char.isspace() else "\N{REPLACEMENT CHARACTER}"
                   for char in text)  # fmt: skip
    line = " ".join(safe.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def patch_label(mail: bytes) -> str | None:
    """`patch "<Subject>" <Message-Id>` of one mail, or None when it says neither (a bare diff)."""
    headers = _PARSER.parsebytes(mail)
    raw = {name.lower(): value for name, value in reversed(list(headers.raw_items()))}  # the first of each
    subject = _decoded_subject(headers, raw.get("subject"))
    message_id = shown(raw.get("message-id", ""), MAX_MESSAGE_ID)
    if not subject and not message_id:
        return None
    return " ".join(["patch", *([f'"{subject}"'] if subject else []), *([message_id] if message_id else [])])


def _decoded_subject(headers: Message, raw: str | None) -> str:
    if raw is None:
        return ""
    try:
        decoded = str(headers.get("subject", raw))
    except (HeaderParseError, LookupError, ValueError):  # a broken encoded word: the text as it came
        decoded = raw
    return shown(decoded, MAX_SUBJECT)
