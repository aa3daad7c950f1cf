"""Benchmark: the store-backed test queue (bot/pipelines/scheduler.py) with 100,000 test jobs over 50 classes.

Everything is the product's own path on a fresh PostgreSQL database and a flushed Redis database:

- enqueue: pipelines of 50 tests each, every test asking for k=v tags (arch, soc) that the planner
  matches to a device class (bot/core/progress.py draft_jobs over the config's Inventory); the rows are
  stored, then each pipeline's build passes through the real result path (bot/pipelines/lifecycle.py
  record_result), which hands its tests to the scheduler and fills the windows;
- a storm: the first `--storm` jobs all ask for class c00, from one tree and one submitter;
- dispatch: simulated job workers, `--consumers` processes, take messages from the class queues
  (BRPOP, as Celery's Redis transport does, then every other message there: each class's workers take
  theirs at the same moment) and acknowledge at once: the jobs end and the scheduler's fill dispatches
  every freed slot of their classes in the same transaction, acknowledgements that arrive together
  being filled together. Each class has capacity `--workers` (its 4 workers) and the configured window
  margin. The whole result path (record_result, one result per transaction) is timed apart, on a sample;
- fairness: once a tenth of the storm has run, a lone tree queues one job on c00; the figure is how
  many storm jobs c00's workers took after it was queued and before it.

Redis memory is INFO's used_memory after the enqueue minus before it: what 100,000 waiting jobs cost
the broker (they are rows; only the windows are messages).

    .venv/bin/python bench/scheduler.py [--jobs 100000] [--classes 50] [--workers 4] [--storm 5000]

Last line: {"bench": "scheduler", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ADMIN_URL = os.environ.get("LABGATE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LABGATE_BENCH_REDIS", "redis://127.0.0.1:6379")
TARGETS = {"dispatch_jobs_per_s": 1000.0, "redis_mb": 150.0, "lone_tree_wait_jobs": 4}
TESTS_PER_PIPELINE = 50
ORDER_KEY = "bench:order:c00"  # which tree each job c00's workers took was from, in order
STOP_KEY = "bench:stop"
WINDOW_MAX = 64  # the most messages a class holds (window_size: capacity + margin)


def class_name(index: int) -> str:
    return f"c{index:02d}"


def class_tags(index: int) -> dict[str, str]:
    return {"arch": ("x86_64", "arm64")[index % 2], "platform": ("qemu", "board")[index % 3 == 0],
            "soc": f"soc{index:02d}"}  # fmt: skip


def write_config(root: Path, database_url: str, broker_url: str, args: argparse.Namespace) -> Path:
    classes = "".join(
        f"  - {{name: {class_name(i)}, capacity: {args.workers}, tags: {json.dumps(class_tags(i))}}}\n"
        for i in range(args.classes)
    )
    path = root / "labgate.yaml"
    path.write_text(
        f"data_dir: {root / 'data'}\ndatabase_url: {database_url}\nbroker_url: {broker_url}\n"
        f"scheduling: {{max_waiting_per_class: {args.jobs + 1}}}\n"
        f"trees:\n" + "".join(f"  - {{name: {tree}, url: 'https://example.org/{tree}.git'}}\n"
                              for tree in ["storm", "lone", *(f"t{i:02d}" for i in range(20))])
        + f"device_classes:\n{classes}"
    )  # fmt: skip
    return path


def plan_text(classes: list[int]) -> str:
    """A plan whose tests ask for these classes by their tags (the planner matches them)."""
    wanted = [{key: value for key, value in class_tags(i).items() if key != "platform"} for i in classes]
    tests = "".join(f"  - {{name: t{n}, build: kernel, kernel: bzImage, device: {json.dumps(tags)}, "
                    f"commands: [{{name: boot, run: 'true'}}], timeout: 60}}\n"
                    for n, tags in enumerate(wanted))  # fmt: skip
    return f"version: 1\nbuilds:\n  - {{name: kernel, command: make, artifacts: [bzImage]}}\ntests:\n{tests}"


@functools.cache
def parsed_plan(classes: tuple[int, ...]) -> Any:
    """A plan parsed once per shape: YAML parsing is the checkout's cost, not the queue's."""
    from bot.core.plans import parse_plan

    return parse_plan(plan_text(list(classes)), "bench plan")


def enqueue_pipeline(runtime: Any, tree: str, submitter: str, classes: tuple[int, ...]) -> int:
    """Match (per pipeline) and store one pipeline whose build passed, and hand its tests to the scheduler,
    in one transaction as the result path does (bot/pipelines/lifecycle.py _after_build, after_result)."""
    from sqlalchemy import select

    from bot.core.progress import draft_jobs
    from bot.pipelines import scheduler
    from bot.pipelines.lifecycle import Outbox
    from bot.store.models import Change, Job, Pipeline, Revision, Tree
    from workers.app import BUILD_QUEUE, lab_queue

    drafts = draft_jobs(parsed_plan(classes), head_sha="0" * 40, changed_files=[],
                        inventory=runtime.config.inventory(), tier="hardware", max_build_s=600)  # fmt: skip
    outbox = Outbox()
    with runtime.store.session() as session:
        tree_row = session.scalar(select(Tree).where(Tree.name == tree)) or Tree(name=tree, url=f"https://x/{tree}")
        change = Change(tree=tree_row, source="github", external_id=uuid.uuid4().hex, submitter=submitter)
        pipeline = Pipeline(revision=Revision(change=change, base_ref="main"), state="running")
        build = Job(pipeline=pipeline, kind="build", name="kernel", queue=BUILD_QUEUE, state="done", result="pass")
        session.add(build)
        session.flush()
        tests = []
        for draft in drafts:
            if draft.kind == "test":
                assert draft.device_class is not None, draft
                spec = {**draft.spec, "device_class": draft.device_class}
                tests.append(Job(pipeline=pipeline, kind="test", name=draft.name, spec=spec,
                                 queue=lab_queue(draft.device_class), depends_on_id=build.id))  # fmt: skip
        session.add_all(tests)
        session.flush()
        scheduler.fill_windows(runtime, session, scheduler.hand_over(runtime, session, tests), outbox)
        build_id = build.id
    outbox.send()
    return build_id


def take(broker: Any, queues: list[str]) -> tuple[bytes, Any] | None:
    """The oldest message of the first non-empty queue, as a Celery worker takes it; its JobSpec."""
    popped = broker.brpop(queues, timeout=1)
    if popped is None:
        return None
    queue, raw = popped
    return queue, job_spec(raw)


def job_spec(raw: bytes) -> Any:
    """The JobSpec a worker reads from a message as kombu's Redis transport stores it."""
    from workers.spec import JobSpec

    return JobSpec.model_validate_json(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])


