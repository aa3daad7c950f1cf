"""FakePatchwork, checked against a real Patchwork's answers and its OpenAPI schema (../shared/fixtures/patchwork)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.patchwork_api import BAD_SLUG, NO_PERMISSION, FakePatchwork
from tests.shared_fixtures import shared_fixture

PROJECT = "linux-integrity"


@pytest.fixture
def pw() -> Iterator[FakePatchwork]:
    with FakePatchwork() as fake:
        fake.add_project(PROJECT, "Linux Integrity", "linux-integrity.vger.kernel.org")
        for user in ("ci-bot", "nobody", "ebiggers"):
            fake.add_user(user)
        fake.add_maintainer(PROJECT, "ci-bot")
        fake.add_series(PROJECT, "Convert lib/digsig.c to SHA-1 library", ["integrity: Select CRYPTO", "lib/digsig"])
        fake.add_series(PROJECT, "char: tpm: Kconfig", ["char: tpm: Kconfig", "cr50_i2c"], version=2, cover=False)
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as shared:
        yield shared


def token(pw: FakePatchwork, user: str) -> dict[str, str]:
    return {"Authorization": f"Token {pw.add_token(user)}"}


def real(name: str) -> Any:
    return json.loads((shared_fixture("patchwork/responses") / name).read_text())


# ---- the real server's answers, shape for shape ---------------------------------------------------------------


def _shape(value: Any) -> Any:
    """Keys and JSON types, recursively (lists by the shape of their first item)."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def _same_shape(ours: Any, theirs: Any, where: str = "$") -> list[str]:
    """Where `ours` differs from the real answer: missing or extra keys, other types (None on either side
    passes: a nullable field may be null in one answer and not in the other)."""
    if where.endswith((".headers", ".tags")) and isinstance(ours, dict):  # the mail's own headers: any names
        return []
    if isinstance(theirs, dict) and isinstance(ours, dict):
        problems = [f"{where}.{k} missing" for k in theirs.keys() - ours.keys()]
        problems += [f"{where}.{k} extra" for k in ours.keys() - theirs.keys()]
        for key in theirs.keys() & ours.keys():
            problems += _same_shape(ours[key], theirs[key], f"{where}.{key}")
        return problems
    if isinstance(theirs, list) and isinstance(ours, list):
        return _same_shape(ours[0], theirs[0], f"{where}[0]") if ours and theirs else []
    if theirs is None or ours is None or type(ours) is type(theirs):
        return []
    return [f"{where}: {type(ours).__name__}, the real server has {type(theirs).__name__}"]


def test_answers_have_the_real_servers_shapes(pw: FakePatchwork, http: httpx.Client) -> None:
    bot = token(pw, "ci-bot")
    check = {"state": "success", "target_url": "https://ci.example.invalid/runs/1", "context": "ci-build",
             "description": "Build and unit tests passed"}  # fmt: skip
    created = http.post(f"{pw.base_url}/api/1.4/patches/1/checks/", json=check, headers=bot)
    form = http.post(f"{pw.base_url}/api/1.4/patches/1/checks/", data={**check, "state": "warning"}, headers=bot)
    assert (created.status_code, form.status_code) == (201, 201)
    pairs = {
        "api-check-create.json": created.json(),
        "api-check-create-form.json": form.json(),
        "api-checks-list.json": http.get(f"{pw.base_url}/api/1.4/patches/1/checks/").json(),
        "api-events-all.json": http.get(f"{pw.base_url}/api/1.4/events/").json(),
        "api-events-series-completed.json": http.get(f"{pw.base_url}/api/1.4/events/?category=series-completed").json(),
        "api-events-check-created.json": http.get(f"{pw.base_url}/api/1.4/events/?category=check-created").json(),
        "api-series-1.json": http.get(f"{pw.base_url}/api/1.4/series/1/").json(),
        "api-patch-1.json": http.get(f"{pw.base_url}/api/1.4/patches/1/").json(),
    }  # fmt: skip
    for name, ours in pairs.items():
        theirs = real(name)
        if name.startswith("api-events"):  # one event of each category the real capture has, by category
            by_category = {e["category"]: e for e in theirs}
            for event in ours:
                if event["category"] in by_category:
                    assert _same_shape(event, by_category[event["category"]]) == [], (name, event["category"])
            continue
        assert _same_shape(ours, theirs) == [], name
    assert pairs["api-patch-1.json"]["check"] == "warning"  # the latest check per context, worst first
    assert pairs["api-patch-1.json"]["checks"] == f"{pw.base_url}/api/patches/1/checks/"  # unversioned, as there
    assert pairs["api-series-1.json"]["mbox"] == f"{pw.base_url}/series/1/mbox/"
    without_cover = http.get(f"{pw.base_url}/api/series/2/").json()
    assert without_cover["cover_letter"] is None and without_cover["name"] == "char: tpm: Kconfig"


