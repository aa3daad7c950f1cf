"""Standard Webhooks signatures: the spec's published vector, key rotation, and the attacks on a signed delivery.

tests/bot/forges/gitlab/test_sansio.py checks the same check as GitLab's verify uses it (token first, then
the signature, then Idempotency-Key bound to the signed id)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta

import pytest

from bot.core.standard_webhooks import WebhookSignatureError, verify_signed_webhook

# The test vector of the spec's reference libraries (standard-webhooks, libraries/*/tests): a signature
# computed by someone else's code, so a mistake shared by our signer and our checker cannot pass.
SPEC_KEY = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_STAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
SENT = datetime.fromtimestamp(SPEC_STAMP, UTC)
KEY = base64.b64decode(SPEC_KEY.removeprefix("whsec_"))


def spec_headers(**overrides: str) -> dict[str, str]:
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_STAMP), "webhook-signature": SPEC_SIGNATURE}
    return headers | overrides


def v1(body: bytes, *, key: bytes = KEY, webhook_id: str = SPEC_ID, stamp: str = str(SPEC_STAMP)) -> str:
    """One `v1,` entry over `body` as a sender following the spec makes it."""
    digest = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def test_the_specs_vector_verifies_and_gives_the_signed_id() -> None:
    assert v1(SPEC_BODY) == SPEC_SIGNATURE  # our test signer agrees with the spec's
    assert verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, SENT) == SPEC_ID


def test_header_names_are_read_in_any_case() -> None:
    headers = {"Webhook-Id": SPEC_ID, "WEBHOOK-TIMESTAMP": str(SPEC_STAMP), "Webhook-Signature": SPEC_SIGNATURE}
    assert verify_signed_webhook(headers, SPEC_BODY, SPEC_KEY, SENT) == SPEC_ID


def test_the_id_is_returned_as_signed() -> None:
    # Whatever the sender put in webhook-id is what the signature covers: nothing is trimmed before checking.
    padded = f" {SPEC_ID} "
    headers = spec_headers(**{"webhook-id": padded, "webhook-signature": v1(SPEC_BODY, webhook_id=padded)})
    assert verify_signed_webhook(headers, SPEC_BODY, SPEC_KEY, SENT) == padded


def test_any_one_v1_entry_may_match() -> None:
    # While a sender rotates keys it signs with each; other versions (v1a: ed25519) and junk are passed over.
    field = f"v1a,AAAA {v1(SPEC_BODY, key=b'old key')} v2,{SPEC_SIGNATURE[3:]} v1,not-base64!! {SPEC_SIGNATURE}"
    assert verify_signed_webhook(spec_headers(**{"webhook-signature": field}), SPEC_BODY, SPEC_KEY, SENT) == SPEC_ID


@pytest.mark.parametrize(
    "field",
    [
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",  # the spec's vector with its last byte changed
        "v2," + SPEC_SIGNATURE[3:],  # a right digest under a version we do not know is no signature
        SPEC_SIGNATURE.upper(),
        SPEC_SIGNATURE[3:],  # no version
        "v1," + SPEC_SIGNATURE[3:-1],  # not base64 any more
        "v1,",
        "v1," + "A" * 10_000,
        " ",
    ],
)
def test_a_wrong_or_malformed_signature_is_refused(field: str) -> None:
    with pytest.raises(WebhookSignatureError, match="webhook-signature"):
        verify_signed_webhook(spec_headers(**{"webhook-signature": field}), SPEC_BODY, SPEC_KEY, SENT)


def test_a_signature_under_another_key_is_refused() -> None:
    other_key = "whsec_" + base64.b64encode(b"\x01" * 32).decode()
    with pytest.raises(WebhookSignatureError, match="webhook-signature does not match the body under the configured"):
        verify_signed_webhook(spec_headers(), SPEC_BODY, other_key, SENT)


@pytest.mark.parametrize(
    "body",
    [b'{"test": 2432232315}', b'{"test": 2432232314}\n', b'{"test":2432232314}', b"", SPEC_BODY + b" "],
)
def test_a_tampered_or_reencoded_body_is_refused(body: bytes) -> None:
    # Signed as sent: a body parsed and dumped again (spaces, a newline) is another body.
    with pytest.raises(WebhookSignatureError, match="webhook-signature does not match"):
        verify_signed_webhook(spec_headers(), body, SPEC_KEY, SENT)


@pytest.mark.parametrize(
    "moved",
    [{"webhook-id": "msg_another"}, {"webhook-timestamp": str(SPEC_STAMP + 60)}, {"webhook-id": SPEC_ID + " "}],
)
def test_the_signature_binds_the_id_and_the_time(moved: dict[str, str]) -> None:
    # A captured delivery replayed as a new one (new id) or as a fresh one (new time) keeps an old signature.
    now = SENT + timedelta(seconds=60)
    with pytest.raises(WebhookSignatureError, match="webhook-signature does not match"):
        verify_signed_webhook(spec_headers(**moved), SPEC_BODY, SPEC_KEY, now)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_missing_or_empty_header_is_refused_by_name(missing: str) -> None:
    message = re.escape(f"missing {missing} header (a signing token is configured)")
    headers = spec_headers()
    del headers[missing]
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook(headers, SPEC_BODY, SPEC_KEY, SENT)
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook(spec_headers(**{missing: ""}), SPEC_BODY, SPEC_KEY, SENT)


@pytest.mark.parametrize("seconds", [0, 300, -300])
def test_five_minutes_either_way_verifies_by_default(seconds: int) -> None:
    assert verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, SENT + timedelta(seconds=seconds)) == SPEC_ID


def test_301_seconds_old_is_a_replay() -> None:
    message = re.escape("webhook-timestamp is 301 s old (more than 5 minutes): refused as a replay")
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, SENT + timedelta(seconds=301))


def test_301_seconds_in_the_future_is_refused() -> None:
    message = re.escape("webhook-timestamp is 301 s in the future (more than 5 minutes)")
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, SENT - timedelta(seconds=301))


def test_years_old_is_refused_however_well_signed() -> None:
    with pytest.raises(WebhookSignatureError, match="refused as a replay"):
        verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, datetime(2026, 3, 2, tzinfo=UTC))


@pytest.mark.parametrize(
    ("tolerance", "said"), [(timedelta(seconds=30), "30 s"), (timedelta(minutes=1), "1 minute")]
)  # fmt: skip
def test_another_tolerance_is_kept_and_named(tolerance: timedelta, said: str) -> None:
    within = SENT + tolerance
    assert verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, within, tolerance) == SPEC_ID
    with pytest.raises(WebhookSignatureError, match=re.escape(f"(more than {said}): refused as a replay")):
        verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, within + timedelta(seconds=1), tolerance)


def test_naive_now_is_read_as_utc() -> None:
    assert verify_signed_webhook(spec_headers(), SPEC_BODY, SPEC_KEY, SENT.replace(tzinfo=None)) == SPEC_ID


@pytest.mark.parametrize("stamp", ["1614265330.5", "-1", "99999999999", "1e9", " 1614265330", "1614265330 ", "０"])
def test_a_timestamp_that_is_not_whole_seconds_is_refused_even_when_signed(stamp: str) -> None:
    headers = spec_headers(**{"webhook-timestamp": stamp, "webhook-signature": v1(SPEC_BODY, stamp=stamp)})
    with pytest.raises(WebhookSignatureError, match="webhook-timestamp is not whole seconds since 1970"):
        verify_signed_webhook(headers, SPEC_BODY, SPEC_KEY, SENT)


@pytest.mark.parametrize(
    "configured",
    [
        "",
        "whsec_",
        "whsec_not base64!",
        "whsec_" + SPEC_KEY[6:-1],  # truncated: no longer base64
        SPEC_KEY[6:],  # the bare base64 key: the spec's libraries take it, we want the whsec_ form
        "WHSEC_" + SPEC_KEY[6:],
    ],
)
def test_an_unusable_signing_token_refuses_everything(configured: str) -> None:
    # Checked first: a wrong setting is refused the same way whatever the delivery carries.
    message = re.escape("the configured signing token is not whsec_<base64 key>; refusing the delivery")
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook(spec_headers(), SPEC_BODY, configured, SENT)
    with pytest.raises(WebhookSignatureError, match=message):
        verify_signed_webhook({}, SPEC_BODY, configured, SENT)


def test_a_refusal_never_quotes_the_key_or_a_signature() -> None:
    forged = v1(SPEC_BODY, key=b"guess")
    for headers, key in [(spec_headers(**{"webhook-signature": forged}), SPEC_KEY), (spec_headers(), SPEC_KEY[6:])]:
        with pytest.raises(WebhookSignatureError) as info:
            verify_signed_webhook(headers, SPEC_BODY, key, SENT)
        said = str(info.value)
        assert SPEC_KEY[6:] not in said and forged[3:] not in said and SPEC_SIGNATURE[3:] not in said
