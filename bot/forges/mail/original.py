"""The mail as it was sent, for checking its signatures: from a public-inbox archive, else rebuilt.

Patchwork re-renders what it serves (adds X-Patchwork-* headers, rewrites the transfer encoding,
drops the mail's signature trailer, adds reviewers' tags from replies), which breaks signatures made
over the original bytes. A public-inbox archive keeps the original: `{url}/{message-id}/raw`.

An original found by Message-Id proves only that *some* mail with that id was signed; a hostile
submitter can give their patch the Message-Id of a maintainer's real, signed mail. So whoever uses a
verified original must check with `carries_same_patch` that its diff is the one Patchwork will
have applied, or it proves nothing about that patch.
"""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import quopri
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bot.forges.mail.identity import from_address

log = logging.getLogger(__name__)

Fetch = Callable[[str], bytes | None]  # URL -> body; None when the archive has no such message

MAX_ORIGINAL_BYTES = 8 * 1024 * 1024
# public-inbox's own escaping of a Message-Id in a URL (PublicInbox::MID::mid_escape).
_PUBLIC_INBOX_SAFE = "-._~!$&'()*+,;=:@"
_MESSAGE_ID = re.compile(r"^[!-;=?-~]{1,900}$")  # printable ASCII, no space, no angle brackets
_MBOX_LINE = re.compile(rb"^From [^\n]*\n", re.MULTILINE)
_MBOXRD_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,200}$")
_DIFF_START = re.compile(rb"^(?:diff --git |Index: )", re.MULTILINE)
# What git apply would read as (part of) a patch: a "-- " trailer holding one is not a trailer.
_PATCH_LINE = re.compile(rb"^(?:diff |--- |\+\+\+ |@@ |Index: |GIT binary patch)", re.MULTILINE)


class ArchiveUnavailable(Exception):
    """The archive did not answer usefully (network error, 5xx, too large)."""


def archive_url(message_id: str, public_inbox_url: str) -> str | None:
    """`{url}/{escaped id}/raw`, or None when the Message-Id is not one that can go in a URL."""
    bare = message_id.strip().removeprefix("<").removesuffix(">")
    if not _MESSAGE_ID.match(bare) or bare in (".", ".."):
        return None
    return f"{public_inbox_url.rstrip('/')}/{urllib.parse.quote(bare, safe=_PUBLIC_INBOX_SAFE)}/raw"


def original_message(message_id: str, *, public_inbox_url: str, fetch: Fetch) -> bytes | None:
    """The one message the archive holds under `message_id`, as RFC 5322 bytes; None when there is
    not exactly one, it is not that message, or the archive failed (the caller then rebuilds)."""
    url = archive_url(message_id, public_inbox_url)
    if url is None:
        log.warning("Message-Id %r cannot be looked up in an archive", message_id[:200])
        return None
    try:
        mbox = fetch(url)
    except (ArchiveUnavailable, OSError) as error:
        log.warning("public-inbox %s: %s", url, error)
        return None
    if mbox is None:
        return None
    messages = split_mboxrd(mbox)
    if len(messages) != 1:
        # Two mails under one Message-Id: which one Patchwork took cannot be told from here.
        log.warning("public-inbox %s holds %d messages, not one: not used", url, len(messages))
        return None
    wanted = message_id.strip().removeprefix("<").removesuffix(">")
    found = email.message_from_bytes(messages[0], policy=email.policy.compat32).get_all("Message-ID") or []
    if [str(v).strip().removeprefix("<").removesuffix(">") for v in found] != [wanted]:
        log.warning("public-inbox %s answered with a message whose Message-Id is not %r", url, wanted)
        return None
    return messages[0]


def split_mboxrd(mbox: bytes) -> list[bytes]:
    """The messages of an mboxrd file (public-inbox's raw format), `>From ` quoting undone."""
    if not mbox.startswith(b"From "):
        return [mbox] if mbox.strip() else []
    starts = [match.start() for match in _MBOX_LINE.finditer(mbox)]
    # A "From " line starts a message only at the file's start or after a blank line.
    starts = [s for s in starts if s == 0 or mbox[max(0, s - 2) : s] == b"\n\n"]
    bounds = zip(starts, [*starts[1:], len(mbox)], strict=True)
    messages = []
    for start, end in bounds:
        chunk = mbox[start:end].split(b"\n", 1)[1] if b"\n" in mbox[start:end] else b""
        messages.append(_MBOXRD_QUOTED.sub(rb"\1", chunk).removesuffix(b"\n"))
    return [m for m in messages if m.strip()]


