"""The exchange route against hostile workers: grants for another job, digest or method, expired grants,
bytes that do not hash to the URL's digest, uploads past the cap, and names that are no digest."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from bot.core.signed_urls import ANY_DIGEST, DOWNLOAD, UPLOAD, Grant, sign
from bot.host.config import Config
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.exchange_grants import EXCHANGE_URL_ENV, exchange_key, job_exchange
from bot.web.app import create_app
from bot.web.artifact_exchange import exchange_routes

CAP = 1000
TOTAL = 2500  # a job's uploads together


@dataclass
class Exchange:
    runtime: Runtime
    client: TestClient
    key: bytes

    def get(self, digest: str, grant: Grant) -> int:
        return self.client.get(f"/exchange/{digest}?{sign(self.key, grant)}").status_code

    def put(self, digest: str, body: bytes | Iterator[bytes], grant: Grant | None = None) -> int:
        grant = grant or Grant(UPLOAD, ANY_DIGEST, 1, int(time.time()) + 60, CAP, TOTAL)
        return self.client.put(f"/exchange/{digest}?{sign(self.key, grant)}", content=body).status_code


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    runtime = open_runtime(Config(data_dir=tmp_path / "data"), database_url=f"sqlite:///{tmp_path}/db.sqlite")
    with TestClient(Starlette(routes=exchange_routes(runtime))) as client:
        yield Exchange(runtime, client, exchange_key(runtime.data_dir))


def _later() -> int:
    return int(time.time()) + 60


def test_a_job_fetches_the_blob_it_was_granted_and_no_other(exchange: Exchange) -> None:
    mine, theirs = exchange.runtime.artifacts.put_bytes(b"mine"), exchange.runtime.artifacts.put_bytes(b"theirs")
    response = exchange.client.get(f"/exchange/{mine}?{sign(exchange.key, Grant(DOWNLOAD, mine, 1, _later()))}")
    assert response.status_code == 200 and response.content == b"mine"
    assert exchange.get(theirs, Grant(DOWNLOAD, mine, 1, _later())) == 403  # my grant, another digest
    granted_to_2 = sign(exchange.key, Grant(DOWNLOAD, theirs, 2, _later()))
    assert exchange.client.get(f"/exchange/{theirs}?{granted_to_2.replace('job=2', 'job=1')}").status_code == 403


def test_an_expired_grant_fetches_and_uploads_nothing(exchange: Exchange) -> None:
    digest = exchange.runtime.artifacts.put_bytes(b"old")
    past = int(time.time()) - 1
    assert exchange.get(digest, Grant(DOWNLOAD, digest, 1, past)) == 403
    fresh = hashlib.sha256(b"new").hexdigest()
    assert exchange.put(fresh, b"new", Grant(UPLOAD, ANY_DIGEST, 1, past, CAP, TOTAL)) == 403
    assert not exchange.runtime.artifacts.has(fresh)


def test_a_download_grant_uploads_nothing(exchange: Exchange) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert exchange.put(digest, b"x", Grant(DOWNLOAD, digest, 1, _later())) == 403
    assert not exchange.runtime.artifacts.has(digest)


def test_an_upload_is_stored_only_under_the_digest_of_its_bytes(exchange: Exchange) -> None:
    good = b"a build log\n"
    digest = hashlib.sha256(good).hexdigest()
    assert exchange.put(digest, b"a build log, tampered\n") == 422
    assert not exchange.runtime.artifacts.has(digest)
    # An existing blob cannot be replaced by other bytes under its name either.
    assert exchange.put(digest, good) == 201
    assert exchange.put(digest, b"evil", Grant(UPLOAD, ANY_DIGEST, 2, _later(), CAP, TOTAL)) == 422
    assert exchange.put(digest, b"evil") == 200  # its own upload again: nothing read, nothing replaced
    assert exchange.runtime.artifacts.get_bytes(digest) == good
    assert not [p for p in exchange.runtime.artifacts.root.rglob(".in-*")]  # nothing half-written is left


def test_an_upload_past_the_grants_cap_is_refused_declared_or_streamed(exchange: Exchange) -> None:
    big = b"x" * (CAP + 1)
    digest = hashlib.sha256(big).hexdigest()
    assert exchange.put(digest, big) == 413  # Content-Length says so: refused before a byte is read
    assert exchange.put(digest, iter([b"x" * 600, b"x" * 401])) == 413  # chunked: refused as it passes the cap
    assert not exchange.runtime.artifacts.has(digest)
    assert not [p for p in exchange.runtime.artifacts.root.rglob(".in-*")]
    # The cap is in the signature: a worker cannot raise it.
    query = sign(exchange.key, Grant(UPLOAD, ANY_DIGEST, 1, _later(), CAP, TOTAL))
    for raised in (query.replace(f"max={CAP}", "max=99999"), query.replace(f"total={TOTAL}", "total=99999")):
        assert exchange.client.put(f"/exchange/{digest}?{raised}", content=big).status_code == 403


def test_a_jobs_uploads_together_stay_within_its_total(exchange: Exchange) -> None:
    """Many distinct blobs, each under the cap, cannot fill the control side's disk."""
    blobs = [bytes([n]) * CAP for n in range(3)]  # 3 x 1000 bytes against a total of 2500
    assert [exchange.put(hashlib.sha256(blob).hexdigest(), blob) for blob in blobs] == [201, 201, 413]
    assert exchange.put(hashlib.sha256(blobs[2]).hexdigest(), b"") == 422  # a claim without its bytes
    assert exchange.put(hashlib.sha256(blobs[0]).hexdigest(), b"") == 200  # its own again (a redelivered job)
    # Having another job's blob stored does not make it this one's: the bytes must come, and count.
    assert exchange.put(hashlib.sha256(blobs[0]).hexdigest(), blobs[0],
                        Grant(UPLOAD, ANY_DIGEST, 3, _later(), CAP, CAP - 1)) == 413  # fmt: skip
    assert exchange.put(hashlib.sha256(b"!").hexdigest(), b"!",  # another job has its own total
                        Grant(UPLOAD, ANY_DIGEST, 2, _later(), CAP, TOTAL)) == 201  # fmt: skip


