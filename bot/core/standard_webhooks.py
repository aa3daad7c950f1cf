"""Standard Webhooks signatures (standardwebhooks.com) without I/O: prove a delivery was signed with our key.

The sender signs "{webhook-id}.{webhook-timestamp}.{body}" with HMAC-SHA256 under a shared key configured
as `whsec_<base64 key>`, and sends `webhook-signature: v1,<base64 digest>` (several space-separated entries
while it rotates keys). GitLab signs this way; so do other services, hence no forge's words here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from bot.core.events import as_utc, header

__all__ = ["SIGNATURE_HEADER", "SIGNATURE_TOLERANCE", "SIGNED_ID_HEADER", "SIGNED_TIME_HEADER",
           "WebhookSignatureError", "verify_signed_webhook"]  # fmt: skip

SIGNATURE_HEADER = "webhook-signature"
SIGNED_ID_HEADER = "webhook-id"
SIGNED_TIME_HEADER = "webhook-timestamp"
SIGNATURE_TOLERANCE = timedelta(minutes=5)  # the spec's advice, and what its reference libraries enforce
_UNIX_SECONDS = re.compile(r"[0-9]{1,10}")  # up to the year 2286: no overflow


class WebhookSignatureError(Exception):
    """The delivery is not proven signed with the key: a missing header, no matching v1 signature, a time too
    far from now, or a configured key that is not `whsec_<base64 key>`. The message never quotes a key."""


def verify_signed_webhook(
    headers: Mapping[str, str],
    body: bytes,
    signing_token: str,
    now: datetime,
    tolerance: timedelta = SIGNATURE_TOLERANCE,
) -> str:
    """Return the signed webhook-id, or raise WebhookSignatureError unless one `v1` entry of webhook-signature
    is the HMAC of this body under `signing_token`, sent within `tolerance` of `now` (naive means UTC)."""
    key = _signing_key(signing_token)
    webhook_id = header(headers, SIGNED_ID_HEADER)
    if not webhook_id:
        raise WebhookSignatureError(f"missing {SIGNED_ID_HEADER} header (a signing token is configured)")
    sent_at = header(headers, SIGNED_TIME_HEADER)
    if not sent_at:
        raise WebhookSignatureError(f"missing {SIGNED_TIME_HEADER} header (a signing token is configured)")
    signatures = header(headers, SIGNATURE_HEADER)
    if not signatures:
        raise WebhookSignatureError(f"missing {SIGNATURE_HEADER} header (a signing token is configured)")
    # Signed as sent: the id and time exactly as the headers carry them, then the raw body.
    signed = f"{webhook_id}.{sent_at}.".encode("utf-8", "surrogatepass") + bytes(body)
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    if not any(hmac.compare_digest(expected, given) for given in _v1_signatures(signatures)):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not match the body under the configured signing token")
    # Only now is the time known to be the sender's: a refusal below is of a genuine but stale delivery.
    if not _UNIX_SECONDS.fullmatch(sent_at):
        raise WebhookSignatureError(f"{SIGNED_TIME_HEADER} is not whole seconds since 1970")
    age = as_utc(now) - datetime.fromtimestamp(int(sent_at), UTC)
    if age > tolerance:
        raise WebhookSignatureError(f"{SIGNED_TIME_HEADER} is {int(age.total_seconds())} s old (more than "
                                    f"{_span(tolerance)}): refused as a replay")  # fmt: skip
    if -age > tolerance:
        raise WebhookSignatureError(f"{SIGNED_TIME_HEADER} is {int(-age.total_seconds())} s in the future "
                                    f"(more than {_span(tolerance)})")  # fmt: skip
    return webhook_id


def _signing_key(signing_token: str) -> bytes:
    encoded = signing_token.removeprefix("whsec_")
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    # The spec's libraries also take a bare base64 key; we do not, so that a secret pasted into the wrong
    # setting (a plain webhook token is often valid base64) is refused rather than silently used as a key.
    if encoded == signing_token or not key:
        raise WebhookSignatureError("the configured signing token is not whsec_<base64 key>; refusing the delivery")
    return key


def _v1_signatures(field: str) -> list[bytes]:
    """The HMAC-SHA256 digests in a space-separated `v1,<base64>` list; other versions and junk are skipped."""
    found = []
    for entry in field.split():
        version, _, value = entry.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _span(tolerance: timedelta) -> str:
    """A tolerance as a refusal says it: "5 minutes", or seconds when it is not whole minutes."""
    seconds = int(tolerance.total_seconds())
    if seconds % 60:
        return f"{seconds} s"
    return f"{seconds // 60} minute" + ("" if seconds == 60 else "s")
