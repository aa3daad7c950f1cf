"""Benchmark: `labgate web` under hostile clients, with its default limits (bot/web/server.py).

The server is `labgate web` in a process of its own (SQLite store, a flushed Redis database).
A load process keeps, for --seconds:

- 150 connections trickling a request head, a byte every --trickle-s seconds;
- 150 connections with a complete head trickling their body a byte every --trickle-s seconds;
- 20 connections declaring a 24 MiB body, sending all of it but the last byte, then stalling;

each reopened (after a second's pause) whenever the server cuts it. Meanwhile this process asks
for /healthz every 100 ms (latency from the request's send to the end of its answer) and reads
the server's peak resident memory (VmHWM in /proc/PID/status) at the end.

    .venv/bin/python bench/webhook_hostile.py [--seconds 45] [--trickle-s 5]

Last line: {"bench": "webhook_hostile", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.webhook_ingest import (  # noqa: E402
    REDIS_URL,
    free_port,
    labgate_web_argv,
    percentile,
    start,
    stop,
    wait_listening,
    write_setup,
)

TARGETS = {"healthz_p99_ms": 100.0, "rss_mb": 300.0}
LARGE_BODY = 24 << 20
PROBE_INTERVAL_S = 0.1
_MIB = b"{" * (1 << 20)


# --- the hostile load (a process of its own) ---------------------------------------------------


async def hostile(port: int, kind: str, until: float, trickle_s: float, tally: Counter[str]) -> None:
    """One hostile client, reconnecting whenever the server cuts it, until `until`."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["connect failures"] += 1
            await asyncio.sleep(1)
            continue
        tally[f"{kind} opened"] += 1
        try:
            if kind == "head":
                writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\n")
            elif kind == "body":
                writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")  # fmt: skip
            else:
                writer.write(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % LARGE_BODY)  # fmt: skip
                for offset in range(0, LARGE_BODY - 1, len(_MIB)):  # a MiB at a time: the client holds no more
                    writer.write(_MIB[: LARGE_BODY - 1 - offset])
                    await writer.drain()
            await writer.drain()
            while time.monotonic() < until:
                try:
                    data = await asyncio.wait_for(reader.read(65536), trickle_s)
                except TimeoutError:
                    if kind != "large":
                        writer.write(b"a")
                        await writer.drain()
                    continue
                if not data:
                    break
                tally[f"{kind} answered {data[9:12].decode(errors='replace')}"] += 1
            else:
                tally[f"{kind} still open at the end"] += 1
                writer.close()
                return
        except (ConnectionError, OSError):
            pass
        tally[f"{kind} cut by the server"] += 1
        writer.close()
        await asyncio.sleep(1)


async def hostile_load(port: int, seconds: float, trickle_s: float) -> dict[str, int]:
    until = time.monotonic() + seconds
    tally: Counter[str] = Counter()
    kinds = ["head"] * 150 + ["body"] * 150 + ["large"] * 20
    await asyncio.gather(*(hostile(port, kind, until, trickle_s, tally) for kind in kinds))
    return dict(tally)


# --- the probe and the orchestration ------------------------------------------------------------


async def probe_healthz(port: int, seconds: float) -> tuple[list[float], Counter[str]]:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        sent = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            outcomes[answer[9:12].decode(errors="replace") or "closed"] += 1
        except (OSError, TimeoutError) as exc:
            outcomes[type(exc).__name__] += 1
        latencies.append(time.monotonic() - sent)
        await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - sent)))
    return latencies, outcomes


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    broker_url = f"{REDIS_URL}/{args.redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    with tempfile.TemporaryDirectory(prefix="labgate-hostile-") as tmp:
        root = Path(tmp)
        port = free_port()
        config_path, _, _ = write_setup(root, f"sqlite:///{root / 'labgate.sqlite3'}", broker_url, port)
        server = start(labgate_web_argv(config_path), {"LABGATE_BROKER_URL": broker_url})
        load = None
        try:
            wait_listening(port, server)
            quiet, _ = asyncio.run(probe_healthz(port, 2))
            rss_before = memory_mb(server.pid, "VmRSS")
            load = subprocess.Popen([sys.executable, __file__, "--role", "load", "--port", str(port),
                                     "--seconds", str(args.seconds), "--trickle-s", str(args.trickle_s)],
                                    cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
            time.sleep(1)  # the load's connections are open
            latencies, outcomes = asyncio.run(probe_healthz(port, args.seconds - 2))
            tally = json.loads(load.communicate(timeout=args.seconds + 60)[0].strip().splitlines()[-1])
            rss_peak = memory_mb(server.pid, "VmHWM")
        finally:
            if load is not None and load.poll() is None:
                load.kill()
            stop(server)
            broker.flushdb()
    print(f"healthz answers under load: {dict(outcomes)}", flush=True)
    print(f"hostile connections: {json.dumps(tally, sort_keys=True)}", flush=True)
    if set(outcomes) != {"200"}:
        raise SystemExit(f"/healthz failed under load: {dict(outcomes)}")
    return {
        "healthz_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "healthz_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "healthz_max_ms": round(max(latencies) * 1000, 2),
        "healthz_quiet_p50_ms": round(statistics.median(quiet) * 1000, 2),
        "healthz_requests": len(latencies),
        "rss_mb": rss_peak,
        "rss_before_load_mb": rss_before,
        "hostile_connections_opened": sum(n for what, n in tally.items() if what.endswith("opened")),
        "hostile_connections_cut": sum(n for what, n in tally.items() if what.endswith("cut by the server")),
        "seconds": args.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=45, help="how long the hostile load lasts")
    parser.add_argument("--trickle-s", type=float, default=5, help="a trickling client's pause between bytes")
    parser.add_argument("--redis-db", type=int, default=14, help="Redis database number (flushed)")
    parser.add_argument("--role", choices=["bench", "load"], default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "load":
        print(json.dumps(asyncio.run(hostile_load(args.port, args.seconds, args.trickle_s))), flush=True)
        return
    figures = bench(args)
    print(json.dumps({"bench": "webhook_hostile", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
