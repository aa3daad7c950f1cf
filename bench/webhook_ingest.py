"""Benchmark: /hooks/github ingest (verify, store in PostgreSQL, enqueue in Redis) against a bare HMAC endpoint.

Both servers run under uvicorn, one worker each, in their own processes, with the same
server limits (bot/web/server.py: EdgeConfig, its protocol class, deadlines and caps): the
real one is `labgate web` on a fresh PostgreSQL database and a flushed Redis database (no
Celery worker: the messages stay queued), the bare one a Starlette route that reads the body,
checks X-Hub-Signature-256 with hmac.compare_digest and answers 202. One load generator
(this file, asyncio over raw sockets, in a process of its own) drives both the same way:

- closed loop: N keep-alive connections, each sending its next request when the last
  answer arrives, for throughput;
- open loop: a fixed request rate, latency counted from each request's scheduled send
  time (a generator that falls behind shows up as latency, not as a gentler load);
- its own ceiling: the closed loop against a null server that answers a canned 202.

Body: octokit's pull_request/synchronize sample, repository set to the configured tree, its
times set to now (an older event is ignored as a replay), and a nonce of its own per request,
signed per request (the real endpoint refuses a body it has seen as a replay); each request
carries its own X-GitHub-Delivery. Afterwards the Redis
`control` list and the delivery table must both hold exactly the accepted deliveries.

    .venv/bin/python bench/webhook_ingest.py [--rounds 7] [--seconds 4] [--connections 24] [--rate 200]

Last line: {"bench": "webhook_ingest", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# octokit's real synchronize delivery (28 KB, the size GitHub sends) when ../shared is beside the clone;
# else the project's own sample (6 KB: the figures then say less about real bodies).
FIXTURE = REPO.parent / "shared" / "fixtures" / "github" / "octokit-webhooks" / "pull_request"
FIXTURE /= "synchronize.payload.json"
if not FIXTURE.is_file():
    FIXTURE = REPO / "tests" / "samples" / "github" / "pull_request" / "synchronize.json"
ADMIN_URL = os.environ.get("LABGATE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LABGATE_BENCH_REDIS", "redis://127.0.0.1:6379")
FORGE_REPO = "octo-org/bench"
TARGETS = {"throughput_ratio_vs_bare": 0.5, "p99_ms_at_200rps": 25.0}
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


# --- load generator ------------------------------------------------------------------


class Requests:
    """A fresh signed request per call: its own nonce in the body (so its own digest) and delivery id."""

    def __init__(self, port: int, body: bytes, secret: str) -> None:
        assert body.startswith(b"{")
        self.key = secret.encode()
        self.rest = body[1:]
        self.head = (f"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
                     f"Content-Type: application/json\r\nX-GitHub-Event: pull_request\r\n")  # fmt: skip

    def next(self) -> bytes:
        nonce = uuid.uuid4()
        body = b'{"bench_nonce": "%s", ' % str(nonce).encode() + self.rest
        signature = hmac.new(self.key, body, hashlib.sha256).hexdigest()
        return (f"{self.head}X-Hub-Signature-256: sha256={signature}\r\nContent-Length: {len(body)}\r\n"
                f"X-GitHub-Delivery: {nonce}\r\n\r\n").encode() + body  # fmt: skip


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(connection: Connection, request: bytes) -> int:
    """Send one request on a keep-alive connection and read the whole answer; its status."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    match = _CONTENT_LENGTH.search(head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return int(head[9:12])


async def closed_loop(port: int, requests: Requests, connections: int, seconds: float) -> dict[str, Any]:
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.monotonic()
    deadline = start + seconds

    async def client(connection: Connection) -> None:
        while time.monotonic() < deadline:
            sent = time.monotonic()
            statuses[await exchange(connection, requests.next())] += 1
            latencies.append(time.monotonic() - sent)

    await asyncio.gather(*(client(c) for c in opened))
    elapsed = time.monotonic() - start
    for _, writer in opened:
        writer.close()
    return {"rps": len(latencies) / elapsed, **_summary(latencies, statuses)}


async def open_loop(port: int, requests: Requests, rate: float, seconds: float) -> dict[str, Any]:
    # Idle connections with the time they were last used: uvicorn closes one idle for 5 s (keep-alive timeout).
    idle = [(await asyncio.open_connection("127.0.0.1", port), time.monotonic()) for _ in range(8)]
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    opened = len(idle)

    async def connection() -> Connection:
        nonlocal opened
        while idle:
            candidate, last_used = idle.pop()
            if time.monotonic() - last_used < 2.0:
                return candidate
            candidate[1].close()
        opened += 1
        return await asyncio.open_connection("127.0.0.1", port)

    async def one(scheduled: float) -> None:
        used = await connection()
        statuses[await exchange(used, requests.next())] += 1
        latencies.append(time.monotonic() - scheduled)
        idle.append((used, time.monotonic()))

    tasks = []
    start = time.monotonic() + 0.05
    for index in range(round(rate * seconds)):
        scheduled = start + index / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(time.monotonic() - scheduled)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    for (_, writer), _ in idle:
        writer.close()
    return {"rps": rate, "send_lag_p99_ms": _ms(percentile(lags, 0.99)), "connections": opened,
            **_summary(latencies, statuses)}  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _summary(latencies: list[float], statuses: Counter[int]) -> dict[str, Any]:
    return {"requests": len(latencies), "p50_ms": _ms(statistics.median(latencies)),
            "p99_ms": _ms(percentile(latencies, 0.99)),
            "statuses": {str(k): v for k, v in statuses.items()}}  # fmt: skip


