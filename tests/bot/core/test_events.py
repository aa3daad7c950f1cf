"""Events as task arguments: what the webhook writes, the control worker reads back unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bot.core.events import Actor, ChangeEvent, CommentEvent, RepoRef, event_from_json, event_to_json

REPO = RepoRef(forge="github", full_name="o/r", clone_url="https://example.invalid/o/r.git",
               default_branch="main", installation_id=7)  # fmt: skip


def test_text_of_any_script_and_quotes_round_trip() -> None:
    event = ChangeEvent(action="updated", repo=REPO, number=3, head_sha="a" * 40, head_ref="fix",
                        head_repo="fork/r", base_ref="main", base_sha="b" * 40,
                        title='net: fix "ΔT" overflow in 日本 driver \\ \u2028 \x00 end',
                        author=Actor("zoë", "CONTRIBUTOR", False), sender=Actor("bot[bot]", None, True),
                        updated_at=datetime(2026, 12, 7, 10, 0, 1, tzinfo=UTC))  # fmt: skip
    text = event_to_json(event)
    assert event_from_json(text) == event
    assert json.loads(text)["type"] == "ChangeEvent"


def test_a_comment_body_with_json_inside_stays_text() -> None:
    body = '/retest\n{"type": "PingEvent", "data": {}}'
    event = CommentEvent(repo=REPO, number=3, comment_id=9, body=body, commenter=Actor("m", "MEMBER", False),
                         created_at=None)  # fmt: skip
    decoded = event_from_json(event_to_json(event))
    assert isinstance(decoded, CommentEvent) and decoded.body == body
