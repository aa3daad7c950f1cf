"""POST /hooks/github on the real store (SQLite and PostgreSQL) and a real Redis broker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select
from starlette.testclient import TestClient

from bot.core.events import event_from_json, event_to_json
from bot.forges.github import sansio
from bot.host.config import Config, GitHubApp, Tree, TreeGitHub
from bot.host.stores import Runtime, open_runtime
from bot.store.deliveries import DeliveryRow, open_delivery_log
from bot.store.models import Delivery
from bot.web import hooks
from bot.web import intake as web_intake
from bot.web.app import create_app
from tests.samples import github_body, github_payload, sent_now
from workers.app import CONTROL_QUEUE, app, configure
from workers.errors import ConfigError

SECRET = "It's a Secret to Everybody"
REPO = "octo-org/hello"


@dataclass
class Hook:
    runtime: Runtime
    client: TestClient
    broker: redis.Redis

    def post(self, event: str, body: bytes, *, delivery: str | None = None, secret: str = SECRET,
             headers: dict[str, str] | None = None) -> Any:  # fmt: skip
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        sent = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                "X-Hub-Signature-256": signature, "Content-Type": "application/json", **(headers or {})}  # fmt: skip
        return self.client.post("/hooks/github", content=body, headers=sent)

    def stored(self) -> list[tuple[str, str, str]]:
        with self.runtime.store.session() as session:
            return [(d.delivery_id, d.event, d.status) for d in session.scalars(select(Delivery))]

    def queued(self) -> list[dict[str, Any]]:
        """Messages waiting in the control queue, oldest first, as kombu's Redis transport stores them."""
        return [json.loads(raw) for raw in reversed(self.broker.lrange(CONTROL_QUEUE, 0, -1))]


def pull_request_body() -> bytes:
    # A pull request of REPO, sent now: an event whose own times are all older than
    # github.replay_window_days is taken for a replay.
    return json.dumps(sent_now(github_payload("pull_request/synchronize.json"))).encode()


def make_config(root: Path, secret: str | None = SECRET) -> Config:
    (root / "app.pem").write_text("-----BEGIN PRIVATE KEY-----\nthrowaway\n-----END PRIVATE KEY-----\n")
    if secret is not None:
        (root / "secret").write_text(secret + "\n")
    github = GitHubApp(app_id=1, private_key_file=root / "app.pem", webhook_secret_file=root / "secret")
    tree = Tree(name="hello", url=str(root / "origin"), github=TreeGitHub(repo=REPO))
    return Config(data_dir=root / "data", github=github, trees=[tree])