def run_load(args: argparse.Namespace) -> None:
    requests = Requests(args.port, Path(args.body).read_bytes(), Path(args.secret_file).read_text().strip())
    if args.mode == "closed":
        result = asyncio.run(closed_loop(args.port, requests, args.connections, args.seconds))
    else:
        result = asyncio.run(open_loop(args.port, requests, args.rate, args.seconds))
    print(json.dumps(result), flush=True)


# --- the two reference servers -------------------------------------------------------


def serve_bare(port: int, secret_file: Path) -> None:
    """What any webhook receiver must do at least: read the body and check its HMAC."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from bot.host.config import Web
    from bot.web.server import run_server

    key = secret_file.read_text().strip().encode()

    async def hook(request: Request) -> Response:
        body = await request.body()
        given = request.headers.get("x-hub-signature-256", "").removeprefix("sha256=")
        if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).hexdigest(), given):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        return JSONResponse({"status": "accepted"}, status_code=202)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hooks/github", hook, methods=["POST"]), Route("/healthz", healthz)])
    run_server(app, Web(host="127.0.0.1", port=port))  # as `labgate web` runs, under the same limits


class _NullServer(asyncio.Protocol):
    """Answers every complete HTTP/1.1 request with a canned 202: the generator's ceiling."""

    ANSWER = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            match = _CONTENT_LENGTH.search(self.buffer, 0, end)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            self.transport.write(self.ANSWER)


