"""Benchmark: POST /api/v1/submissions with the real OIDC verifier against the same endpoint with a constant one.

Both servers run under uvicorn, one worker each, in their own processes, with the same server
limits (bot/web/server.py), on one fresh PostgreSQL database and one flushed Redis database (no
Celery worker: the messages stay queued):

- verified: `labgate web`, its config's `oidc:` section trusting a FakeOidcIssuer (tests/fakes/,
  served on 127.0.0.1 from a thread of this process) with one rule for the bench tree: each
  submission's RS256 signature is checked against the issuer's JWKS (fetched once, then cached),
  then its issuer, audience and times;
- constant: the same config served the way `labgate web` serves it (this file's `--role constant`),
  but with `create_app(runtime, submission_verifier=...)` given a verifier that checks nothing and
  answers the same claims for every bearer. The bench injects it; no setting can.

Everything else is the endpoint's own on both sides: body cap, strict body, tree, rules, base branch,
the sha against the token's, the row and its read token in one statement, the bot.ci_submission message.
Every token is minted up front, GitHub-shaped (tests/fakes/oidc_issuer.py github_claims) with a jti of
its own and valid for an hour; the body names the token's commit: {"tree", "base_branch": "main", "sha"}
(with --patch, examples/hello's pass.patch instead, which the endpoint reads for a diff before storing it).
A jti seen before is a replay (the same submission, 200): only 201s are accepted, and any other answer
fails the bench. The constant verifier's jti is a version-5 UUID of the bearer (the real ones are version
4), so each side sends every token once and the two sides' rows can be told apart afterwards.

One load generator (bench/webhook_ingest.py's raw-socket asyncio client, a process of its own per run):

- open loop, after a warm-up: a fixed request rate, latency counted from each request's scheduled send
  time, on each side in turn;
- closed loop: --requests submissions over N keep-alive connections, each sending its next request
  when the last answer arrives, for throughput; rounds alternate the sides and which goes first, and
  the servers' own CPU time (/proc/PID/stat) is read around each run;
- its own ceiling: the closed loop against a null server that answers a canned 202.

The real verifier is also timed alone, in this process, on the same tokens (`verify_us_in_process`).

Afterwards the ci_submission table must hold exactly the accepted submissions of each side, and the Redis
`control` list exactly one bot.ci_submission message per stored submission.

    .venv/bin/python bench/submissions.py [--rounds 15] [--requests 600] [--connections 24] [--rate 100]

Last line: {"bench": "submissions", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webhook_ingest import (  # noqa: E402
    REDIS_URL,
    _summary,
    exchange,
    free_port,
    labgate_web_argv,
    open_loop,
    start,
    stop,
    wait_listening,
)

if TYPE_CHECKING:
    from bot.oidc.types import Verifier

TARGETS = {"throughput_ratio_verified_vs_constant": 0.7, "p99_ms_at_100rps": 50.0}
PATH = "/api/v1/submissions"
AUDIENCE = "https://labgate.bench.example"
TREE = "bench"
REPOSITORY_ID = "588298808"  # github_claims' repository (nickolashkraus/flask-oidc)
TOKEN_LIFETIME_S = 3600  # longer than any run: no token expires during it
VERSION_AT = 14  # index of a UUID's version digit in its text: 4 for the issuer's jti, 5 for the constant one


# --- load generator ------------------------------------------------------------------


class Submissions:
    """Pre-built POSTs, one per token, each handed out once (a token sent again would be a replay)."""

    def __init__(self, port: int, tokens: list[str], body: bytes) -> None:
        head = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: labgate-bench\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")  # fmt: skip
        self.pending = deque(f"{head}Authorization: Bearer {token}\r\n\r\n".encode() + body for token in tokens)

    def next(self) -> bytes:
        return self.pending.popleft()


async def closed_loop_of(port: int, requests: Submissions, connections: int) -> dict[str, Any]:
    """Every pending request sent over `connections` keep-alive connections, each sending its next as soon
    as its last answer is in: a fixed count rather than a fixed time, since each token is good for one."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.monotonic()

    async def client(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        while requests.pending:
            request, sent = requests.next(), time.monotonic()
            statuses[await exchange(connection, request)] += 1
            latencies.append(time.monotonic() - sent)

    await asyncio.gather(*(client(c) for c in opened))
    elapsed = time.monotonic() - start
    for _, writer in opened:
        writer.close()
    return {"rps": len(latencies) / elapsed, **_summary(latencies, statuses)}


def run_load(args: argparse.Namespace) -> None:
    tokens = Path(args.tokens).read_text().split()[args.first : args.first + args.count]
    requests = Submissions(args.port, tokens, Path(args.body).read_bytes())
    if args.mode == "closed":
        result = asyncio.run(closed_loop_of(args.port, requests, args.connections))
    else:
        result = asyncio.run(open_loop(args.port, requests, args.rate, args.count / args.rate))  # type: ignore[arg-type]
    print(json.dumps(result), flush=True)


# --- the constant side ------------------------------------------------------------------


def constant_verifier(issuer: str, claims: dict[str, Any]) -> Verifier:
    """A verifier that checks nothing: every bearer is a token of `issuer` with `claims`, its jti a UUID
    derived from the bearer (version 5; the issuer's are version 4), so each bearer is a submission of its own."""
    from bot.oidc.types import VerifiedToken

    expires_at = datetime.fromtimestamp(claims["exp"], UTC)

    async def verify(bearer: str) -> VerifiedToken:
        jti = str(uuid.uuid5(uuid.NAMESPACE_OID, bearer))
        return VerifiedToken(issuer, {**claims, "jti": jti}, jti, expires_at)

    return verify


def serve_constant(config_path: Path, port: int, claims_file: Path) -> None:
    """`labgate web` (bot/cli/main.py and bot/cli/up.py run_web, with the broker in the environment) with
    the constant verifier injected and its own port: the same app, store, queue and server limits."""
    from bot.host.config import load_config
    from bot.host.stores import open_runtime
    from bot.web.app import create_app
    from bot.web.server import run_server
    from workers.app import configure

    logging.basicConfig(level=os.environ.get("LABGATE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    config = load_config(config_path)
    runtime = open_runtime(config)
    configure(os.environ["LABGATE_BROKER_URL"], longest_job_s=max(config.caps.max_build_s, config.caps.max_job_s))
    claims = json.loads(claims_file.read_text())
    verifier = constant_verifier(claims["iss"], claims)
    run_server(create_app(runtime, submission_verifier=verifier), config.web.model_copy(update={"port": port}))


# --- orchestration ---------------------------------------------------------------------


class Tokens:
    """Tokens minted up front into one file; each run of the generator takes the next unused slice. The
    constant side sends the verified side's slices again (its jti comes from the bearer, not the claim)."""

    def __init__(self, path: Path, count: int, mint: Callable[[], str]) -> None:
        self.path = path
        path.write_text("".join(mint() + "\n" for _ in range(count)))
        self.count = count
        self.taken = 0

    def take(self, count: int) -> tuple[int, int]:
        if self.taken + count > self.count:
            raise SystemExit(f"out of tokens: {self.taken} of {self.count} used, {count} more wanted")
        self.taken += count
        return self.taken - count, count


def write_setup(root: Path, database_url: str, broker_url: str, port: int, issuer_url: str) -> Path:
    """labgate.yaml: the bench tree (its main branch), PostgreSQL, Redis, and oidc: trusting the fake issuer
    with one rule, by repository id and ref, for the bench tree."""
    import yaml

    rule = {"issuer": issuer_url, "tree": TREE, "tier": "qemu", "repository_ids": [REPOSITORY_ID],
            "refs": ["refs/heads/main"]}  # fmt: skip
    config = {
        "data_dir": str(root / "data"), "database_url": database_url, "broker_url": broker_url,
        "web": {"host": "127.0.0.1", "port": port},
        "trees": [{"name": TREE, "url": str(root / "origin"), "branches": ["main"]}],
        "oidc": {"audience": AUDIENCE, "issuers": [{"url": issuer_url}], "rules": [rule]},
    }  # fmt: skip
    config_path = root / "labgate.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config_path


def submission_body(sha: str, patch: bool) -> bytes:
    """What each request asks: the token's own commit, or (--patch) examples/hello's pass.patch to apply on main."""
    if not patch:
        return json.dumps({"tree": TREE, "base_branch": "main", "sha": sha}).encode()
    mbox = (REPO / "examples" / "hello" / "patches" / "pass.patch").read_text()
    return json.dumps(
        {"tree": TREE, "base_branch": "main", "patches": [{"name": "0001-pass.patch", "mbox": mbox}]}
    ).encode()


def load(port: int, mode: str, root: Path, slice_: tuple[int, int], *, connections: int = 0,
         rate: float = 0) -> dict[str, Any]:  # fmt: skip
    first, count = slice_
    argv = [sys.executable, __file__, "--role", "load", "--mode", mode, "--port", str(port),
            "--tokens", str(root / "tokens"), "--body", str(root / "body.json"), "--first", str(first),
            "--count", str(count), "--connections", str(connections), "--rate", str(rate)]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def check_store_and_queue(runtime: Any, broker: Any, sent: dict[str, int]) -> tuple[int, int]:
    """That the store holds each side's accepted submissions, told apart by their jti's UUID version, none with
    a pipeline yet, and the control queue one bot.ci_submission message per stored submission, naming it (kombu's
    Redis envelope: the body is base64 JSON [args, kwargs, embed]). The counts stored and queued."""
    from sqlalchemy import text

    from bot.intake.submissions import SUBMISSION_TASK
    from workers.app import CONTROL_QUEUE

    with runtime.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT id, jti, pipeline_id FROM ci_submission")).all()
    sides = Counter({"4": "verified", "5": "constant"}.get(jti[VERSION_AT], "other") for _, jti, _ in rows)
    queued = []
    for raw in broker.lrange(CONTROL_QUEUE, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        queued.append((message["headers"]["task"], args))
    print(f"accepted {sent}, stored {dict(sides)}, queued {len(queued)}", flush=True)
    if sides != Counter(sent):
        raise SystemExit("the submissions stored differ from those accepted")
    if any(pipeline_id is not None for _, _, pipeline_id in rows):
        raise SystemExit("a submission has a pipeline: a control worker is consuming the bench's queue")
    if sorted(queued) != sorted((SUBMISSION_TASK, [row_id]) for row_id, _, _ in rows):
        raise SystemExit("the control queue does not hold exactly one bot.ci_submission per stored submission")
    return len(rows), len(queued)


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has spent (all its threads), from /proc/PID/stat: less at the mercy of a
    busy neighbour than a rate is, so it says what a submission costs the server when the rates are noisy."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def verify_cost_us(config_path: Path, tokens_path: Path, count: int) -> float:
    """The real verifier alone, in this process, on `count` of the bench's tokens: microseconds a token (the
    median of 5 passes), the CPU the verified side should add if verifying were all it adds."""
    import httpx

    from bot.host.config import load_config
    from bot.oidc.verify import OidcVerifier

    settings = load_config(config_path).oidc
    assert settings is not None
    tokens = tokens_path.read_text().split()[:count]

    async def timed() -> float:
        async with httpx.AsyncClient() as http:
            verifier = OidcVerifier(settings, http)
            await verifier.verify(tokens[0])  # fetches the keys
            passes = []
            for _ in range(5):
                start = time.perf_counter()
                for token in tokens:
                    await verifier.verify(token)
                passes.append((time.perf_counter() - start) / len(tokens))
            await verifier.keys.settle()
        return statistics.median(passes)

    return round(asyncio.run(timed()) * 1e6, 1)


def accepted(result: dict[str, Any], label: str) -> int:
    """The 201s of one run; any other answer (a replay's 200, a refusal, a 503) fails the bench."""
    if set(result["statuses"]) != {"201"}:
        raise SystemExit(f"{label}: answers other than 201: {result['statuses']}")
    return int(result["statuses"]["201"])


Run = Callable[[str, str, tuple[int, int]], dict[str, Any]]  # side, mode, token slice -> the load's result


def at_fixed_rate(run: Run, slice_: tuple[int, int], rate: float) -> dict[str, dict[str, Any]]:
    at_rate = {side: run(side, "open", slice_) for side in ("verified", "constant")}
    for side, result in at_rate.items():
        print(f"{side} at {rate:.0f} req/s: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms "
              f"({result['requests']} requests, send lag p99 {result['send_lag_p99_ms']:.2f} ms)",
              flush=True)  # fmt: skip
    return at_rate


def alternating_rounds(run: Run, tokens: Tokens, rounds: int, requests: int) -> list[dict[str, dict[str, Any]]]:
    """Closed-loop rounds, both sides sending the same tokens; the sides alternate which goes first, so a
    neighbour's load (and the table growing) hits both alike."""
    done = []
    for number in range(rounds):
        slice_ = tokens.take(requests)
        order = ("constant", "verified") if number % 2 == 0 else ("verified", "constant")
        results = {side: run(side, "closed", slice_) for side in order}
        done.append(results)
        shown = {side: f"{results[side]['rps']:7.1f} req/s (p99 {results[side]['p99_ms']:6.1f} ms, "
                       f"{1000 * results[side]['server_cpu_s'] / requests:.3f} ms CPU)" for side in order}  # fmt: skip
        ratio = results["verified"]["rps"] / results["constant"]["rps"]
        print(f"round {number}: constant {shown['constant']}, verified {shown['verified']}, ratio {ratio:.3f}",
              flush=True)  # fmt: skip
    return done


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from bench.patchwork_poll import Databases
    from bot.host.config import load_config
    from bot.host.stores import open_runtime
    from tests.fakes.oidc_issuer import FakeOidcIssuer

    load_before = os.getloadavg()[0]  # the machine is shared: how busy it was is part of the figures
    broker_url = f"{REDIS_URL}/{args.redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    processes: list[subprocess.Popen[bytes]] = []
    open_count = round(args.rate * args.open_seconds)
    per_side = args.warmup + args.rounds * args.requests + open_count
    issuer = FakeOidcIssuer("github", audience=AUDIENCE)  # served from a thread: the keys are fetched once
    with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp, issuer:
        root = Path(tmp)
        databases = Databases("postgresql", root)
        try:
            verified_port, constant_port, null_port = free_port(), free_port(), free_port()
            config_path = write_setup(root, databases.fresh(), broker_url, verified_port, issuer.url)
            iat = int(time.time())
            claims = issuer.claims(exp=iat + TOKEN_LIFETIME_S)
            (root / "claims.json").write_text(json.dumps(claims))
            body = submission_body(claims["sha"], args.patch)
            (root / "body.json").write_bytes(body)
            minting = time.monotonic()
            tokens = Tokens(root / "tokens", per_side, lambda: issuer.mint({"exp": iat + TOKEN_LIFETIME_S}))
            print(f"minted {per_side} RS256 tokens ({len(issuer.mint())} bytes each) in "
                  f"{time.monotonic() - minting:.1f} s", flush=True)  # fmt: skip
            runtime = open_runtime(load_config(config_path))
            env = runtime.env(broker_url, config_path)
            verified = start(labgate_web_argv(config_path), env)
            constant = start([sys.executable, __file__, "--role", "constant", "--config", str(config_path),
                              "--port", str(constant_port), "--claims", str(root / "claims.json")], env)  # fmt: skip
            null = start([sys.executable, str(REPO / "bench" / "webhook_ingest.py"), "--role", "null",
                          "--port", str(null_port)])  # fmt: skip
            processes += [verified, constant, null]
            for port, process in ((verified_port, verified), (constant_port, constant), (null_port, null)):
                wait_listening(port, process)

            ceiling = load(null_port, "closed", root, (0, min(per_side, 4 * args.requests)),
                           connections=args.connections)  # fmt: skip
            print(f"generator ceiling (null server): {ceiling['rps']:.0f} req/s", flush=True)
            stop(null)
            sent = {"verified": 0, "constant": 0}
            servers = {"verified": (verified_port, verified.pid), "constant": (constant_port, constant.pid)}

            def run(side: str, mode: str, slice_: tuple[int, int]) -> dict[str, Any]:
                port, pid = servers[side]
                cpu = cpu_seconds(pid)
                result = load(port, mode, root, slice_, connections=args.connections, rate=args.rate)
                result["server_cpu_s"] = cpu_seconds(pid) - cpu
                sent[side] += accepted(result, side)
                return result

            warmup = tokens.take(args.warmup)  # the verified side's first token fetches the issuer's keys
            run("verified", "closed", warmup)
            run("constant", "closed", warmup)
            # At a fixed rate first: what a steady 100 req/s meets, not the aftermath of the rounds' saturation
            # (tens of thousands of rows and their WAL just written).
            at_rate = at_fixed_rate(run, tokens.take(open_count), args.rate)
            rounds = alternating_rounds(run, tokens, args.rounds, args.requests)
            stored, queued = check_store_and_queue(runtime, broker, sent)
            runtime.store.engine.dispose()
            keys = (issuer.discovery_fetches, issuer.jwks_fetches)  # before verify_cost_us fetches them again
            verify_us = verify_cost_us(config_path, root / "tokens", min(per_side, 500))
        finally:
            for process in processes:
                stop(process)
            databases.drop_all()
            broker.flushdb()
    ratios = [result["verified"]["rps"] / result["constant"]["rps"] for result in rounds]
    measured = args.rounds * args.requests
    cpu_ms = {side: round(1000 * sum(result[side]["server_cpu_s"] for result in rounds) / measured, 3)
              for side in ("verified", "constant")}  # fmt: skip
    return {
        "constant_rps": round(statistics.median(result["constant"]["rps"] for result in rounds), 1),
        "verified_rps": round(statistics.median(result["verified"]["rps"] for result in rounds), 1),
        "throughput_ratio_verified_vs_constant": round(statistics.median(ratios), 3),
        "throughput_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "p50_ms_at_100rps": at_rate["verified"]["p50_ms"],
        "p99_ms_at_100rps": at_rate["verified"]["p99_ms"],
        "constant_p50_ms_at_100rps": at_rate["constant"]["p50_ms"],
        "constant_p99_ms_at_100rps": at_rate["constant"]["p99_ms"],
        "server_cpu_ms_per_submission": cpu_ms,
        # The ratio a server bound by its own CPU would reach: steadier than the rates when neighbours are busy.
        "throughput_ratio_from_cpu": round(cpu_ms["constant"] / cpu_ms["verified"], 3) if cpu_ms["verified"] else None,
        "verify_us_in_process": verify_us,
        "verified_saturated_p99_ms": round(statistics.median(result["verified"]["p99_ms"] for result in rounds), 2),
        "generator_ceiling_rps": round(ceiling["rps"], 1),
        "generator_send_lag_p99_ms": max(result["send_lag_p99_ms"] for result in at_rate.values()),
        "accepted_verified": sent["verified"],
        "accepted_constant": sent["constant"],
        "stored": stored,
        "queued": queued,
        "issuer_fetches": {"discovery": keys[0], "jwks": keys[1]},
        "rate": args.rate,
        "body": "patch" if args.patch else "sha",
        "body_bytes": len(body),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="closed loop: submissions per side and round")
    parser.add_argument("--rounds", type=int, default=15, help="closed loop: alternating rounds (median ratio)")
    parser.add_argument("--connections", type=int, default=24, help="closed loop: concurrent keep-alive connections")
    parser.add_argument("--warmup", type=int, default=300, help="submissions per side before the rounds")
    parser.add_argument("--rate", type=float, default=100, help="open loop: requests per second")
    parser.add_argument("--open-seconds", type=float, default=10, help="open loop: duration per side")
    parser.add_argument("--patch", action="store_true", help="submit examples/hello's pass.patch instead of the sha")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database number (flushed)")
    # Internal: the same file is the load generator and the constant server, each in its own process.
    parser.add_argument("--role", choices=["bench", "load", "constant"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["closed", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--claims", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "load":
        run_load(args)
    elif args.role == "constant":
        serve_constant(args.config, args.port, args.claims)
    else:
        figures = bench(args)
        print(json.dumps({"bench": "submissions", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
