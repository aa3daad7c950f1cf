"""A job's artifacts and log served to people: the right type and size, streamed, found by the job's recorded
outputs only. The attack: paths and digests that try to leave the store (a real app, a real store on
SQLite and PostgreSQL, requests sent to the ASGI app as a client would send them, unnormalised)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.testclient import TestClient

from bot.host.config import Config, Tree
from bot.host.stores import Runtime, open_runtime
from bot.pipelines.retention import PRUNED_KEY
from bot.store import models
from bot.web.app import create_app
from bot.web.artifacts import blob_response

OUTSIDE = b"OUTSIDE-THE-STORE: the database's neighbour\n"
IMAGE = b"MZ\x00\x01<html><script>alert(document.cookie)</script>" + os.urandom(3 * 1024 * 1024)
CONFIG_TEXT = b"CONFIG_64BIT=y\n# <html><body onload=alert(1)>\n"
SYSTEM_MAP = b"ffffffff81000000 T _text\n"
PAGE = b"<!doctype html><script>fetch('/pipelines/1')</script>"
LOG = b"make: <script>alert('log')</script>\n"


@dataclass
class Served:
    runtime: Runtime
    client: TestClient
    job_id: int
    pruned_job_id: int
    digests: dict[str, str]


def _job(session: Any, pipeline: models.Pipeline, name: str, outputs: dict[str, Any], log: str | None) -> models.Job:
    job = models.Job(pipeline=pipeline, kind="build", name=name, queue="build", state="done", result="pass",
                     outputs=outputs, log_digest=log)  # fmt: skip
    session.add(job)
    return job


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[Served]:
    runtime = open_runtime(Config(data_dir=tmp_path / "data", trees=[Tree(name="linux", url="https://x/linux")]),
                           database_url=database_url)  # fmt: skip
    (runtime.data_dir / "outside.txt").write_bytes(OUTSIDE)
    store = runtime.artifacts
    files = {"arch/x86/boot/bzImage": IMAGE, ".config": CONFIG_TEXT, "System.map": SYSTEM_MAP, "index.html": PAGE,
             "modules.tar.gz": b"\x1f\x8b" + b"\x00" * 100}  # fmt: skip
    digests = {path: store.put_bytes(data) for path, data in files.items()}
    artifacts: dict[str, Any] = {path: {"digest": digest, "mode": 0o644} for path, digest in digests.items()}
    # A worker's word, recorded as sent: digests that are no digest, or name nothing stored.
    artifacts |= {"evil-relative": {"digest": "../outside.txt"}, "evil-absolute": {"digest": str(tmp_path)},
                  "evil-upper": {"digest": digests[".config"].upper()}, "evil-short": {"digest": "ab" * 31},
                  "evil-missing": {"digest": "0" * 64}, "evil-none": {}, "evil-list": ["x"]}  # fmt: skip
    with runtime.store.session() as session:
        tree = models.Tree(name="linux", url="https://x/linux")
        revision = models.Revision(change=models.Change(tree=tree, source="try", external_id="1"), base_ref="main")
        pipeline = models.Pipeline(revision=revision, state="done", result="pass")
        job = _job(session, pipeline, "x86_64", {"artifacts": artifacts}, store.put_bytes(LOG))
        pruned = _job(session, pipeline, "arm64", {"artifacts": {"Image": {"digest": "1" * 64, "mode": 0o644}},
                                                   PRUNED_KEY: "2026-11-30T03:00:00+00:00"}, "2" * 64)  # fmt: skip
        session.flush()
        ids = job.id, pruned.id
    with TestClient(create_app(runtime)) as client:
        yield Served(runtime, client, ids[0], ids[1], digests)
    runtime.store.engine.dispose()


def raw_get(app: Starlette, raw_path: str) -> tuple[int, dict[str, str], bytes]:
    """GET a path exactly as sent (no client normalises its dot segments), decoded as a server decodes it."""
    path = unquote_to_bytes(raw_path).decode("utf-8", "surrogateescape")
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": raw_path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1),
             "server": ("testserver", 80)}  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


# -- what is served, and how -----------------------------------------------------------------------


def test_each_artifact_has_its_type_and_stored_size(served: Served) -> None:
    expected = {
        "arch/x86/boot/bzImage": ("application/octet-stream", "attachment", IMAGE),
        "modules.tar.gz": ("application/octet-stream", "attachment", None),
        "index.html": ("application/octet-stream", "attachment", PAGE),  # a page a build wrote is never a page
        ".config": ("text/plain; charset=utf-8", "inline", CONFIG_TEXT),
        "System.map": ("text/plain; charset=utf-8", "inline", SYSTEM_MAP),
    }
    for path, (kind, disposition, body) in expected.items():
        answer = served.client.get(f"/jobs/{served.job_id}/artifacts/{path}")
        assert answer.status_code == 200, path
        assert answer.headers["content-type"] == kind, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"].startswith("sandbox")
        assert answer.headers["content-disposition"].startswith(disposition), path
        size = served.runtime.artifacts.path_of(served.digests[path]).stat().st_size
        assert answer.headers["content-length"] == str(size) == str(len(answer.content))
        if body is not None:
            assert answer.content == body


def test_the_log_is_text_never_html(served: Served) -> None:
    answer = served.client.get(f"/jobs/{served.job_id}/log")
    assert answer.status_code == 200 and answer.content == LOG
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-length"] == str(len(LOG))


def test_a_blob_is_streamed_from_an_open_file_not_read_into_memory(served: Served) -> None:
    response = blob_response(served.runtime, served.digests["arch/x86/boot/bzImage"], "bzImage")
    assert isinstance(response, StreamingResponse)
    # Opened before the answer starts: a prune now cannot cut the download short.
    path = served.runtime.artifacts.path_of(served.digests["arch/x86/boot/bzImage"])
    path.unlink()

    async def drain() -> bytes:
        parts = []
        async for chunk in response.body_iterator:
            assert isinstance(chunk, bytes)
            parts.append(chunk)
        return b"".join(parts)

    assert asyncio.run(drain()) == IMAGE


def test_the_job_page_lists_artifacts_with_sizes_and_links(served: Served) -> None:
    page = served.client.get(f"/jobs/{served.job_id}").text
    assert f'href="/jobs/{served.job_id}/artifacts/arch/x86/boot/bzImage"' in page
    assert f"({len(IMAGE)} bytes)" in page and f"({len(CONFIG_TEXT)} bytes)" in page
    assert "evil-missing</td><td>missing from the store" in page
    assert f'href="/jobs/{served.job_id}/artifacts/evil' not in page


def test_a_pruned_job_says_so_instead_of_broken_links(served: Served) -> None:
    page = served.client.get(f"/jobs/{served.pruned_job_id}").text
    assert "Artifacts pruned on 2026-11-30 by the retention policy." in page
    assert "Log pruned on 2026-11-30 by the retention policy." in page
    assert "/artifacts/Image" not in page
    for url in (f"/jobs/{served.pruned_job_id}/artifacts/Image", f"/jobs/{served.pruned_job_id}/log"):
        answer = served.client.get(url)
        assert answer.status_code == 410 and "pruned on 2026-11-30 by the retention policy" in answer.text


# -- the attack: leave the store -------------------------------------------------------------------


def test_paths_that_try_to_leave_the_store_get_404(served: Served, tmp_path: Path) -> None:
    app = served.client.app
    assert isinstance(app, Starlette)
    job = served.job_id
    config_digest = served.digests[".config"]
    # A link where a blob should be: the store never follows it.
    planted = served.runtime.artifacts.path_of(served.digests["System.map"])
    planted.unlink()
    planted.symlink_to(served.runtime.data_dir / "outside.txt")
    attacks = [
        "../../outside.txt", "..%2F..%2Foutside.txt", "%2e%2e/%2e%2e/outside.txt", "%2E%2E%2F%2E%2E%2Foutside.txt",
        "arch/x86/boot/../../../../outside.txt", "./.config", ".config/", "/.config", "//.config",
        f"{tmp_path}/data/outside.txt", f"%2F{str(tmp_path)[1:]}%2Fdata%2Foutside.txt", ".config%00", "%00.config",
        ".config%00.png", "..", "%2e%2e", "", f"{config_digest[:2]}/{config_digest[2:]}", config_digest,
        "arch\\x86\\boot\\bzImage", "arch%5Cx86%5Cboot%5CbzImage", "%252e%252e/outside.txt", ".CONFIG",
        "evil-relative", "evil-absolute", "evil-upper", "evil-short", "evil-missing", "evil-none", "evil-list",
        "System.map",  # the planted link
    ]  # fmt: skip
    assert raw_get(app, f"/jobs/{job}/artifacts/.config")[::2] == (200, CONFIG_TEXT)  # the way in works
    for attack in attacks:
        status, _, body = raw_get(app, f"/jobs/{job}/artifacts/{attack}")
        assert status == 404, (attack, status, body[:80])
        assert OUTSIDE not in body and CONFIG_TEXT not in body, attack
    for attack in ("../../outside.txt", "..%2F..%2F..%2Foutside.txt", "%2e%2e/log"):
        status, _, body = raw_get(app, f"/jobs/{job}/log/{attack}")
        assert status == 404 and OUTSIDE not in body, attack
    # Another job's id, or none, in place of the job: the access check's answers, never a file.
    for path in (f"/jobs/..%2F{job}/artifacts/.config", f"/jobs/{job}%00/artifacts/.config",
                 "/jobs/%2e%2e/artifacts/.config"):  # fmt: skip
        status, _, body = raw_get(app, path)
        assert status in (400, 404) and CONFIG_TEXT not in body, path
