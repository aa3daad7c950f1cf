"""Replays are no-ops: a signed body sent again under a new X-GitHub-Delivery, an old event, a rotated secret."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update
from starlette.testclient import TestClient

from bot.host.config import Config, parse_config
from bot.host.stores import Runtime, open_runtime
from bot.store.deliveries import DeliveryRow, open_delivery_log
from bot.store.models import Delivery
from bot.web import intake as web_intake
from bot.web.app import create_app
from tests.bot.web.webhook_config import REPO, webhook_config
from workers.app import CONTROL_QUEUE, configure
from workers.errors import ConfigError

SECRET = "the current secret"
OLD_SECRET = "the secret being rotated out"


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Bodies in GitHub's documented shapes, with only the fields labgate reads and the times under test.


def repository(updated: datetime, pushed: datetime | int) -> dict[str, Any]:
    return {"full_name": REPO, "clone_url": f"https://github.com/{REPO}.git", "default_branch": "main",
            "updated_at": iso(updated), "pushed_at": pushed if isinstance(pushed, int) else iso(pushed)}  # fmt: skip


def pull_request(sent: datetime, *, title: str = "Update the README") -> dict[str, Any]:
    """A synchronize event whose own times (GitHub's) are all `sent`."""
    user = {"login": "alice", "type": "User"}
    pr = {"number": 7, "title": title, "user": user, "author_association": "MEMBER", "draft": False, "merged": False,
          "created_at": "2026-01-05T10:00:00Z", "updated_at": iso(sent),
          "head": {"sha": "a" * 40, "ref": "topic", "repo": {"full_name": REPO}},
          "base": {"sha": "b" * 40, "ref": "main", "repo": {"full_name": REPO}}}  # fmt: skip
    return {"action": "synchronize", "number": 7, "pull_request": pr, "repository": repository(sent, sent),
            "sender": user}  # fmt: skip


def push(updated: datetime, pushed: int) -> dict[str, Any]:
    """A push: repository.pushed_at is epoch seconds in push payloads."""
    return {"ref": "refs/heads/main", "before": "b" * 40, "after": "c" * 40, "created": False, "deleted": False,
            "forced": False, "pusher": {"name": "alice"}, "sender": {"login": "alice", "type": "User"},
            "repository": repository(updated, pushed),
            "head_commit": {"id": "c" * 40, "timestamp": "2026-01-05T10:00:00+01:00"}}  # fmt: skip


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


@dataclass
class Hook:
    runtime: Runtime
    client: TestClient
    broker: redis.Redis

    def post(self, event: str, body: bytes, *, delivery: str | None = None, secret: str = SECRET) -> Any:
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "X-Hub-Signature-256": signature, "Content-Type": "application/json"}  # fmt: skip
        return self.client.post("/hooks/github", content=body, headers=headers)

    def stored(self) -> list[tuple[str, str, str]]:
        with self.runtime.store.session() as session:
            rows = session.scalars(select(Delivery).order_by(Delivery.id))
            return [(d.delivery_id, d.status, d.detail) for d in rows]

    def queued(self) -> int:
        return int(self.broker.llen(CONTROL_QUEUE))


def make_config(root: Path, **github: Any) -> Config:
    return webhook_config(root, SECRET, **github)


@pytest.fixture
def open_hook(tmp_path: Path, database_url: str, redis_db_url: str) -> Iterator[Any]:
    """Start the app with a config of the test's choosing; everything is closed afterwards."""
    configure(redis_db_url, longest_job_s=60)
    opened: list[Hook] = []

    def start(config: Config) -> Hook:
        runtime = open_runtime(config, database_url=database_url)
        client = TestClient(create_app(runtime))
        client.__enter__()  # one event loop for the whole test
        hook = Hook(runtime, client, redis.Redis.from_url(redis_db_url))
        opened.append(hook)
        return hook

    yield start
    for hook in opened:
        hook.client.__exit__(None, None, None)
        hook.broker.close()
        hook.runtime.store.engine.dispose()


@pytest.fixture
def hook(open_hook: Any, tmp_path: Path) -> Hook:
    started: Hook = open_hook(make_config(tmp_path))
    return started


# --- the same body under a new delivery id ---------------------------------------------------


