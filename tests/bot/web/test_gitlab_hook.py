"""POST /hooks/gitlab on the real store and a real Redis broker: the same endpoint body as GitHub's,
in GitLab's words (a clear-text token, optional Standard-Webhooks signing, GitLab's delivery ids)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import select
from starlette.testclient import TestClient

from bot.core.events import ChangeEvent, event_from_json
from bot.host.config import Config, GitLab, Tree, TreeGitLab
from bot.host.stores import Runtime, open_runtime
from bot.store.models import Delivery
from bot.web.app import create_app
from bot.web.intake import EVENT_TASKS
from tests.samples.gitlab import Project, User, merge_request_hook, note_hook
from workers.app import CONTROL_QUEUE, configure
from workers.errors import ConfigError

TOKEN = "glwt-hook-5e1f2a"
KEY = bytes(range(1, 33))
SIGNING_TOKEN = "whsec_" + base64.b64encode(KEY).decode()
TARGET = Project(20, "octo-group/hello")
ALICE = User(5, "alice")


@dataclass
class Hook:
    runtime: Runtime
    client: TestClient
    broker: redis.Redis

    def post(self, event: str, payload: dict[str, Any], *, token: str = TOKEN, **headers: str) -> Any:
        sent = {"X-Gitlab-Event": event, "X-Gitlab-Token": token, "Content-Type": "application/json", **headers}
        return self.client.post("/hooks/gitlab", content=json.dumps(payload).encode(), headers=sent)

    def stored(self) -> list[tuple[str, str, str]]:
        with self.runtime.store.session() as session:
            return [(d.source, d.delivery_id, d.status) for d in session.scalars(select(Delivery))]

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in reversed(self.broker.lrange(CONTROL_QUEUE, 0, -1))]


def make_config(root: Path, *, signing: bool = False, token: str = TOKEN) -> Config:
    (root / "api-token").write_text("glpat-not-used-here")
    (root / "hook-token").write_text(token + "\n")
    (root / "signing-token").write_text(SIGNING_TOKEN)
    gitlab = GitLab(url="https://gitlab.example.org", token_file=root / "api-token",
                    webhook_token_file=root / "hook-token",
                    signing_token_file=root / "signing-token" if signing else None)  # fmt: skip
    tree = Tree(name="hello", url=str(root / "origin"), gitlab=TreeGitLab(project_id=TARGET.id, project=TARGET.path))
    return Config(data_dir=root / "data", gitlab=gitlab, trees=[tree])


@pytest.fixture
def hook(tmp_path: Path, postgres_url: str, redis_db_url: str) -> Iterator[Hook]:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=postgres_url)
    broker = redis.Redis.from_url(redis_db_url)
    with TestClient(create_app(runtime)) as client:
        yield Hook(runtime, client, broker)
    broker.close()
    runtime.store.engine.dispose()


def opened(iid: int = 1) -> dict[str, Any]:
    return merge_request_hook("open", target=TARGET, source=TARGET, iid=iid, head_sha="c" * 40, author=ALICE)


def test_a_merge_request_is_stored_and_enqueued_for_the_gitlab_task(hook: Hook) -> None:
    answer = hook.post("Merge Request Hook", opened(), **{"Idempotency-Key": "k-1"})
    assert answer.status_code == 202 and answer.json() == {
        "status": "accepted", "reason": "merge request !1 open: change opened", "delivery": "k-1"}  # fmt: skip
    assert hook.stored() == [("gitlab", "k-1", "accepted")]
    [message] = hook.queued()
    assert message["headers"]["task"] == EVENT_TASKS["gitlab"] == "bot.gitlab_event"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    event = event_from_json(args[0])
    assert isinstance(event, ChangeEvent) and event.repo.installation_id == TARGET.id and args[1] == "k-1"


def test_gitlab_retries_of_one_event_are_one_delivery(hook: Hook) -> None:
    body = opened(2)
    first = hook.post("Merge Request Hook", body, **{"Idempotency-Key": "k-2", "X-Gitlab-Event-UUID": "u-1"})
    again = hook.post("Merge Request Hook", body, **{"Idempotency-Key": "k-2", "X-Gitlab-Event-UUID": "u-1"})
    assert first.json()["status"] == "accepted" and again.json()["status"] == "duplicate"
    # The same body under a new key (a captured body replayed) is refused by its digest.
    replayed = hook.post("Merge Request Hook", body, **{"Idempotency-Key": "k-3"})
    assert replayed.json()["status"] == "duplicate"
    assert len(hook.queued()) == 1


@pytest.mark.parametrize("token", ["", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper()])
def test_a_wrong_token_is_401_and_nothing_is_stored(hook: Hook, token: str) -> None:
    answer = hook.post("Merge Request Hook", opened(), token=token)
    assert answer.status_code == 401
    assert TOKEN not in answer.text
    assert hook.stored() == [] and hook.queued() == []


def test_a_missing_token_header_is_401(hook: Hook) -> None:
    answer = hook.client.post("/hooks/gitlab", content=json.dumps(opened()).encode(),
                              headers={"X-Gitlab-Event": "Merge Request Hook"})  # fmt: skip
    assert answer.status_code == 401 and hook.stored() == []


def test_an_update_without_new_commits_is_stored_as_ignored_with_its_reason(hook: Hook) -> None:
    body = merge_request_hook("update", target=TARGET, source=TARGET, iid=3, head_sha="c" * 40, author=ALICE)
    answer = hook.post("Merge Request Hook", body)
    assert answer.json()["status"] == "ignored" and "nothing to test" in answer.json()["reason"]
    assert [status for _, _, status in hook.stored()] == ["ignored"] and hook.queued() == []


def test_an_edited_note_is_ignored(hook: Hook) -> None:
    body = note_hook("/ok-to-test", target=TARGET, iid=1, seen_head_sha="c" * 40, by=ALICE, action="update")
    answer = hook.post("Note Hook", body)
    assert answer.json()["status"] == "ignored" and "edited note" in answer.json()["reason"]


def test_a_body_gitlab_sent_but_labgate_cannot_use_is_kept_as_ignored_not_refused(hook: Hook) -> None:
    # GitLab disables a webhook for good after four 4xx answers in a row: a proven delivery gets 202.
    answer = hook.client.post("/hooks/gitlab", content=b"{nope", headers={
        "X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": TOKEN, "Idempotency-Key": "odd-1"})  # fmt: skip
    assert answer.status_code == 202 and answer.json()["status"] == "ignored"
    assert answer.json()["reason"].startswith("not usable: ")
    assert hook.stored() == [("gitlab", "odd-1", "ignored")] and hook.queued() == []
    # Without the token, the same body is refused before anything reads it.
    assert hook.client.post("/hooks/gitlab", content=b"{nope",
                            headers={"X-Gitlab-Event": "Push Hook"}).status_code == 401  # fmt: skip


def test_intake_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    (tmp_path / "hook-token").write_text("\n")
    runtime = open_runtime(config)
    with pytest.raises(ConfigError, match="gitlab.webhook_token_file"):
        create_app(runtime)
    (tmp_path / "hook-token").unlink()
    with pytest.raises(ConfigError, match="gitlab.webhook_token_file"):
        create_app(runtime)
    runtime.store.engine.dispose()


def signed(body: bytes, webhook_id: str, sent_at: float, key: bytes = KEY) -> dict[str, str]:
    stamp = str(int(sent_at))
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": webhook_id, "webhook-timestamp": stamp, "Idempotency-Key": webhook_id,
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}  # fmt: skip


def test_where_the_instance_signs_every_delivery_must_be_signed_and_fresh(tmp_path: Path, redis_db_url: str) -> None:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path, signing=True))
    body = json.dumps(opened(4)).encode()
    base = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": TOKEN, "Content-Type": "application/json"}
    with TestClient(create_app(runtime)) as client:
        unsigned = client.post("/hooks/gitlab", content=body, headers=base)
        assert unsigned.status_code == 401
        stale = client.post("/hooks/gitlab", content=body, headers={**base, **signed(body, "w-1", time.time() - 301)})
        assert stale.status_code == 401
        forged = client.post("/hooks/gitlab", content=body,
                             headers={**base, **signed(body, "w-2", time.time(), key=b"k" * 32)})  # fmt: skip
        assert forged.status_code == 401
        good = client.post("/hooks/gitlab", content=body, headers={**base, **signed(body, "w-3", time.time())})
        assert good.status_code == 202 and good.json()["delivery"] == "w-3"
    runtime.store.engine.dispose()


def test_the_github_hook_is_not_served_when_only_gitlab_is_configured(hook: Hook) -> None:
    assert hook.client.post("/hooks/github", content=b"{}").status_code in (404, 405)


def test_a_delivery_id_is_unique_per_forge(hook: Hook) -> None:
    # GitHub's and GitLab's ids live in one table: the same string from each is two deliveries.
    with hook.runtime.store.session() as session:
        session.add(Delivery(source="github", delivery_id="same-id", event="ping", status="accepted", detail=""))
    answer = hook.post("Merge Request Hook", opened(5), **{"Idempotency-Key": "same-id"})
    assert answer.json()["status"] == "accepted"
    assert sorted(hook.stored()) == [("github", "same-id", "accepted"), ("gitlab", "same-id", "accepted")]


def test_an_event_uuid_is_used_when_there_is_no_idempotency_key(hook: Hook) -> None:
    event_uuid = str(uuid.uuid4())
    answer = hook.post("Merge Request Hook", opened(6), **{"X-Gitlab-Event-UUID": event_uuid})
    assert answer.json()["delivery"] == event_uuid


def test_without_the_token_no_byte_of_the_body_is_held(tmp_path: Path, redis_db_url: str) -> None:
    """Bodies declared huge and never sent, without the token, hold none of the body budget: a real
    delivery still gets in (the token is checked from the head, before the body is read)."""
    configure(redis_db_url, longest_job_s=60)
    config = make_config(tmp_path)
    config = config.model_copy(update={"web": config.web.model_copy(update={"limits": config.web.limits.model_copy(
        update={"max_body_bytes_in_flight": 1 << 20})})})  # fmt: skip
    runtime = open_runtime(config)

    async def scenario() -> list[int]:
        app = create_app(runtime)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:

                async def stalled() -> httpx.Response:
                    async def never() -> Any:
                        yield b"x" * 100
                        await asyncio.sleep(3600)

                    return await client.post("/hooks/gitlab", content=never(), headers={
                        "X-Gitlab-Event": "Push Hook", "Content-Length": str(900_000)})  # fmt: skip

                stalls = [asyncio.ensure_future(stalled()) for _ in range(4)]
                await asyncio.sleep(0.2)
                real = await client.post("/hooks/gitlab", content=json.dumps(opened(7)).encode(), headers={
                    "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": TOKEN})  # fmt: skip
                refused = [await asyncio.wait_for(stall, 10) for stall in stalls]
                return [real.status_code, *[r.status_code for r in refused]]

    codes = asyncio.run(scenario())
    assert codes == [202, 401, 401, 401, 401]
    runtime.store.engine.dispose()