def take_all(broker: Any, queues: list[str]) -> list[tuple[bytes, Any]]:
    """What every class's workers take at one moment: the oldest message of each queue, waiting for the
    first, then whatever else is there (each worker of a class takes one; a class holds its window)."""
    first = take(broker, queues)
    if first is None:
        return []
    pipe = broker.pipeline(transaction=False)
    for queue in queues:
        pipe.rpop(queue, WINDOW_MAX)
    taken = [first]
    for queue, raws in zip(queues, pipe.execute(), strict=True):
        taken += [(queue.encode(), job_spec(raw)) for raw in raws or ()]
    return taken


def acknowledge(runtime: Any, job_ids: list[int]) -> None:
    """Workers that acknowledge at once: their jobs end and their classes' next waiting jobs are dispatched,
    in one transaction, by the scheduler's own fill (what record_result runs after its bookkeeping).
    Acknowledgements that arrive together are recorded together and their classes filled together."""
    from sqlalchemy import update

    from bot.pipelines import scheduler
    from bot.pipelines.lifecycle import Outbox
    from bot.store.models import Job

    outbox = Outbox()
    with runtime.store.session() as session:
        queues = session.scalars(update(Job).where(Job.id.in_(job_ids)).values(state="done", result="pass")
                                 .returning(Job.queue)).all()  # fmt: skip
        scheduler.fill_windows(runtime, session, queues, outbox)
    outbox.send()