@pytest.fixture
def hook(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[Hook]:
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    broker = redis.Redis.from_url(redis_db_url)
    with TestClient(create_app(runtime)) as client:  # one event loop for the whole test
        yield Hook(runtime, client, broker)
    broker.close()
    runtime.store.engine.dispose()


def test_good_delivery_is_stored_and_enqueued_once(hook: Hook) -> None:
    body = pull_request_body()
    answer = hook.post("pull_request", body, delivery="d-1")
    assert answer.status_code == 202
    assert answer.json()["status"] == "accepted" and answer.json()["delivery"] == "d-1"
    assert hook.stored() == [("d-1", "pull_request", "accepted")]
    [message] = hook.queued()
    assert message["headers"]["task"] == web_intake.GITHUB_EVENT_TASK
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    expected = sansio.parse({"X-GitHub-Event": "pull_request"}, body).event
    assert kwargs == {} and args[1] == "d-1"
    assert event_from_json(args[0]) == expected


def test_redelivery_is_a_duplicate_stored_and_enqueued_once(hook: Hook) -> None:
    body = pull_request_body()
    assert hook.post("pull_request", body, delivery="d-2").json()["status"] == "accepted"
    again = hook.post("pull_request", body, delivery="d-2")
    assert again.status_code == 202 and again.json() == {"status": "duplicate", "delivery": "d-2"}
    assert len(hook.stored()) == 1
    assert len(hook.queued()) == 1


def test_bad_signature_is_401_and_nothing_is_stored(hook: Hook) -> None:
    body = pull_request_body()
    assert hook.post("pull_request", body, secret="not the secret").status_code == 401
    unsigned = hook.client.post("/hooks/github", content=body, headers={"X-GitHub-Event": "pull_request",
                                                                        "X-GitHub-Delivery": "d-3"})  # fmt: skip
    assert unsigned.status_code == 401
    # Signed, then changed in transit.
    tampered = hook.post("pull_request", body, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert tampered.status_code == 401
    assert hook.stored() == [] and hook.queued() == []


def test_malformed_json_is_400_and_nothing_is_stored(hook: Hook) -> None:
    answer = hook.post("pull_request", b'{"action": "synchronize",')
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    assert hook.post("pull_request", pull_request_body(), delivery="x" * 201).status_code == 400
    assert hook.stored() == [] and hook.queued() == []


def test_oversize_is_413_declared_or_streamed(hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    declared = hook.client.post("/hooks/github", content=b"{}",
                                headers={"Content-Length": str(hooks.MAX_BODY_BYTES + 1)})  # fmt: skip
    assert declared.status_code == 413
    monkeypatch.setattr(hooks, "MAX_BODY_BYTES", 1000)
    # No Content-Length (chunked): the cap holds while reading. (The cap is read when the endpoint is made.)
    with TestClient(create_app(hook.runtime)) as small_cap:
        streamed = small_cap.post("/hooks/github", content=iter([b"x" * 600, b"x" * 600]),
                                  headers={"X-GitHub-Event": "ping"})  # fmt: skip
    assert streamed.status_code == 413
    assert hook.stored() == [] and hook.queued() == []


def test_ignored_event_is_stored_as_ignored_and_not_enqueued(hook: Hook) -> None:
    answer = hook.post("status", github_body("status/payload.json"), delivery="d-4")
    assert answer.status_code == 202
    assert answer.json()["status"] == "ignored" and "reports" in answer.json()["reason"]
    assert hook.stored() == [("d-4", "status", "ignored")]
    assert hook.queued() == []


@pytest.mark.parametrize("secret", [None, "", "  \n"])
def test_app_refuses_to_start_without_a_webhook_secret(tmp_path: Path, secret: str | None) -> None:
    runtime = open_runtime(make_config(tmp_path, secret=secret))
    with pytest.raises(ConfigError, match="webhook_secret_file"):
        create_app(runtime)
    runtime.store.engine.dispose()


def test_message_is_the_one_send_task_writes(redis_db_url: str) -> None:
    """The control worker must not tell our message from Celery's own (ids and argsrepr aside)."""
    configure(redis_db_url, longest_job_s=60)
    args = ['{"type": "PingEvent"}', "d-5"]
    app.send_task(web_intake.GITHUB_EVENT_TASK, args=args, queue=CONTROL_QUEUE)
    with redis.Redis.from_url(redis_db_url) as broker:
        theirs = json.loads(broker.rpop(CONTROL_QUEUE))  # type: ignore[arg-type]
    ours = json.loads(web_intake.ControlQueue().message(web_intake.GITHUB_EVENT_TASK, args))
    for message in (theirs, ours):
        for key in ("id", "root_id", "argsrepr"):
            message["headers"].pop(key)
        for key in ("correlation_id", "delivery_tag"):
            message["properties"].pop(key)
        message["body"] = json.loads(base64.b64decode(message.pop("body")))
    assert ours == theirs


def test_kombu_reads_the_message(hook: Hook) -> None:
    hook.post("pull_request", pull_request_body(), delivery="d-6")
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(CONTROL_QUEUE)
        message = queue.get(timeout=5)
        assert message.headers["task"] == web_intake.GITHUB_EVENT_TASK
        assert message.payload[0][1] == "d-6"
        message.ack()
        queue.close()


def test_event_json_round_trips() -> None:
    for path in ("pull_request/synchronize.json", "ping/payload.json", "push/payload.json"):
        name = path.split("/")[0]
        event = sansio.parse({"X-GitHub-Event": name}, github_body(path)).event
        assert event is not None
        assert event_from_json(event_to_json(event)) == event


def test_concurrent_deliveries_share_batches_and_stay_exact(tmp_path: Path, database_url: str,
                                                            redis_db_url: str) -> None:  # fmt: skip
    """Deliveries arriving together are written together: each stored once, each new one enqueued once,
    a redelivery inside the same batch is still a duplicate, and one the store refuses fails alone."""
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    body = pull_request_body()
    event = sansio.parse({"X-GitHub-Event": "pull_request"}, body).event

    async def run() -> tuple[list[bool], list[bool | BaseException]]:
        intake = web_intake.open_intake(runtime)

        def take(delivery_id: str) -> Any:
            return intake.take(web_intake.HookDelivery(delivery_id, "pull_request", event, "r"))

        together = await asyncio.gather(*(take(i) for i in [f"c-{n}" for n in range(20)] + ["c-0", "c-1"]))
        # 300 characters: over the column's 200, which PostgreSQL enforces (SQLite does not).
        with_a_bad_one = await asyncio.gather(take("c-20"), take("c-x" * 100), take("c-21"), return_exceptions=True)
        await intake.close()
        return together, with_a_bad_one

    together, with_a_bad_one = asyncio.run(run())
    assert together == [True] * 20 + [False, False]
    with runtime.store.session() as session:
        stored = {d.delivery_id for d in session.scalars(select(Delivery))}
    with redis.Redis.from_url(redis_db_url) as broker:
        queued = broker.llen(CONTROL_QUEUE)
    good = {f"c-{n}" for n in range(22)}
    if runtime.store.engine.dialect.name == "postgresql":
        assert with_a_bad_one[0] is True and with_a_bad_one[2] is True
        assert isinstance(with_a_bad_one[1], Exception)
        assert stored == good and queued == 22
    else:
        assert with_a_bad_one == [True, True, True] and stored == good | {"c-x" * 100} and queued == 23
    runtime.store.engine.dispose()


def test_delivery_log_reports_redeliveries(tmp_path: Path, database_url: str) -> None:
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    rows = [DeliveryRow("github", "r-1", "push", "accepted", ""), DeliveryRow("github", "r-1", "push", "accepted", ""),
            DeliveryRow("gitlab", "r-1", "push", "accepted", "")]  # fmt: skip

    async def run() -> tuple[list[bool], list[bool]]:
        log = open_delivery_log(runtime.store)
        first, second = await log.insert(rows), await log.insert(rows[:1])
        await log.close()
        return first, second

    assert asyncio.run(run()) == ([True, False, True], [False])
    runtime.store.engine.dispose()