def test_a_signed_body_replayed_under_a_new_delivery_id_is_a_duplicate(hook: Hook) -> None:
    body = encode(pull_request(datetime.now(UTC)))
    first = hook.post("pull_request", body, delivery="d-1")
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    replay = hook.post("pull_request", body, delivery="d-2")
    assert replay.status_code == 202 and replay.json() == {"status": "duplicate", "delivery": "d-2"}
    # Another X-GitHub-Event over the same signed body is the same replay (the HMAC covers neither header).
    assert hook.post("issue_comment", body, delivery="d-3").json()["status"] == "duplicate"
    assert [row[0] for row in hook.stored()] == ["d-1"]
    assert hook.queued() == 1


def test_a_redelivery_keeps_its_id_and_is_still_a_duplicate(hook: Hook) -> None:
    body = encode(pull_request(datetime.now(UTC)))
    assert hook.post("pull_request", body, delivery="d-1").json()["status"] == "accepted"
    again = hook.post("pull_request", body, delivery="d-1")
    assert again.status_code == 202 and again.json() == {"status": "duplicate", "delivery": "d-1"}
    assert hook.queued() == 1


def test_another_body_under_a_known_id_is_a_duplicate_too(hook: Hook) -> None:
    now = datetime.now(UTC)
    assert hook.post("pull_request", encode(pull_request(now)), delivery="d-1").json()["status"] == "accepted"
    other = encode(pull_request(now, title="Something else"))
    assert hook.post("pull_request", other, delivery="d-1").json()["status"] == "duplicate"
    assert hook.queued() == 1


def test_a_replay_in_the_same_batch_is_a_duplicate(tmp_path: Path, database_url: str, redis_db_url: str) -> None:
    """Deliveries written together: the replay among them is refused by the same INSERT."""
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)

    async def run() -> list[bool]:
        intake = web_intake.open_intake(runtime)
        deliveries = [web_intake.HookDelivery(f"b-{n}", "ping", None, "r", digest)
                      for n, digest in enumerate(["a" * 64, "b" * 64, "a" * 64, "c" * 64])]  # fmt: skip
        taken = await asyncio.gather(*(intake.take(d) for d in deliveries))
        await intake.close()
        return list(taken)

    assert asyncio.run(run()) == [True, True, False, True]
    with runtime.store.session() as session:
        assert sorted(session.scalars(select(Delivery.delivery_id))) == ["b-0", "b-1", "b-3"]
    runtime.store.engine.dispose()


def test_an_unsigned_sender_cannot_poison_the_digests(hook: Hook) -> None:
    """A body sent first without the secret must not make GitHub's own delivery of it a duplicate."""
    body = encode(pull_request(datetime.now(UTC)))
    assert hook.post("pull_request", body, delivery="forged", secret="a guess").status_code == 401
    unsigned = hook.client.post("/hooks/github", content=body, headers={"X-GitHub-Event": "pull_request",
                                                                        "X-GitHub-Delivery": "forged-2"})  # fmt: skip
    assert unsigned.status_code == 401
    assert hook.stored() == []
    genuine = hook.post("pull_request", body, delivery="d-1")
    assert genuine.status_code == 202 and genuine.json()["status"] == "accepted"
    assert hook.queued() == 1


# --- events older than the replay window -------------------------------------------------------


def test_an_event_older_than_the_window_is_ignored_with_the_reason(hook: Hook) -> None:
    old = datetime.now(UTC) - timedelta(days=31)
    answer = hook.post("pull_request", encode(pull_request(old)), delivery="d-old")
    assert answer.status_code == 202
    assert answer.json()["status"] == "ignored"
    assert f"event time {iso(old)} is over 30 days old" in answer.json()["reason"]
    [(delivery, status, detail)] = hook.stored()
    assert (delivery, status) == ("d-old", "ignored") and "replay" in detail
    assert hook.queued() == 0
    # Inside the window it is an event like any other.
    recent = hook.post("pull_request", encode(pull_request(datetime.now(UTC) - timedelta(days=29))))
    assert recent.json()["status"] == "accepted" and hook.queued() == 1


def test_the_newest_of_the_events_times_counts(hook: Hook) -> None:
    """A push: the repository's pushed_at (epoch seconds in push payloads) is the push itself."""
    long_ago = datetime.now(UTC) - timedelta(days=400)
    assert hook.post("push", encode(push(long_ago, int(time.time()) - 60))).json()["status"] == "accepted"
    assert hook.post("push", encode(push(long_ago, int(time.time()) - 40 * 86400))).json()["status"] == "ignored"