def consume(args: argparse.Namespace) -> None:
    """Simulated job workers for every class: take the oldest message, acknowledge at once."""
    import redis

    from bot.host.config import load_config
    from bot.host.stores import open_runtime
    from workers.app import configure, lab_queue

    config = load_config(Path(args.config))
    configure(args.broker_url, longest_job_s=600)
    runtime = open_runtime(config, create=False)
    broker = redis.Redis.from_url(args.broker_url)
    queues = [lab_queue(dc.name) for dc in config.device_classes]
    random.shuffle(queues)  # BRPOP serves the first non-empty list: each consumer starts elsewhere
    while not broker.exists(STOP_KEY):
        taken = take_all(broker, queues)
        if not taken:
            continue
        c00 = [spec.tree_name for queue, spec in taken if queue == b"lab.c00"]
        if c00:
            broker.rpush(ORDER_KEY, *c00)
        acknowledge(runtime, [spec.job_id for _, spec in taken])


def result_path_rate(runtime: Any, broker: Any, queues: list[str], count: int) -> float:
    """Jobs per second through the whole result path (record_result: token, pipeline lock, bookkeeping, fill),
    one process, on the first `count` messages."""
    from bot.pipelines.lifecycle import record_result
    from workers.spec import JobResult

    started = time.perf_counter()
    for _ in range(count):
        taken = take(broker, queues)
        assert taken is not None
        spec = taken[1]
        record_result(runtime, JobResult(job_id=spec.job_id, delivery=1, result="pass", result_token=spec.result_token))
    return count / (time.perf_counter() - started)


