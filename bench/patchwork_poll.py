"""Benchmark: draining a Patchwork events backlog (the poller and the series intake, on a real store) against a
loop that makes the same HTTP requests and does nothing with the answers.

The fake Patchwork of the tests (tests/fakes/patchwork_api.py) is served over HTTP on 127.0.0.1 by a
process of its own, holding one project with a backlog of `--events` events, `--pages` pages of them
at the per_page that makes: nine tenths `series-completed` (each series a cover letter and two
patches) and one tenth `patch-delegated`, both categories labgate polls. Each drain runs in a fresh
process of its own, so that its peak RSS (VmHWM) is its own:

- real: `PatchworkPoller` with `SeriesIntake.record_series` / `record_delegation` as production wires
  them (bot/intake/mailing_list.py), on a fresh database (PostgreSQL, created for the round and
  dropped; or a SQLite file): every page read, then each event de-duplicated against the seen table,
  its series and mbox (or its patch) fetched, the mbox stored in the artifact store, the series
  record, the accepted delivery and the seen mark committed together, then the cursor;
- baseline: httpx with the client's headers, the same requests in the same order (a first page of
  one event for the newest date, the pages from it minus the poller's overlap, then per event its
  series and mbox, or its patch), parsing only the JSON it needs to find the next URL.

Both sides count their requests (an httpx transport that records method, path and query) and the
bench fails unless the two multisets are equal. Rounds alternate which side goes first, and the
ratio is the median of the rounds' ratios (a neighbour's load hits both sides of a round alike).

    .venv/bin/python bench/patchwork_poll.py [--events 10000 --pages 40 --rounds 3 --store postgresql]

Last line: {"bench": "patchwork_poll", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bench runs as a script: bot/ and tests/ from the checkout

ADMIN_URL = os.environ.get("LABGATE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PROJECT = "netdev"
SERIES, DELEGATED = "series-completed", "patch-delegated"
# rss_mb: a process that has imported what a poll needs is ~108 MB before the drain; the poller holds a
# category's listed events until its last page is read (the cursor moves only then), so its memory
# grows with the backlog: ~40 MB, 4 KB an event, is what 10,000 events may add.
TARGETS = {"poll_overhead_ratio": 1.5, "rss_mb": 150.0}


# --- the served fake -------------------------------------------------------------------------------------


def backlog_sizes(events: int, pages: int) -> tuple[int, int, int]:
    """(per_page, series, delegations): a whole number of pages of delegations, about a tenth of the events."""
    per_page = max(1, -(-events // pages))
    delegations = min(events, per_page * max(1, round(pages / 10)))
    return per_page, events - delegations, delegations


def serve(events: int, pages: int) -> None:
    """The fake with its backlog, served until the parent closes our stdin; prints its URL first."""
    from tests.fakes.patchwork_api import FakePatchwork

    _, series, delegations = backlog_sizes(events, pages)
    fake = FakePatchwork()
    fake.add_project(PROJECT)
    fake.add_user("maint")
    fake.add_maintainer(PROJECT, "maint")
    patches = []
    for number in range(series):
        sid = fake.add_series(PROJECT, f"net: bench series {number}", [f"net: part one of {number}",
                              f"net: part two of {number}"], submitter=(f"Dev {number % 97}",
                              f"dev{number % 97}@example.org"))  # fmt: skip
        patches += fake.series_patches(sid)
    for patch_id in patches[:delegations]:
        fake.delegate(patch_id, "maint", by="maint")
    with fake:
        print(json.dumps({"url": fake.base_url}), flush=True)
        sys.stdin.read()


# --- one drain, in a process of its own ------------------------------------------------------------------


class CountingTransport(httpx.HTTPTransport):
    """httpx's own transport, keeping each request's method, path and query: both sides must ask the same."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(f"{request.method} {request.url.raw_path.decode()}")
        return super().handle_request(request)

    def digest(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.asked)).encode()).hexdigest()