def test_a_commit_date_in_the_future_does_not_make_a_push_new(hook: Hook) -> None:
    """Commit dates are the pusher's to set: only GitHub's own times count."""
    payload = push(datetime.now(UTC) - timedelta(days=400), int(time.time()) - 40 * 86400)
    payload["head_commit"]["timestamp"] = "2099-01-01T00:00:00Z"
    assert hook.post("push", encode(payload)).json()["status"] == "ignored"


def test_the_window_is_configured(open_hook: Any, tmp_path: Path) -> None:
    hook = open_hook(make_config(tmp_path, replay_window_days=2))
    three_days = encode(pull_request(datetime.now(UTC) - timedelta(days=3)))
    answer = hook.post("pull_request", three_days)
    assert answer.json()["status"] == "ignored" and "over 2 days old" in answer.json()["reason"]


def test_an_event_without_times_is_judged_by_its_id_and_digest(hook: Hook) -> None:
    body = encode({"zen": "Keep it logically awesome.", "hook_id": 30})  # an organisation hook's ping: no times
    assert hook.post("ping", body, delivery="p-1").json()["status"] == "accepted"
    assert hook.post("ping", body, delivery="p-2").json()["status"] == "duplicate"


# --- digests are kept for the window and a day, then forgotten ---------------------------------


def test_old_digests_are_pruned_and_other_sources_are_kept(tmp_path: Path, database_url: str) -> None:
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)
    rows = [DeliveryRow("github", "old", "push", "accepted", "", "a" * 64),
            DeliveryRow("github", "new", "push", "accepted", "", "b" * 64),
            DeliveryRow("once", "k:pipeline:1", "pipeline", "accepted", "7")]  # fmt: skip

    async def run() -> tuple[int, list[bool]]:
        log = open_delivery_log(runtime.store)
        await log.insert(rows)
        with runtime.store.session() as session:
            session.execute(update(Delivery).where(Delivery.delivery_id.in_(["old", "k:pipeline:1"]))
                            .values(received_at=datetime.now(UTC) - timedelta(days=40)))  # fmt: skip
        pruned = await log.prune("github", datetime.now(UTC) - timedelta(days=31))
        # Forgotten: the old digest may be stored again; the kept one is still a duplicate.
        again = await log.insert([DeliveryRow("github", "old-2", "push", "accepted", "", "a" * 64),
                                  DeliveryRow("github", "new-2", "push", "accepted", "", "b" * 64)])  # fmt: skip
        await log.close()
        return pruned, again

    pruned, again = asyncio.run(run())
    assert pruned == 1 and again == [True, False]
    with runtime.store.session() as session:
        assert sorted(session.scalars(select(Delivery.delivery_id))) == ["k:pipeline:1", "new", "old-2"]
    runtime.store.engine.dispose()


def test_the_intake_prunes_on_its_first_batch_and_then_hourly(tmp_path: Path, database_url: str,
                                                               redis_db_url: str) -> None:  # fmt: skip
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(make_config(tmp_path), database_url=database_url)

    def age(delivery_id: str, days: int) -> None:
        with runtime.store.session() as session:
            session.execute(update(Delivery).where(Delivery.delivery_id == delivery_id)
                            .values(received_at=datetime.now(UTC) - timedelta(days=days)))  # fmt: skip

    def stored() -> list[str]:
        with runtime.store.session() as session:
            return sorted(session.scalars(select(Delivery.delivery_id)))

    async def run() -> list[list[str]]:
        seen = []
        first = web_intake.open_intake(runtime)
        await first.take(web_intake.HookDelivery("a", "ping", None, "r", "a" * 64))
        await first.close()
        age("a", 32)  # past 30 days and the day's margin
        second = web_intake.open_intake(runtime)  # a restarted server prunes on its first batch
        await second.take(web_intake.HookDelivery("b", "ping", None, "r", "b" * 64))
        seen.append(stored())
        age("b", 32)
        await second.take(web_intake.HookDelivery("c", "ping", None, "r", "c" * 64))
        seen.append(stored())  # within the hour: not pruned again
        await second.close()
        return seen

    assert asyncio.run(run()) == [["b"], ["b", "c"]]
    runtime.store.engine.dispose()


