"""Signed exchange grants: each binds method, digest, job, expiry and byte cap; any change refuses it."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qsl, urlencode

import pytest

from bot.core.signed_urls import ANY_DIGEST, DOWNLOAD, UPLOAD, Grant, RefusedGrant, check, is_digest, sign

KEY = b"k" * 32
DIGEST = hashlib.sha256(b"a kernel").hexdigest()
OTHER = hashlib.sha256(b"another job's kernel").hexdigest()
NOW = 1_800_000_000


def _edited(query: str, **changes: object) -> str:
    fields = dict(parse_qsl(query))
    fields.update({name: str(value) for name, value in changes.items()})
    return urlencode(fields)


def test_a_download_grant_fetches_its_digest_for_its_job_until_it_expires() -> None:
    query = sign(KEY, Grant(DOWNLOAD, DIGEST, 7, NOW + 60))
    assert check(KEY, DOWNLOAD, DIGEST, query, NOW) == Grant(DOWNLOAD, DIGEST, 7, NOW + 60)
    with pytest.raises(RefusedGrant, match="expired"):
        check(KEY, DOWNLOAD, DIGEST, query, NOW + 60)


@pytest.mark.parametrize("change", [{"job": 8}, {"exp": NOW + 99999}, {"max": 1 << 40}, {"total": 1 << 40},
                                    {"sig": "0" * 64}])  # fmt: skip
def test_any_field_changed_refuses_the_grant(change: dict[str, object]) -> None:
    query = sign(KEY, Grant(DOWNLOAD, DIGEST, 7, NOW + 60))
    with pytest.raises(RefusedGrant, match="bad signature"):
        check(KEY, DOWNLOAD, DIGEST, _edited(query, **change), NOW)


def test_a_grant_for_one_digest_fetches_no_other_and_uploads_nothing() -> None:
    query = sign(KEY, Grant(DOWNLOAD, DIGEST, 7, NOW + 60))
    with pytest.raises(RefusedGrant):
        check(KEY, DOWNLOAD, OTHER, query, NOW)
    with pytest.raises(RefusedGrant):
        check(KEY, UPLOAD, DIGEST, query, NOW)


def test_an_upload_grant_takes_any_digest_but_downloads_nothing() -> None:
    query = sign(KEY, Grant(UPLOAD, ANY_DIGEST, 7, NOW + 60, 1000, 5000))
    assert check(KEY, UPLOAD, OTHER, query, NOW) == Grant(UPLOAD, ANY_DIGEST, 7, NOW + 60, 1000, 5000)
    with pytest.raises(RefusedGrant):
        check(KEY, DOWNLOAD, OTHER, query, NOW)


def test_another_key_and_a_repeated_field_refuse() -> None:
    query = sign(KEY, Grant(DOWNLOAD, DIGEST, 7, NOW + 60))
    with pytest.raises(RefusedGrant, match="bad signature"):
        check(b"x" * 32, DOWNLOAD, DIGEST, query, NOW)
    with pytest.raises(RefusedGrant, match="no grant"):
        check(KEY, DOWNLOAD, DIGEST, query + "&job=8", NOW)
    with pytest.raises(RefusedGrant, match="no grant"):
        check(KEY, DOWNLOAD, DIGEST, "", NOW)


@pytest.mark.parametrize("name", ["", DIGEST.upper(), DIGEST[:63], DIGEST + "0", f"../{DIGEST[3:]}",
                                  f"{DIGEST[:2]}/{DIGEST[3:]}", DIGEST[:63] + "\n", "*"])  # fmt: skip
def test_only_a_lower_case_sha256_is_a_digest(name: str) -> None:
    assert not is_digest(name)
    with pytest.raises(RefusedGrant, match="not a sha256"):
        check(KEY, UPLOAD, name, sign(KEY, Grant(UPLOAD, ANY_DIGEST, 7, NOW + 60, 10)), NOW)