def kib_of(field: str) -> float:
    """A VmRSS / VmHWM line of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def drain_real(url: str, database_url: str, data_dir: Path, per_page: int,
               transport: CountingTransport) -> dict[str, Any]:  # fmt: skip
    from bot.forges.patchwork.client import PatchworkClient
    from bot.forges.patchwork.poller import PollSettings
    from bot.host.config import Config
    from bot.host.stores import open_runtime
    from bot.intake.mailing_list import series_intake, series_poller

    runtime = open_runtime(Config(data_dir=data_dir, database_url=database_url), create=False)
    with PatchworkClient(url, transport=transport) as client:
        intake = series_intake(runtime, client)
        poller = series_poller(runtime, client, intake, PollSettings(per_page=per_page))
        rss_before = kib_of("VmRSS")
        start, cpu = time.perf_counter(), time.process_time()
        report = poller.poll(PROJECT)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    runtime.store.engine.dispose()
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": rss_before, "pages": report.pages,
            "events": report.events, "handled": report.handled, "skipped": report.skipped,
            "already_seen": report.already_seen}  # fmt: skip


def drain_baseline(url: str, per_page: int, transport: CountingTransport) -> dict[str, Any]:
    from bot.forges.patchwork.poller import PollSettings

    overlap = PollSettings().overlap  # the same window, so the same `since`
    headers = {"Accept": "application/json", "User-Agent": "labgate"}
    pages = events = 0
    with httpx.Client(headers=headers, timeout=30, follow_redirects=False, transport=transport) as http:
        rss_before = kib_of("VmRSS")
        start, cpu = time.perf_counter(), time.process_time()
        for category in (SERIES, DELEGATED):
            query = {"category": category, "project": PROJECT, "per_page": "1"}
            newest = http.get(f"{url}/api/events/?{urlencode(query)}").json()
            if not newest:
                continue
            since = datetime.fromisoformat(newest[0]["date"]) - overlap
            query = {**query, "per_page": str(per_page), "since": since.isoformat(timespec="microseconds")}
            next_url: str | None = f"{url}/api/events/?{urlencode(query)}"
            listed: dict[int, dict[str, Any]] = {}
            while next_url is not None:
                response = http.get(next_url)
                pages += 1
                listed.update((event["id"], event) for event in response.json())
                next_url = response.links.get("next", {}).get("url")
            events += len(listed)
            for event_id in sorted(listed):
                payload = listed[event_id]["payload"]
                if category == SERIES:
                    series = http.get(f"{url}/api/series/{payload['series']['id']}/").json()
                    http.get(series["mbox"], headers={"Accept": "*/*"}).read()
                else:
                    http.get(f"{url}/api/patches/{payload['patch']['id']}/").read()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_s": cpu, "rss_before_mb": rss_before, "pages": pages, "events": events,
            "handled": 0}  # fmt: skip


def drain(args: argparse.Namespace) -> None:
    transport = CountingTransport()
    if args.side == "real":
        result = drain_real(args.url, args.database_url, Path(args.data_dir), args.per_page, transport)
    else:
        result = drain_baseline(args.url, args.per_page, transport)
    result.update(requests=len(transport.asked), requests_digest=transport.digest(), rss_mb=kib_of("VmHWM"))
    print(json.dumps(result), flush=True)


# --- orchestration ---------------------------------------------------------------------------------------


@contextmanager
def served_fake(events: int, pages: int) -> Iterator[str]:
    argv = [sys.executable, __file__, "--role", "serve", "--events", str(events), "--pages", str(pages)]
    process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"the fake Patchwork exited with {process.wait()}")
        yield str(json.loads(line)["url"])
    finally:
        if process.stdin is not None:
            process.stdin.close()  # its cue to stop
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Databases:
    """One fresh database per real drain: PostgreSQL databases created here and dropped at the end, or
    SQLite files in the bench's temporary directory."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind, self.root = kind, root
        self.created: list[str] = []
        self._admin: Any = None

    def fresh(self) -> str:
        from sqlalchemy import create_engine, text

        from bot.store.db import migrate

        name = f"labgate_bench_{uuid.uuid4().hex[:10]}"
        if self.kind == "sqlite":
            url = f"sqlite:///{self.root / (name + '.sqlite3')}"
        else:
            if self._admin is None:
                self._admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
            with self._admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            self.created.append(name)
            url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        migrate(url)
        return url

    def drop_all(self) -> None:
        if self._admin is None:
            return
        from sqlalchemy import text

        with self._admin.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()