@pytest.mark.parametrize("path", ["../exchange.key", "..%2fexchange.key", "%2e%2e%2fexchange.key", "exchange.key",
                                  "ab/" + "c" * 62, "AB" + "c" * 62, "c" * 63, "c" * 64 + "%00", "*"])  # fmt: skip
def test_names_that_are_no_digest_reach_no_file(exchange: Exchange, path: str) -> None:
    exchange.runtime.artifacts.put_bytes(b"something stored")
    grant = sign(exchange.key, Grant(DOWNLOAD, path, 1, _later()))  # even one the key signed
    response = exchange.client.get(f"/exchange/{path}?{grant}")
    assert response.status_code in (403, 404)
    assert exchange.key not in response.content
    upload = sign(exchange.key, Grant(UPLOAD, ANY_DIGEST, 1, _later(), CAP, TOTAL))
    assert exchange.client.put(f"/exchange/{path}?{upload}", content=b"x").status_code in (403, 404, 405)
    assert sorted(p.name for p in exchange.runtime.data_dir.iterdir()) == ["artifacts", "exchange.key"]


def test_the_web_app_serves_the_exchange_only_when_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = open_runtime(Config(data_dir=tmp_path / "data"), database_url=f"sqlite:///{tmp_path}/db.sqlite")
    digest = runtime.artifacts.put_bytes(b"patch")
    monkeypatch.delenv(EXCHANGE_URL_ENV, raising=False)
    assert job_exchange(runtime.config, runtime.data_dir, 1, [digest]) is None
    with TestClient(create_app(runtime)) as client:
        assert client.get(f"/exchange/{digest}").status_code == 404
    monkeypatch.setenv(EXCHANGE_URL_ENV, "http://127.0.0.1/exchange")
    grants = job_exchange(runtime.config, runtime.data_dir, 1, [digest])
    assert grants is not None and list(grants.downloads) == [digest]
    assert (runtime.data_dir / "exchange.key").stat().st_mode & 0o777 == 0o600
    with TestClient(create_app(runtime)) as client:
        assert client.get(f"/exchange/{digest}?{grants.downloads[digest]}").content == b"patch"
        assert client.get(f"/exchange/{digest}?{grants.upload_query}").status_code == 403


def test_a_later_job_is_granted_only_blobs_the_job_it_depends_on_uploaded(
        exchange: Exchange, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A hostile build worker names another pipeline's blob as its artifact: the lab host is not granted it."""
    monkeypatch.setenv(EXCHANGE_URL_ENV, "http://127.0.0.1/exchange")
    private = exchange.runtime.artifacts.put_bytes(b"another pipeline's private log")
    built = hashlib.sha256(b"a kernel").hexdigest()
    assert exchange.put(built, b"a kernel", Grant(UPLOAD, ANY_DIGEST, 5, _later(), CAP, TOTAL)) == 201
    config, data_dir = exchange.runtime.config, exchange.runtime.data_dir
    granted = job_exchange(config, data_dir, 6, [built, private, "../../exchange.key"], made_by=5)
    assert granted is not None and list(granted.downloads) == [built]
    by_another = job_exchange(config, data_dir, 6, [built], made_by=4)
    assert by_another is not None and by_another.downloads == {}