def http_fetch(client: httpx.Client, *, max_bytes: int = MAX_ORIGINAL_BYTES) -> Fetch:
    """A Fetch over HTTP: 404/410 -> None, other failures -> ArchiveUnavailable, bodies capped."""

    def fetch(url: str) -> bytes | None:
        try:
            with client.stream("GET", url) as response:
                if response.status_code in (404, 410):
                    return None
                if response.status_code != 200:
                    raise ArchiveUnavailable(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise ArchiveUnavailable(f"answer over {max_bytes} bytes")
                return bytes(body)
        except httpx.HTTPError as error:
            raise ArchiveUnavailable(f"{type(error).__name__}: {error}") from error

    return fetch


def rebuild_from_patchwork(patch_json: Mapping[str, Any], mbox_bytes: bytes) -> bytes:
    """The closest Patchwork can give to the mail as sent: its stored original headers (the patch's
    `headers` field) over a body made from its stored `content` and `diff`, encoded again with the
    mail's own Content-Transfer-Encoding. Where the JSON lacks them, the served mbox stands in (its
    X-Patchwork-* headers dropped). A signature over what Patchwork dropped (a `-- ` trailer) or
    re-encoded differently still fails: that mail stays unverifiable."""
    served = split_mboxrd(mbox_bytes)
    served_message = email.message_from_bytes(served[0] if served else b"", policy=email.policy.compat32)
    headers = patch_json.get("headers")
    if isinstance(headers, Mapping) and headers:
        header_lines = _header_lines(headers)
    else:
        header_lines = [f"{name}: {value}" for name, value in served_message.items()
                        if not name.lower().startswith("x-patchwork-")]  # fmt: skip
    header_lines = [_one_header(line) for line in header_lines]
    text = _body_text(patch_json, served_message)
    encoding = _header_value(header_lines, "content-transfer-encoding").strip().lower()
    body = _encode(text.encode(_charset(header_lines)), encoding)
    return ("\n".join(header_lines) + "\n\n").encode("utf-8", "surrogateescape") + body


def carries_same_patch(original: bytes, served: bytes) -> bool:
    """Do both mails carry the same diff from the same From: address? (Transfer encodings decoded,
    line endings and a trailing `-- ` signature ignored: what Patchwork changes when serving.) A mail
    with a line above its diff that git could apply as part of the patch carries no diff here."""
    first, second = (_without_mbox(original), _without_mbox(served))
    from_first, from_second = from_address(_headers_of(first))[0], from_address(_headers_of(second))[0]
    if from_first is None or from_first.casefold() != (from_second or "").casefold():
        return False
    diff_first, diff_second = _diff_of(first), _diff_of(second)
    return diff_first is not None and diff_first == diff_second


def _header_lines(headers: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, values in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            continue
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str):
                lines.append(f"{name}:{value}" if value.startswith(("\n", " ", "\t")) else f"{name}: {value}")
    return lines


def _one_header(line: str) -> str:
    """A stored value's own line breaks stay folds: a break not followed by space or tab (which would
    start another header, or end the headers) gets one."""
    line = line.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"\n(?![ \t])", "\n ", line)


def _header_value(lines: list[str], wanted: str) -> str:
    for line in lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == wanted:
            return " ".join(value.split())
    return ""


def _charset(lines: list[str]) -> str:
    match = re.search(r'charset="?([A-Za-z0-9_.:-]+)"?', _header_value(lines, "content-type"))
    if match:
        try:
            "".encode(match[1])
            return match[1]
        except LookupError:
            pass
    return "utf-8"


def _body_text(patch_json: Mapping[str, Any], served: email.message.Message) -> str:
    content, diff = patch_json.get("content"), patch_json.get("diff")
    if isinstance(content, str):
        # What Patchwork's own mbox view does with them, without the tags it adds from replies.
        body = content.rstrip("\n") + "\n"
        return body + "\n" + diff if isinstance(diff, str) and diff else body
    payload = served.get_payload(decode=True)
    return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _encode(body: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.encodebytes(body)
    if encoding == "quoted-printable":
        return quopri.encodestring(body)
    return body


def _without_mbox(raw: bytes) -> bytes:
    messages = split_mboxrd(raw)
    return messages[0] if messages else b""


def _headers_of(raw: bytes) -> bytes:
    end = re.search(rb"\r?\n\r?\n", raw)
    return raw[: end.start()] if end else raw


def _diff_of(raw: bytes) -> bytes | None:
    payload = email.message_from_bytes(raw, policy=email.policy.compat32).get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    text = payload.replace(b"\r\n", b"\n")
    start = _DIFF_START.search(text)
    if start is None:
        return None
    if _PATCH_LINE.search(text, 0, start.start()):
        # git am applies what it reads as a patch above the diff too (a hunk in the message or among
        # the diffstat): a mail carrying one is not told apart by its diff alone, so it matches none.
        return None
    diff = text[start.start() :]
    trailer = diff.rfind(b"\n-- \n")
    if trailer >= 0 and not _PATCH_LINE.search(diff, trailer + 5):
        diff = diff[: trailer + 1]
    return diff.rstrip(b"\n") + b"\n"
