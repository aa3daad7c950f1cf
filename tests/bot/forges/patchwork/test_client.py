"""PatchworkClient against FakePatchwork: pages to the end, series, mbox, checks, errors in the server's words."""

from __future__ import annotations

import socket

import httpx
import pytest

from bot.forges.patchwork.client import PatchworkClient, PatchworkError, classify_error
from tests.bot.forges.patchwork.conftest import PROJECT
from tests.fakes.patchwork_api import NO_PERMISSION, FakePatchwork


@pytest.fixture(autouse=True)
def seven_series(pw: FakePatchwork) -> None:
    for n in range(7):
        pw.add_series(PROJECT, f"series {n}", [f"patch {n}.1", f"patch {n}.2"])


def test_event_pages_follow_link_next_to_the_end(pw: FakePatchwork) -> None:
    with PatchworkClient(pw.base_url) as client:
        pages = list(client.event_pages(project=PROJECT, category="series-completed", per_page=3))
    assert [len(p.events) for p in pages] == [3, 3, 1] and pages[-1].next_url is None
    names = [e["payload"]["series"]["name"] for p in pages for e in p.events]
    assert names == [f"series {n}" for n in reversed(range(7))]  # newest first, as the server orders
    asked = pw.requests_to("GET", "/api/events/")
    assert [r.query.get("page") for r in asked] == [None, "2", "3"]
    assert all(r.query["category"] == "series-completed" and r.query["project"] == PROJECT for r in asked)


def test_series_mbox_and_patch(pw: FakePatchwork) -> None:
    with PatchworkClient(pw.base_url) as client:
        series = client.series(1)
        mbox = client.mbox(series["mbox"])
        patch = client.patch(series["patches"][0]["id"])
    assert series["name"] == "series 0" and b"Subject: [1/2] patch 0.1" in mbox
    assert patch["series"][0]["id"] == 1


def test_post_check_with_token(pw: FakePatchwork) -> None:
    with PatchworkClient(pw.base_url, pw.add_token("labgate-bot")) as client:
        created = client.post_check(1, state="success", context="labgate-build", target_url="https://ci.invalid/1",
                                    description="pass")  # fmt: skip
    assert created["state"] == "success" and pw.checks(1)[0]["context"] == "labgate-build"
    assert pw.requests_to("POST", "/api/patches/1/checks/")[0].headers["authorization"].startswith("Token ")


@pytest.mark.parametrize(
    ("user", "body", "status", "words"),
    [
        ("stranger", {"state": "success", "context": "labgate-build"}, 403, NO_PERMISSION),
        (None, {"state": "success", "context": "labgate-build"}, 403, NO_PERMISSION),
        ("labgate-bot", {"state": "success", "context": "labgate / build"}, 400,
         'context: Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.'),
        ("labgate-bot", {"state": "passed", "context": "labgate-build"}, 400, 'state: "passed" is not a valid choice.'),
    ],
)  # fmt: skip
def test_refusals_carry_the_servers_words_and_are_not_transient(pw: FakePatchwork, user: str | None,
                                                                body: dict[str, str], status: int,
                                                                words: str) -> None:  # fmt: skip
    with PatchworkClient(pw.base_url, pw.add_token(user) if user else None) as client, \
            pytest.raises(PatchworkError) as raised:  # fmt: skip
        client.post_check(1, **body)
    assert (raised.value.status, raised.value.detail) == (status, words)
    assert words in str(raised.value)
    verdict = classify_error(raised.value)
    assert verdict is not None and not verdict.transient
    assert pw.checks(1) == []


def test_server_errors_and_no_connection_are_transient(pw: FakePatchwork) -> None:
    pw.fail_next("GET", "/api/events/", 503, headers={"Retry-After": "7"})
    with PatchworkClient(pw.base_url) as client, pytest.raises(PatchworkError) as raised:
        list(client.event_pages(project=PROJECT, category="series-completed"))
    assert classify_error(raised.value) is not None and classify_error(raised.value).transient  # type: ignore[union-attr]
    assert raised.value.retry_after_s == 7
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with PatchworkClient(f"http://127.0.0.1:{port}") as client, pytest.raises(PatchworkError) as refused:
        client.post_check(1, state="success", context="x")
    assert refused.value.status is None and classify_error(refused.value).transient  # type: ignore[union-attr]
    assert classify_error(httpx.ConnectError("down")).transient  # type: ignore[union-attr]
    assert classify_error(ValueError("ours")) is None


def test_attack_link_next_to_another_host_is_not_followed(pw: FakePatchwork) -> None:
    """A Link header naming another origin would carry our token there: refused, nothing sent."""
    evil = '<http://127.0.0.2:9/api/events/?page=2>; rel="next"'
    pw.fail_next("GET", "/api/events/", 200, body=[], headers={"Link": evil})
    with (
        PatchworkClient(pw.base_url, "secret-token") as client,
        pytest.raises(PatchworkError, match="not on the configured"),
    ):
        list(client.event_pages(project=PROJECT, category="series-completed"))


def test_attack_link_chain_that_loops_stops(pw: FakePatchwork) -> None:
    loop = f'<{pw.base_url}/api/events/?category=series-completed&per_page=100&project={PROJECT}>; rel="next"'
    pw.fail_next("GET", "/api/events/", 200, body=[], headers={"Link": loop}, times=5)
    with PatchworkClient(pw.base_url) as client, pytest.raises(PatchworkError, match="loops"):
        list(client.event_pages(project=PROJECT, category="series-completed"))


def test_attack_mbox_elsewhere_or_too_large_is_refused(pw: FakePatchwork) -> None:
    big = pw.add_series(PROJECT, "huge", ["big"], mbox=b"x" * 5000)
    with PatchworkClient(pw.base_url, max_mbox_bytes=4096) as client:
        with pytest.raises(PatchworkError, match="allowed"):
            client.mbox(client.series(big)["mbox"])
        with pytest.raises(PatchworkError, match="not on the configured"):
            client.mbox("http://127.0.0.2:9/series/1/mbox/")


def test_attack_malformed_event_pages_say_so(pw: FakePatchwork) -> None:
    for body in ({"detail": "x"}, [{"id": "1"}], "<html>proxy</html>"):
        pw.fail_next("GET", "/api/events/", 200, body=body)
        with PatchworkClient(pw.base_url) as client, pytest.raises(PatchworkError) as raised:
            list(client.event_pages(project=PROJECT, category="series-completed"))
        assert raised.value.status == 200 and not raised.value.transient