def test_check_refusals_say_exactly_what_the_real_server_says(pw: FakePatchwork, http: httpx.Client) -> None:
    url = f"{pw.base_url}/api/1.4/patches/1/checks/"
    good = {"state": "success", "context": "ci-build"}
    cases = {
        "api-check-anon.json": http.post(url, json=good),
        "api-check-nobody.json": http.post(url, json=good, headers=token(pw, "nobody")),
        "api-check-bad-state.json": http.post(url, json={**good, "state": "passed"}, headers=token(pw, "ci-bot")),
        "api-check-bad-context.json": http.post(url, json={**good, "context": "ci/build"}, headers=token(pw, "ci-bot")),
    }
    written = (shared_fixture("patchwork/responses") / "check-codes.txt").read_text()
    codes = dict(re.findall(r"([\w()-]+)=(\d+)", written))
    expected_codes = {"api-check-anon.json": codes["anon"], "api-check-nobody.json": codes["nobody"],
                      "api-check-bad-state.json": codes["bad-state"],
                      "api-check-bad-context.json": codes["slash-context"]}  # fmt: skip
    for name, answer in cases.items():
        assert answer.json() == real(name), name
        assert str(answer.status_code) == expected_codes[name], name
    assert real("api-check-anon.json") == {"detail": NO_PERMISSION}
    assert real("api-check-bad-context.json") == {"context": [BAD_SLUG]}
    assert pw.checks(1) == []


def test_link_header_is_built_as_the_real_one_is(pw: FakePatchwork, http: httpx.Client) -> None:
    head = (shared_fixture("patchwork/responses") / "api-series-page1.headers").read_text()
    real_link = next(line for line in head.splitlines() if line.startswith("Link:"))
    rels = lambda link: re.findall(r'<[^>]*\?([^>]*)>; rel="(\w+)"', link)  # noqa: E731
    assert [rel for _, rel in rels(real_link)] == ["next", "first", "last"]
    answer = http.get(f"{pw.base_url}/api/1.4/events/", params={"per_page": "1", "order": "id"})
    ours = rels(answer.headers["Link"])
    assert [rel for _, rel in ours] == ["next", "first", "last"]
    # The query is re-encoded sorted by name, as DRF's replace_query_param does (order, page, per_page).
    assert [q for q, _ in ours][:2] == ["order=id&page=2&per_page=1", "order=id&page=1&per_page=1"]
    assert [q for q, _ in rels(real_link)][:2] == ["order=id&page=2&per_page=1", "order=id&page=1&per_page=1"]


# ---- the OpenAPI schema ---------------------------------------------------------------------------------------


