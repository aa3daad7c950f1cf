"""Signed page links and operator tokens, as pure functions: scope, expiry, tampering, constant-time checks."""

from __future__ import annotations

import hashlib

import pytest

from bot.core.links import (
    link_opens_pipeline,
    operator_token_matches,
    parse_link_token,
    sign_pipeline_link,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_800_000_000


def test_a_link_opens_its_pipeline_until_it_expires() -> None:
    token = sign_pipeline_link(KEY, 7, NOW + 60)
    assert link_opens_pipeline(KEY, token, 7, NOW)
    assert link_opens_pipeline(KEY, token, 7, NOW + 59)
    assert not link_opens_pipeline(KEY, token, 7, NOW + 60)  # expiry is exclusive
    assert not link_opens_pipeline(KEY, token, 7, NOW + 10**6)


def test_a_link_to_one_pipeline_opens_no_other() -> None:
    token = sign_pipeline_link(KEY, 1, NOW + 60)
    assert not link_opens_pipeline(KEY, token, 2, NOW)
    assert not link_opens_pipeline(KEY, token, 11, NOW)  # no prefix games


def test_a_link_signed_with_another_key_opens_nothing() -> None:
    assert not link_opens_pipeline(KEY, sign_pipeline_link(OTHER_KEY, 1, NOW + 60), 1, NOW)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t.replace("1.", "2.", 1),  # another pipeline, same MAC
        lambda t: t.split(".")[0] + "." + str(NOW + 10**8) + "." + t.split(".")[2],  # later expiry, same MAC
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # one MAC digit
        lambda t: t.upper(),  # hex case is part of the format
        lambda t: t + "0",
        lambda t: t[:-1],
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: "01" + t[1:],  # a leading zero makes a different text for the same id
        lambda t: t.replace(".", ":"),
        lambda t: "",
        lambda t: "1." + str(NOW + 60) + "." + "0" * 64,
        lambda t: "9" * 40 + "." + t.split(".", 1)[1],
    ],
)
def test_a_tampered_link_opens_nothing(tamper: object) -> None:
    token = sign_pipeline_link(KEY, 1, NOW + 60)
    assert callable(tamper)
    changed = tamper(token)
    assert changed != token
    assert parse_link_token(KEY, changed, NOW) is None


def test_signing_refuses_a_short_key_and_nonsense_scopes() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        sign_pipeline_link(b"short", 1, NOW)
    with pytest.raises(ValueError):
        sign_pipeline_link(KEY, 0, NOW)
    assert parse_link_token(b"short", sign_pipeline_link(KEY, 1, NOW + 60), NOW) is None


def test_operator_token_matches_only_its_configured_digest() -> None:
    digest = hashlib.sha256(b"operator-secret").hexdigest()
    assert operator_token_matches("operator-secret", (digest,))
    assert operator_token_matches("operator-secret", ("0" * 64, digest.upper()))
    assert not operator_token_matches("operator-secre", (digest,))
    assert not operator_token_matches(digest, (digest,))  # the digest itself is not the token
    assert not operator_token_matches("", (hashlib.sha256(b"").hexdigest(),))  # an empty token never opens
    assert not operator_token_matches("operator-secret", ())