def serve_null(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_NullServer, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


# --- orchestration ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True,
                            stdin=subprocess.DEVNULL)  # fmt: skip


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def load(port: int, mode: str, body: Path, secret_file: Path, *, connections: int = 0, seconds: float,
         rate: float = 0) -> dict[str, Any]:  # fmt: skip
    argv = [sys.executable, __file__, "--role", "load", "--mode", mode, "--port", str(port), "--body", str(body),
            "--secret-file", str(secret_file), "--connections", str(connections), "--seconds", str(seconds),
            "--rate", str(rate)]  # fmt: skip
    out = subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def write_setup(root: Path, database_url: str, broker_url: str, port: int) -> tuple[Path, Path, Path]:
    """Config (GitHub App with a throwaway key and a webhook secret), and the body every request carries."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "app.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))  # fmt: skip
    secret_file = root / "webhook-secret"
    secret_file.write_text(uuid.uuid4().hex + "\n")
    config_path = root / "labgate.yaml"
    config_path.write_text(
        f"data_dir: {root / 'data'}\ndatabase_url: {database_url}\nbroker_url: {broker_url}\n"
        f"web: {{host: 127.0.0.1, port: {port}}}\n"
        f"github: {{app_id: 1, private_key_file: {root / 'app.pem'}, webhook_secret_file: {secret_file}}}\n"
        f"trees:\n  - name: bench\n    url: {root / 'origin'}\n    github: {{repo: {FORGE_REPO}}}\n"
    )
    payload = json.loads(FIXTURE.read_text())
    payload["repository"]["full_name"] = FORGE_REPO
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    payload["pull_request"]["updated_at"] = payload["repository"]["updated_at"] = now
    body = root / "body.json"
    body.write_bytes(json.dumps(payload).encode())
    return config_path, secret_file, body


def accepted(result: dict[str, Any]) -> int:
    return int(result["statuses"].get("202", 0))


def check_statuses(name: str, result: dict[str, Any]) -> None:
    if set(result["statuses"]) != {"202"}:
        raise SystemExit(f"{name}: answers other than 202: {result['statuses']}")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis
    from sqlalchemy import create_engine, text

    from bot.host.config import load_config
    from bot.host.stores import open_runtime

    name = f"labgate_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    broker_url = f"{REDIS_URL}/{args.redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp:
            root = Path(tmp)
            real_port, bare_port, null_port = free_port(), free_port(), free_port()
            config_path, secret_file, body = write_setup(
                root, ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", broker_url, real_port
            )
            runtime = open_runtime(load_config(config_path))  # migrates the fresh database
            real = start(labgate_web_argv(config_path), runtime.env(broker_url, config_path))
            bare = start([sys.executable, __file__, "--role", "bare", "--port", str(bare_port),
                          "--secret-file", str(secret_file)])  # fmt: skip
            null = start([sys.executable, __file__, "--role", "null", "--port", str(null_port)])
            processes += [real, bare, null]
            for port, process in ((real_port, real), (bare_port, bare), (null_port, null)):
                wait_listening(port, process)

            def closed(port: int, seconds: float) -> dict[str, Any]:
                return load(port, "closed", body, secret_file, connections=args.connections, seconds=seconds)

            def fixed_rate(port: int) -> dict[str, Any]:
                return load(port, "open", body, secret_file, rate=args.rate, seconds=args.open_seconds)

            ceiling = closed(null_port, min(args.seconds, 4))
            print(f"generator ceiling (null server): {ceiling['rps']:.0f} req/s", flush=True)
            stop(null)
            sent_to_real = 0

            def count(label: str, result: dict[str, Any]) -> dict[str, Any]:
                nonlocal sent_to_real
                check_statuses(label, result)
                sent_to_real += accepted(result) if label.startswith("real") else 0
                return result

            count("bare warm-up", closed(bare_port, 2))
            count("real warm-up", closed(real_port, 2))
            # Rounds alternate the two endpoints, so a neighbour's load on the machine hits both alike.
            rounds = []
            for number in range(args.rounds):
                bare_result = count("bare", closed(bare_port, args.seconds))
                real_result = count("real", closed(real_port, args.seconds))
                rounds.append((bare_result, real_result))
                print(f"round {number}: bare {bare_result['rps']:7.1f} req/s, real {real_result['rps']:7.1f} req/s "
                      f"(p99 {real_result['p99_ms']:.1f} ms), ratio {real_result['rps'] / bare_result['rps']:.3f}",
                      flush=True)  # fmt: skip
            bare_open = count("bare", fixed_rate(bare_port))
            real_open = count("real", fixed_rate(real_port))
            for label, result in (("bare", bare_open), ("real", real_open)):
                print(f"{label} at {args.rate:.0f} req/s: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms "
                      f"({result['requests']} requests, send lag p99 {result['send_lag_p99_ms']:.2f} ms)",
                      flush=True)  # fmt: skip
            queued = int(broker.llen("control"))
            with runtime.store.engine.connect() as connection:
                query = text("SELECT count(*) FROM delivery WHERE source = 'github'")
                stored = int(connection.execute(query).scalar_one())
            runtime.store.engine.dispose()
            print(f"accepted {sent_to_real}, stored {stored}, queued in control {queued}", flush=True)
            if not (sent_to_real == stored == queued):
                raise SystemExit("accepted, stored and queued deliveries differ")
    finally:
        for process in processes:
            stop(process)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        broker.flushdb()
    ratios = [real["rps"] / bare["rps"] for bare, real in rounds]
    return {
        "bare_rps": round(statistics.median(bare["rps"] for bare, _ in rounds), 1),
        "real_rps": round(statistics.median(real["rps"] for _, real in rounds), 1),
        "throughput_ratio_vs_bare": round(statistics.median(ratios), 3),
        "throughput_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "p50_ms_at_200rps": real_open["p50_ms"],
        "p99_ms_at_200rps": real_open["p99_ms"],
        "bare_p50_ms_at_200rps": bare_open["p50_ms"],
        "bare_p99_ms_at_200rps": bare_open["p99_ms"],
        "real_saturated_p99_ms": statistics.median(real["p99_ms"] for _, real in rounds),
        "generator_ceiling_rps": round(ceiling["rps"], 1),
        "generator_send_lag_p99_ms": max(real_open["send_lag_p99_ms"], bare_open["send_lag_p99_ms"]),
        "deliveries_stored": sent_to_real,
    }


def labgate_web_argv(config_path: Path) -> list[str]:
    from bot.host.supervise import labgate_argv

    return labgate_argv("web", "--config", str(config_path))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=24, help="closed loop: concurrent keep-alive connections")
    parser.add_argument("--seconds", type=float, default=4, help="closed loop: duration per endpoint and round")
    parser.add_argument("--rounds", type=int, default=7, help="closed loop: alternating rounds (median ratio)")
    parser.add_argument("--rate", type=float, default=200, help="open loop: requests per second")
    parser.add_argument("--open-seconds", type=float, default=10, help="open loop: duration per endpoint")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database number (flushed)")
    # Internal: the same file is the load generator and the reference servers, each in its own process.
    parser.add_argument("--role", choices=["bench", "load", "bare", "null"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["closed", "open"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "load":
        run_load(args)
    elif args.role == "bare":
        serve_bare(args.port, args.secret_file)
    elif args.role == "null":
        serve_null(args.port)
    else:
        figures = bench(args)
        print(json.dumps({"bench": "webhook_ingest", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