class _Schema:
    """The parts of OpenAPI 3.1 (JSON Schema 2020-12) Patchwork's schema uses: $ref, type (or a list of
    types), allOf/anyOf/oneOf, enum, properties, required, items, pattern, maxLength."""

    _TYPES: dict[str, tuple[type, ...]] = {"object": (dict,), "array": (list,), "string": (str,), "null": (type(None),),
                                           "boolean": (bool,), "integer": (int,), "number": (int, float)}  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.document = yaml.safe_load(path.read_text())

    def component(self, name: str) -> dict[str, Any]:
        return dict(self.document["components"]["schemas"][name])

    def errors(self, value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.errors(value, self.component(schema["$ref"].rsplit("/", 1)[1]), where)
        found = [e for sub in schema.get("allOf", []) for e in self.errors(value, sub, where)]
        for key in ("anyOf", "oneOf"):
            if key in schema and all(self.errors(value, sub, where) for sub in schema[key]):
                found.append(f"{where} matches no {key} branch")
        kinds = schema.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if kinds and not any(isinstance(value, self._TYPES[k]) and not (k != "boolean" and value is True)
                             for k in kinds):  # fmt: skip
            return [*found, f"{where}={value!r} is not {'/'.join(kinds)}"]
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{where}={value!r} not in {schema['enum']}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                found.append(f"{where}={value!r} does not match {schema['pattern']}")
            if len(value) > schema.get("maxLength", len(value)):
                found.append(f"{where} longer than {schema['maxLength']}")
        if isinstance(value, dict):
            found += [f"{where}.{name} missing" for name in schema.get("required", []) if name not in value]
            for name, sub in schema.get("properties", {}).items():
                if name in value:
                    found += self.errors(value[name], sub, f"{where}.{name}")
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                found += self.errors(item, schema["items"], f"{where}[{index}]")
        return found


@pytest.mark.parametrize("version", ["latest", "v1.4"])
def test_answers_follow_the_openapi_schema(pw: FakePatchwork, http: httpx.Client, version: str) -> None:
    schema = _Schema(shared_fixture(f"patchwork/schemas/{version}/patchwork.yaml"))
    prefix = "/api/" if version == "latest" else "/api/1.4/"
    pw.add_user("maint")
    pw.add_maintainer(PROJECT, "maint")
    pw.delegate(3, "maint", by="maint")
    bot = token(pw, "ci-bot")
    operations = schema.document["paths"]
    base = prefix.rstrip("/")
    answers = {
        ("post", "/patches/{patch_id}/checks", "201"): http.post(
            f"{pw.base_url}{prefix}patches/1/checks/", headers=bot,
            json={"state": "fail", "context": "labgate-build", "target_url": "https://ci.example.invalid/1"}),
        ("post", "/patches/{patch_id}/checks", "400"): http.post(
            f"{pw.base_url}{prefix}patches/1/checks/", headers=bot, json={"state": "passed", "context": "a/b"}),
        ("post", "/patches/{patch_id}/checks", "403"): http.post(f"{pw.base_url}{prefix}patches/1/checks/", json={}),
        ("post", "/patches/{patch_id}/checks", "404"): http.post(f"{pw.base_url}{prefix}patches/99/checks/",
                                                                 headers=bot, json={"state": "success"}),
        ("get", "/patches/{patch_id}/checks", "200"): http.get(f"{pw.base_url}{prefix}patches/1/checks/"),
        ("get", "/events", "200"): http.get(f"{pw.base_url}{prefix}events/", params={"per_page": 250}),
        ("get", "/series/{id}", "200"): http.get(f"{pw.base_url}{prefix}series/1/"),
        ("get", "/series/{id}", "404"): http.get(f"{pw.base_url}{prefix}series/99/"),
        ("get", "/patches/{id}", "200"): http.get(f"{pw.base_url}{prefix}patches/3/"),
    }  # fmt: skip
    categories = set()
    for (method, path, status), answer in answers.items():
        assert str(answer.status_code) == status, (method, path, answer.text)
        described = operations[base + path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema.errors(answer.json(), described) == [], (method, path, status)
        if path == "/events":
            categories = {e["category"] for e in answer.json()}
    assert {"series-created", "series-completed", "patch-delegated", "check-created"} <= categories


# ---- behaviour the poller relies on ---------------------------------------------------------------------------


def test_since_is_inclusive_before_exclusive_newest_first(pw: FakePatchwork, http: httpx.Client) -> None:
    everything = http.get(f"{pw.base_url}/api/events/", params={"per_page": 250}).json()
    dates = [e["date"] for e in everything]
    assert dates == sorted(dates, reverse=True) and len(set(dates)) == len(dates)
    middle = everything[3]
    since = http.get(f"{pw.base_url}/api/events/", params={"since": middle["date"], "per_page": 250}).json()
    assert [e["id"] for e in since] == [e["id"] for e in everything[:4]]  # the event at `since` comes back
    before = http.get(f"{pw.base_url}/api/events/", params={"before": middle["date"], "per_page": 250}).json()
    assert [e["id"] for e in before] == [e["id"] for e in everything[4:]]
    for bad in ("2026-11-22T19:45:00Z", "2026-11-22T19:45:00+11:00", "yesterday"):
        answer = http.get(f"{pw.base_url}/api/events/", params={"since": bad})
        assert (answer.status_code, answer.json()) == (400, {"since": ["Enter a valid date/time."]})


def test_pages_follow_to_the_end_and_a_page_past_it_is_404(pw: FakePatchwork, http: httpx.Client) -> None:
    url: str | None = f"{pw.base_url}/api/events/?project={PROJECT}&per_page=3"
    seen = []
    while url:
        answer = http.get(url)
        seen += [e["id"] for e in answer.json()]
        url = answer.links.get("next", {}).get("url")
    assert seen == sorted(seen, reverse=True) and len(seen) == len(pw.events())
    past = http.get(f"{pw.base_url}/api/events/", params={"per_page": 3, "page": 99})
    assert (past.status_code, past.json()) == (404, {"detail": "Invalid page."})
    capped = http.get(f"{pw.base_url}/api/events/", params={"per_page": 100000})
    assert capped.status_code == 200 and 'rel="next"' not in capped.headers["Link"]


def test_server_clock_across_dst_makes_naive_dates_go_back(http: httpx.Client) -> None:
    with FakePatchwork(timezone="Europe/London", now=datetime(2026, 10, 25, 0, 59, 59, tzinfo=UTC)) as pw:
        pw.add_project(PROJECT)
        pw.add_series(PROJECT, "before the change", ["a"])
        pw.advance(2)  # 01:59:59 BST, then 01:00:01 GMT
        pw.add_series(PROJECT, "after the change", ["b"])
        events = http.get(f"{pw.base_url}/api/events/", params={"category": "series-completed"}).json()
        # Newest first by date: the later series sorts *after* the earlier one, its naive date being smaller.
        assert [e["payload"]["series"]["name"] for e in events] == ["before the change", "after the change"]
        assert [e["date"][:19] for e in events] == ["2026-10-25T01:59:59", "2026-10-25T01:00:01"]
        with pytest.raises(ValueError, match="aware"):
            pw.set_clock(datetime(2026, 1, 1))


def test_tokens_and_who_may_post(pw: FakePatchwork, http: httpx.Client) -> None:
    url, other = f"{pw.base_url}/api/patches/1/checks/", f"{pw.base_url}/api/patches/2/checks/"
    good = {"state": "pending", "context": "labgate-build"}
    bot, biggers = token(pw, "ci-bot"), token(pw, "ebiggers")
    assert http.post(url, json=good, headers={"Authorization": f"Bearer {pw.add_token('ci-bot')}"}).status_code == 403
    invalid = http.post(url, json=good, headers={"Authorization": "Token not-a-token"})
    assert (invalid.status_code, invalid.json()) == (403, {"detail": "Invalid token."})
    assert http.post(url, json=good, headers=biggers).status_code == 403
    pw.delegate(1, "ebiggers", by="ci-bot")  # the delegate may post on that patch, not on its neighbour
    assert http.post(url, json=good, headers=biggers).status_code == 201
    assert http.post(other, json=good, headers=biggers).status_code == 403
    long_context = http.post(url, json={**good, "context": "x" * 256}, headers=bot)
    assert long_context.json() == {"context": ["Ensure this field has no more than 255 characters."]}
    long_url = http.post(url, json={**good, "target_url": "https://x.invalid/" + "a" * 200}, headers=bot)
    assert long_url.json() == {"target_url": ["Ensure this field has no more than 200 characters."]}
    assert [c["user"]["username"] for c in pw.checks(1)] == ["ebiggers"]
    statuses = [r.status for r in pw.requests_to("POST", r"/api/patches/\d+/checks/")]
    assert statuses == [403, 403, 403, 201, 403, 400, 400]


def test_failure_injection_and_hooks(pw: FakePatchwork, http: httpx.Client) -> None:
    pw.fail_next("GET", r"/api/events/", 503, times=2)
    assert [http.get(f"{pw.base_url}/api/events/").status_code for _ in range(3)] == [503, 503, 200]
    pw.lose_answer_next("POST", r"/api/patches/1/checks/")
    lost = http.post(f"{pw.base_url}/api/patches/1/checks/", json={"state": "success"}, headers=token(pw, "ci-bot"))
    assert lost.status_code == 502 and [c["context"] for c in pw.checks(1)] == ["default"]  # made all the same
    before = len(pw.events())
    pw.before_next("GET", r"/api/events/", lambda fake: fake.add_series(PROJECT, "mid-poll", ["c"]))
    answered = http.get(f"{pw.base_url}/api/events/", params={"per_page": 250}).json()
    assert len(answered) == len(pw.events()) > before
    mbox = http.get(f"{pw.base_url}/series/1/mbox/")
    assert mbox.status_code == 200 and b"X-Patchwork-Id: 1" in mbox.content