def count_states(runtime: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from bot.store.models import Job

    with runtime.store.session() as session:
        rows = session.execute(select(Job.state, func.count()).where(Job.kind == "test").group_by(Job.state)).all()
        return {state: count for state, count in rows}


def c00_done(runtime: Any) -> int:
    from sqlalchemy import func, select

    from bot.store.models import Job

    with runtime.store.session() as session:
        return session.scalar(select(func.count()).select_from(Job)
                              .where(Job.queue == "lab.c00", Job.state == "done")) or 0  # fmt: skip


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import redis
    from sqlalchemy import create_engine, text

    from bot.host.config import load_config
    from bot.host.stores import open_runtime
    from workers.app import configure

    rng = random.Random(args.seed)
    name = f"labgate_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    broker_url = f"{REDIS_URL}/{args.redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    consumers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="labgate-bench-") as tmp:
            config_path = write_config(Path(tmp), ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", broker_url, args)
            runtime = open_runtime(load_config(config_path))  # migrates the fresh database
            configure(broker_url, longest_job_s=600)
            memory_before = int(broker.info("memory")["used_memory"])

            # --- enqueue: the storm on c00 first, then everyone else over every class -----------------
            started = time.perf_counter()
            storm_pipelines = args.storm // TESTS_PER_PIPELINE
            for _ in range(storm_pipelines):
                enqueue_pipeline(runtime, "storm", "storm-bot", (0,) * TESTS_PER_PIPELINE)
            rest = args.jobs - storm_pipelines * TESTS_PER_PIPELINE
            shapes = [tuple(rng.randrange(args.classes) for _ in range(TESTS_PER_PIPELINE)) for _ in range(20)]
            done_pipelines = storm_pipelines
            while rest > 0:
                size = min(rest, TESTS_PER_PIPELINE)
                classes = rng.choice(shapes)[:size]
                enqueue_pipeline(runtime, f"t{rng.randrange(20):02d}", f"u{rng.randrange(200):03d}", classes)
                rest -= size
                done_pipelines += 1
                if done_pipelines % 200 == 0:
                    print(f"enqueued {args.jobs - rest} jobs ({time.perf_counter() - started:.1f} s)", flush=True)
            enqueue_s = time.perf_counter() - started
            states = count_states(runtime)
            messages = sum(int(broker.llen(f"lab.{class_name(i)}")) for i in range(args.classes))
            list_bytes = sum(int(broker.memory_usage(f"lab.{class_name(i)}") or 0) for i in range(args.classes))
            redis_mb = (int(broker.info("memory")["used_memory"]) - memory_before) / 1e6
            print(f"enqueue: {args.jobs} jobs in {enqueue_s:.1f} s; states {states}; {messages} messages in "
                  f"Redis, {redis_mb:.2f} MB", flush=True)  # fmt: skip

            # --- the whole result path, for comparison: a sample through record_result -------------------
            sample_rate = result_path_rate(runtime, broker, [f"lab.{class_name(i)}" for i in range(1, args.classes)],
                                           args.result_path_sample)  # fmt: skip
            print(f"result path: {sample_rate:.0f} jobs/s in one process", flush=True)

            # --- dispatch: simulated workers acknowledge at once; a lone tree's job comes mid-storm -------
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            started = time.perf_counter()
            for _ in range(args.consumers):
                consumers.append(subprocess.Popen([sys.executable, __file__, "--role", "consumer", "--config",
                                                   str(config_path), "--broker-url", broker_url], env=env))  # fmt: skip
            while c00_done(runtime) < args.storm // 10:
                time.sleep(0.05)
            enqueue_pipeline(runtime, "lone", "carol", (0,))
            lone_mark = int(broker.llen(ORDER_KEY))  # the lone job is queued (committed): count from here
            total = args.jobs + 1
            # Polled twice a second: the count reads every row, and the consumers need the cores.
            while count_states(runtime).get("done", 0) < total:
                if any(consumer.poll() is not None for consumer in consumers):
                    raise SystemExit("a consumer died")
                time.sleep(0.5)
            dispatch_s = time.perf_counter() - started
            order = [tree.decode() if isinstance(tree, bytes) else tree for tree in broker.lrange(ORDER_KEY, 0, -1)]
            lone_at = order.index("lone")
            lone_wait = sum(1 for tree in order[lone_mark:lone_at] if tree == "storm")
            # The windows' first messages went out during the enqueue; the sample's were sent in its own time.
            dispatched = total - messages - args.result_path_sample
            print(f"dispatch: {dispatched} jobs in {dispatch_s:.1f} s; lone tree's job after {lone_wait} storm "
                  f"jobs", flush=True)  # fmt: skip
            runtime.store.engine.dispose()
    finally:
        broker.set(STOP_KEY, "1")
        for consumer in consumers:
            try:
                consumer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                consumer.send_signal(signal.SIGKILL)
                consumer.wait()
        broker.flushdb()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {
        "jobs": args.jobs, "classes": args.classes, "workers_per_class": args.workers, "storm": args.storm,
        "consumers": args.consumers,
        "enqueue_jobs_per_s": round(args.jobs / enqueue_s, 1),
        "dispatch_jobs_per_s": round(dispatched / dispatch_s, 1),
        "result_path_jobs_per_s": round(sample_rate, 1),
        "redis_mb": round(redis_mb, 3),
        "redis_messages_after_enqueue": messages,
        "redis_bytes_per_message": round(list_bytes / messages, 1) if messages else 0.0,
        "lone_tree_wait_jobs": lone_wait,
        "load_average": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "consumer"], default="bench")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4, help="capacity of each class (its workers)")
    parser.add_argument("--storm", type=int, default=5000, help="jobs of one tree on c00, queued first")
    parser.add_argument("--consumers", type=int, default=4, help="simulated worker processes (all classes each)")
    parser.add_argument("--redis-db", type=int, default=15, help="Redis database number (flushed)")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--result-path-sample", type=int, default=500, help="jobs acknowledged through "
                        "record_result, timed apart")  # fmt: skip
    parser.add_argument("--config")
    parser.add_argument("--broker-url")
    args = parser.parse_args()
    if args.role == "consumer":
        consume(args)
        return
    if args.storm % TESTS_PER_PIPELINE or args.storm > args.jobs:
        raise SystemExit(f"--storm must be a multiple of {TESTS_PER_PIPELINE} and at most --jobs")
    figures = bench(args)
    print(json.dumps({"bench": "scheduler", "figures": figures, "targets": TARGETS}))


if __name__ == "__main__":
    main()