# --- secret rotation ------------------------------------------------------------------------------


def rotating(tmp_path: Path, until: datetime) -> Config:
    (tmp_path / "old-secret").write_text(OLD_SECRET + "\n")
    return make_config(tmp_path, previous_webhook_secret_file=tmp_path / "old-secret",
                       previous_webhook_secret_until=until)  # fmt: skip


def test_the_old_secret_is_accepted_inside_the_overlap(open_hook: Any, tmp_path: Path) -> None:
    hook = open_hook(rotating(tmp_path, datetime.now(UTC) + timedelta(hours=1)))
    now = datetime.now(UTC)
    assert hook.post("pull_request", encode(pull_request(now)), secret=OLD_SECRET).json()["status"] == "accepted"
    new = hook.post("pull_request", encode(pull_request(now, title="signed with the new one")), secret=SECRET)
    assert new.json()["status"] == "accepted"
    assert hook.post("pull_request", encode(pull_request(now)), secret="neither").status_code == 401


def test_a_body_replayed_across_a_rotation_under_the_other_secret_is_a_duplicate(open_hook: Any,
                                                                                tmp_path: Path) -> None:  # fmt: skip
    """Captured under the old secret (or redelivered by GitHub under the new one): the same body is
    the same delivery whichever secret signed it, so the replay key cannot be the signature's HMAC."""
    hook = open_hook(rotating(tmp_path, datetime.now(UTC) + timedelta(hours=1)))
    body = encode(pull_request(datetime.now(UTC)))
    assert hook.post("pull_request", body, secret=OLD_SECRET, delivery="first").json()["status"] == "accepted"
    assert hook.post("pull_request", body, secret=SECRET, delivery="second").json()["status"] == "duplicate"
    assert hook.queued() == 1


def test_the_old_secret_is_refused_after_the_overlap(open_hook: Any, tmp_path: Path) -> None:
    hook = open_hook(rotating(tmp_path, datetime.now(UTC) - timedelta(seconds=1)))
    answer = hook.post("pull_request", encode(pull_request(datetime.now(UTC))), secret=OLD_SECRET)
    assert answer.status_code == 401 and "does not match" in answer.json()["error"]
    assert hook.stored() == [] and hook.queued() == 0
    assert hook.post("pull_request", encode(pull_request(datetime.now(UTC)))).json()["status"] == "accepted"


def test_a_running_server_refuses_the_old_secret_once_the_overlap_ends(open_hook: Any, tmp_path: Path) -> None:
    hook = open_hook(rotating(tmp_path, datetime.now(UTC) + timedelta(seconds=1.5)))
    inside = hook.post("pull_request", encode(pull_request(datetime.now(UTC), title="one")), secret=OLD_SECRET)
    assert inside.json()["status"] == "accepted"
    time.sleep(1.6)
    after = hook.post("pull_request", encode(pull_request(datetime.now(UTC), title="two")), secret=OLD_SECRET)
    assert after.status_code == 401


def test_a_previous_secret_needs_an_end_with_a_zone(tmp_path: Path) -> None:
    base = (f"github: {{app_id: 1, private_key_file: {tmp_path}/k, webhook_secret_file: {tmp_path}/s, "
            f"previous_webhook_secret_file: {tmp_path}/old")  # fmt: skip
    with pytest.raises(ConfigError, match="previous_webhook_secret_until go together"):
        parse_config(base + "}\n")
    with pytest.raises(ConfigError, match="previous_webhook_secret_until.*timezone"):
        parse_config(base + ", previous_webhook_secret_until: '2026-12-31T12:00:00'}\n")
    config = parse_config(base + ", previous_webhook_secret_until: '2026-12-31T12:00:00Z'}\n")
    assert config.github is not None and config.github.previous_webhook_secret_until is not None


def test_an_unreadable_previous_secret_stops_the_app(tmp_path: Path) -> None:
    config = make_config(tmp_path, previous_webhook_secret_file=tmp_path / "missing",
                         previous_webhook_secret_until=datetime.now(UTC) + timedelta(hours=1))  # fmt: skip
    runtime = open_runtime(config)
    with pytest.raises(ConfigError, match="github.previous_webhook_secret_file: cannot read"):
        create_app(runtime)
    runtime.store.engine.dispose()