def run_drain(side: str, url: str, per_page: int, database_url: str = "",
              data_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    argv = [sys.executable, __file__, "--role", "drain", "--side", side, "--url", url, "--per-page", str(per_page),
            "--database-url", database_url, "--data-dir", str(data_dir or "")]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def bench(args: argparse.Namespace) -> dict[str, Any]:
    per_page, series, delegations = backlog_sizes(args.events, args.pages)
    print(f"backlog: {series} series-completed + {delegations} patch-delegated events, {per_page} a page",
          flush=True)  # fmt: skip
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp, served_fake(args.events, args.pages) as url:
        databases = Databases(args.store, Path(tmp))
        try:
            for number in range(args.rounds):
                database_url, data_dir = databases.fresh(), Path(tmp) / f"data-{number}"
                results: dict[str, dict[str, Any]] = {}
                # Alternate which side goes first: the fake's caches and the machine's load drift between.
                for side in ("baseline", "real") if number % 2 == 0 else ("real", "baseline"):
                    results[side] = run_drain(side, url, per_page, database_url, data_dir)
                base, real = results["baseline"], results["real"]
                if base["requests_digest"] != real["requests_digest"]:
                    raise SystemExit(f"round {number}: the two sides asked different requests "
                                     f"({base['requests']} and {real['requests']})")  # fmt: skip
                if real["handled"] != args.events:
                    raise SystemExit(f"round {number}: {real['handled']} of {args.events} events handled: {real}")
                rounds.append((base, real))
                print(f"round {number}: baseline {base['seconds']:.2f} s, real {real['seconds']:.2f} s, "
                      f"ratio {real['seconds'] / base['seconds']:.3f} (CPU {base['cpu_s']:.2f} s and "
                      f"{real['cpu_s']:.2f} s); {real['requests']} requests, "
                      f"{real['pages']} pages; rss real {real['rss_mb']:.1f} MB (before the drain "
                      f"{real['rss_before_mb']:.1f}), baseline {base['rss_mb']:.1f} MB", flush=True)  # fmt: skip
        finally:
            databases.drop_all()
    ratios = [real["seconds"] / base["seconds"] for base, real in rounds]
    real_s = statistics.median(real["seconds"] for _, real in rounds)
    base_s = statistics.median(base["seconds"] for base, _ in rounds)
    return {
        "events": args.events,
        "pages": rounds[0][1]["pages"],
        "requests": rounds[0][1]["requests"],
        "store": args.store,
        "rounds": args.rounds,
        "baseline_s": round(base_s, 3),
        "real_s": round(real_s, 3),
        "poll_overhead_ratio": round(statistics.median(ratios), 3),
        "poll_overhead_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "overhead_ms_per_event": round((real_s - base_s) / args.events * 1000, 3),
        "baseline_cpu_s": round(statistics.median(base["cpu_s"] for base, _ in rounds), 3),
        "real_cpu_s": round(statistics.median(real["cpu_s"] for _, real in rounds), 3),
        "rss_mb": round(max(real["rss_mb"] for _, real in rounds), 1),
        "rss_before_drain_mb": round(max(real["rss_before_mb"] for _, real in rounds), 1),
        "baseline_rss_mb": round(max(base["rss_mb"] for base, _ in rounds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000, help="events in the backlog (both categories)")
    parser.add_argument("--pages", type=int, default=40, help="pages they make (sets per_page, at most 250)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one baseline and one real drain")
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql",
                        help="the real side's store: a fresh PostgreSQL database a round, or SQLite")  # fmt: skip
    # Internal: the same file is the served fake and each drain, each in its own process.
    parser.add_argument("--role", choices=["bench", "serve", "drain"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["baseline", "real"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--per-page", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.events, args.pages)
    elif args.role == "drain":
        drain(args)
    else:
        if -(-args.events // args.pages) > 250:
            parser.error("more than 250 events a page: Patchwork serves at most 250")
        figures = bench(args)
        print(json.dumps({"bench": "patchwork_poll", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
