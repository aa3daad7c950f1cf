"""Benchmark: triage against ground truth (issue 12). 22 changes on the example tree whose truth is known, for
each seed, through labgate's own control plane; the figures are the confusion table's errors.

What is real: the store, the broker (Redis), `submit` and every control step after it (start, dispatch, the
scheduler's windows, record_result, the history, re-runs and base runs, known issues from the config, the
verdicts, the pipeline's result, the summary a forge would get). What is played: the job workers. The
checkout, build and lab workers are played by this script from the broker's messages (as Celery's Redis
transport hands them over), answering with results shaped as workers/spec.py says workers send them. The
lab's outcomes come from a seeded model of the example tree's tests, which is the ground truth:

    math, strings   pass, unless the change breaks them (a real regression: they fail every run)
    skip            skips
    race            fails 30% of runs on every commit (a flaky test, on the base too)
    netlink         fails 20% of runs on every commit with "rtnl: timeout" (known issue KI-NETLINK)
    legacy          fails on the base; one change fixes it
    perf/loop       reports `# metric: hello.loop_ns=<v> ns`: 1000 ns with 2% noise; one change makes it 10%
                    slower, one changes only the noise's draw

Two changes crash the kernel the same way, one meets a board fault (every attempt incomplete), one touches
only documentation. Why played workers: a seed is 22 pipelines plus their re-runs and base runs (about
150 test runs); under QEMU that is about 10 minutes a seed on this machine, and the decision under test is the
control plane's. The real path (QEMU, examples/hello's fail.patch, its re-runs and base runs) is
tests/test_triage_e2e.py.

    .venv/bin/python bench/campaign.py [--seeds 0 1 2 3 4] [--store sqlite|postgresql]

Last line: {"bench": "campaign", "figures": {...}, "targets": {...}}
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import create_engine, select, text  # noqa: E402

from bot.host.config import Config, DeviceClass, KnownIssueConfig, Tree, Web  # noqa: E402
from bot.host.stores import Runtime, open_runtime  # noqa: E402
from bot.pipelines.lifecycle import START_PIPELINE_TASK, Submission, record_result, start_pipeline, submit  # noqa: E402
from bot.reporting.summary import pipeline_summary, summary_markdown  # noqa: E402
from bot.store.models import Job, Pipeline, TestVerdict  # noqa: E402
from workers.app import BUILD_QUEUE, CHECKOUT_QUEUE, CONTROL_QUEUE, RESULTS_QUEUE, configure, lab_queue  # noqa: E402
from workers.spec import INCOMPLETE_POWER, JobResult, JobSpec, TestCase  # noqa: E402

ADMIN_URL = os.environ.get("LABGATE_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("LABGATE_BENCH_REDIS", "redis://127.0.0.1:6379")
TARGETS = {"missed_regressions": 0, "false_new": 0, "reports_without_reproducer": 0}
TREE = "hello"
CLASS = "qemu-x86_64"
PUBLIC_URL = "https://ci.example.org"
STAGING_PUSHES = 10  # base-branch pipelines before the changes: the tests' history
CRASH = "BUG: kernel NULL pointer dereference in hello_probe"
FAILING = ("new", "regression")

PLAN = """\
version: 1
builds:
  - name: x86_64
    command: make O="$LABGATE_BUILD" -j2
    artifacts: [tests/test_*]
    timeout: 300
tests:
  - name: unit
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    kernel: debian
    commands:
      - {name: math, run: ./tests/test_math}
      - {name: strings, run: ./tests/test_strings}
      - {name: skip, run: ./tests/test_skip}
      - {name: race, run: ./tests/test_race}
      - {name: netlink, run: ./tests/test_netlink}
      - {name: legacy, run: ./tests/test_legacy}
    timeout: 120
  - name: perf
    build: x86_64
    device: {arch: x86_64, platform: qemu}
    kernel: debian
    paths: ["src/loop*"]
    commands:
      - {name: loop, run: ./tests/test_loop}
    timeout: 120
"""


@dataclass(frozen=True)
class Truth:
    """One change and what it really does."""

    name: str
    kind: str  # regression crash flaky known board docs fix slowdown noise clean
    touches: tuple[str, ...] = ("src/mathx.c",)
    breaks: tuple[str, ...] = ()  # tests that fail every run with it

    @property
    def is_regression(self) -> bool:
        return self.kind in ("regression", "crash", "slowdown")

    @property
    def subject(self) -> str | None:
        """The test whose verdict says whether labgate saw this change for what it is."""
        if self.breaks:
            return f"unit/{self.breaks[0]}"
        subjects = {"slowdown": "perf/loop", "noise": "perf/loop", "flaky": "unit/race", "known": "unit/netlink",
                    "fix": "unit/legacy"}  # fmt: skip
        return subjects.get(self.kind)


CHANGES = (
    Truth("mathx: off by one in mul", "regression", breaks=("math",)),
    Truth("strings: drop the terminator", "regression", ("src/strings.c",), breaks=("strings",)),
    Truth("mathx and strings: shared helper, wrong", "regression", ("src/mathx.c", "src/strings.c"),
          breaks=("math", "strings")),  # fmt: skip
    Truth("probe: dereference before the check", "crash", ("src/probe.c",), breaks=("math",)),
    Truth("probe: reorder init", "crash", ("src/probe.c", "src/init.c"), breaks=("strings",)),
    Truth("loop: an extra pass", "slowdown", ("src/loop.c",)),
    Truth("race: a comment in the racing test", "flaky", ("tests/test_race.c",)),
    Truth("race: rename a local", "flaky", ("tests/test_race.c",)),
    Truth("netlink: log the timeout", "known", ("src/netlink.c",)),
    Truth("board: a change tested on a dying board", "board", ("src/mathx.c",)),
    Truth("README: typo", "docs", ("README.md",)),
    Truth("legacy: fix the old failure", "fix", ("src/legacy.c",)),
    Truth("loop: reformat", "noise", ("src/loop.c",)),
    *(Truth(f"clean change {n}", "clean", (f"src/part{n}.c",)) for n in range(1, 10)),
)


@dataclass
class Model:
    """The example tree's tests as the lab would see them run: the seeded ground truth."""

    rng: random.Random
    seen: set[str] = field(default_factory=set)  # changes whose unit job ran once already

    def unit(self, truth: Truth | None) -> tuple[str | None, str | None, tuple[TestCase, ...], dict[str, Any]]:
        """A run of the unit job with the change (or the base, truth None): result, error code, tests, outputs."""
        if truth is not None and truth.kind == "board":
            return None, INCOMPLETE_POWER, (), {}
        # A flaky change is one whose first run met the flaky test failing (else there is nothing to triage).
        unlucky = truth is not None and truth.kind == "flaky" and truth.name not in self.seen
        if truth is not None:
            self.seen.add(truth.name)
        tests = []
        for name in ("math", "strings", "skip", "race", "netlink", "legacy"):
            status, diagnostics = "pass", ""
            if name == "skip":
                status = "skip"
            elif truth is not None and name in truth.breaks:
                status, diagnostics = "fail", f"# {name}: expected 42, got 41"
            elif name == "race" and (self.rng.random() < 0.3 or unlucky):
                status, diagnostics = "fail", "# race: lost an update (2 of 1000)"
            elif name == "netlink" and (self.rng.random() < 0.2 or (truth is not None and truth.kind == "known")):
                status, diagnostics = "fail", "# netlink: rtnl: timeout waiting for the lock"
            elif name == "legacy" and not (truth is not None and truth.kind == "fix"):
                status, diagnostics = "fail", "# legacy: ENOTSUP"
            tests.append(TestCase(path=name, status=status, diagnostics=diagnostics))  # type: ignore[arg-type]
        outputs: dict[str, Any] = {}
        if truth is not None and truth.kind == "crash":
            outputs["crash"] = {"title": CRASH, "kind": "BUG", "excerpt": CRASH}
        failed = any(t.status == "fail" for t in tests)
        return ("fail" if failed else "pass"), None, tuple(tests), outputs

    def perf(self, truth: Truth | None) -> tuple[TestCase, ...]:
        value = self.rng.gauss(1000.0, 20.0) * (1.10 if truth is not None and truth.kind == "slowdown" else 1.0)
        return (TestCase(path="loop", status="pass", diagnostics=f"# metric: hello.loop_ns={value:.1f} ns"),)


def fake_sha(*words: object) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, words))).hex + "00000000"


@dataclass
class PlayedLab:
    """The job workers, played: every message on the broker's queues is answered through the real result path."""

    runtime: Runtime
    broker: Any
    model: Model
    truths: dict[int, Truth | None] = field(default_factory=dict)  # pipeline id -> its change's truth (None: base)
    commits: dict[int, tuple[str, str]] = field(default_factory=dict)  # pipeline id -> (base, head)
    runs: Counter[str] = field(default_factory=Counter)

    def drain(self) -> None:
        """Answer messages until every queue is empty."""
        queues = [CONTROL_QUEUE, RESULTS_QUEUE, CHECKOUT_QUEUE, BUILD_QUEUE, lab_queue(CLASS)]
        while True:
            answered = False
            for queue in queues:
                raw = self.broker.rpop(queue)
                if raw is None:
                    continue
                answered = True
                self.answer(queue, json.loads(raw))
            if not answered:
                return

    def answer(self, queue: str, message: dict[str, Any]) -> None:
        task = message["headers"]["task"]
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        if queue == CONTROL_QUEUE:
            if task == START_PIPELINE_TASK:
                start_pipeline(self.runtime, int(args[0]))
            return  # reports go to no forge here; timers do not run
        if queue == RESULTS_QUEUE:
            return
        spec = JobSpec.model_validate_json(args[0])
        self.runs[spec.kind] += 1
        record_result(self.runtime, self.result_of(spec))

    def result_of(self, spec: JobSpec) -> JobResult:
        if spec.pipeline_id not in self.commits and spec.kind == "checkout":  # a bisection's (not played here)
            self.runs["bisection checkouts"] += 1
            return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result=None,
                             error_code="user-error", error_message="the played lab keeps no commits to bisect")
        if spec.pipeline_id not in self.commits:  # the lab's own pipeline: a health check of the class boots
            assert spec.test is not None, spec
            cases = tuple(TestCase(path=command.name, status="pass") for command in spec.test.commands)
            return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result="pass",
                             tests=cases)  # fmt: skip
        base_sha, head_sha = self.commits[spec.pipeline_id]
        if spec.kind == "checkout":
            truth = self.truths[spec.pipeline_id]
            changed = list(truth.touches) if truth is not None else ["src/loop.c", "src/mathx.c"]
            outputs = {"base_sha": base_sha, "head_sha": head_sha, "tested_sha": head_sha, "plan_text": PLAN,
                       "changed_files": changed, "changed_lines": {f: [[1, 3]] for f in changed},
                       "tree_has": {"checkpatch": False, "kernel_doc": False}}  # fmt: skip
            return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result="pass",
                             outputs=outputs)  # fmt: skip
        if spec.kind in ("build", "static"):
            put = self.runtime.artifacts.put_bytes
            artifacts = {f"tests/test_{name}": {"digest": put(f"{name}{head_sha}".encode()), "mode": 0o755}
                         for name in ("math", "strings", "skip", "race", "netlink", "legacy", "loop")}  # fmt: skip
            outputs = {"artifacts": artifacts} if spec.kind == "build" else {}
            return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result="pass",
                             outputs=outputs)  # fmt: skip
        truth = self.truth_of_test(spec.job_id)
        assert spec.test is not None
        if spec.test.name == "perf":
            return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result="pass",
                             tests=self.model.perf(truth))  # fmt: skip
        result, error_code, tests, outputs = self.model.unit(truth)
        message = f"kernel crash while the tests ran: {CRASH}" if "crash" in outputs else None
        return JobResult(job_id=spec.job_id, result_token=spec.result_token, delivery=1, result=result,  # type: ignore[arg-type]
                         error_code=error_code, error_message=message, tests=tests, outputs=outputs)  # fmt: skip

    def truth_of_test(self, job_id: int) -> Truth | None:
        """Which code a test job runs: its change's, or the base's (a base run of triage, a staging push)."""
        with self.runtime.store.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            mark = job.spec.get("triage")
            base_role = job.spec.get("role") == "base" or (isinstance(mark, dict) and mark.get("side") == "base")
            if base_role:
                return None
            return self.truths.get(job.pipeline_id)


@dataclass(frozen=True)
class Outcome:
    truth: Truth
    pipeline_id: int
    result: str | None
    verdicts: tuple[str, ...]
    subject_verdict: str | None  # the verdict of the truth's subject test, if it has one
    extra_runs: int
    reproducer: bool  # every new failure's report names `labgate reproduce`

    @property
    def called_new(self) -> bool:
        return self.result == "fail" and any(v in FAILING for v in self.verdicts)

    @property
    def shown(self) -> str:
        """The confusion table's column: the subject test's verdict; else a failing verdict if any, else the
        pipeline's result (the other tests' flaky and pre-existing verdicts are the same on every change)."""
        if self.subject_verdict is not None:
            return self.subject_verdict
        failing = [verdict for verdict in self.verdicts if verdict in FAILING]
        return failing[0] if failing else (self.result or "?")


def run_seed(seed: int, store: str, redis_db: int) -> list[Outcome]:
    import redis

    work = Path(tempfile.mkdtemp(prefix=f"labgate-campaign-{seed}-"))
    database_url = _database(store, seed)
    broker_url = f"{REDIS_URL}/{redis_db}"
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()
    configure(broker_url, longest_job_s=600)
    config = Config(
        data_dir=work / "data", web=Web(public_url=PUBLIC_URL),
        trees=[Tree(name=TREE, url="https://git.example.org/hello.git")],
        device_classes=[DeviceClass(name=CLASS, tags={"arch": "x86_64", "platform": "qemu"}, capacity=2)],
        known_issues=[KnownIssueConfig(id="KI-NETLINK", link="https://bugs.example.org/7", owner="net@example.org",
                                       test="unit/netlink", log="rtnl: timeout",
                                       expires=date.today() + timedelta(days=30))],
    )  # fmt: skip
    runtime = open_runtime(config, database_url=database_url)
    lab = PlayedLab(runtime, broker, Model(random.Random(seed)))
    base = fake_sha("base", 0)
    for push in range(1, STAGING_PUSHES + 1):  # the base branch's history: staging pushes, one after another
        head = fake_sha("base", push)
        pipeline_id = submit(runtime, Submission(tree_name=TREE, tree_url=config.trees[0].url, source="git-push",
                                                 external_id="main", base_ref="main", ref="main", kind="post-merge",
                                                 title=f"push {push}"))  # fmt: skip
        lab.truths[pipeline_id], lab.commits[pipeline_id] = None, (base, head)
        lab.drain()
        base = head
    ids = []
    for number, truth in enumerate(CHANGES, 1):
        pipeline_id = submit(runtime, Submission(tree_name=TREE, tree_url=config.trees[0].url, source="try",
                                                 external_id=f"change-{number}", base_ref="main", title=truth.name,
                                                 patches=((f"{number}.patch", truth.name.encode()),)))  # fmt: skip
        lab.truths[pipeline_id], lab.commits[pipeline_id] = truth, (base, fake_sha("change", number))
        ids.append(pipeline_id)
        lab.drain()
    lab.drain()
    outcomes = [_outcome(runtime, truth, pipeline_id) for truth, pipeline_id in zip(CHANGES, ids, strict=True)]
    runtime.store.engine.dispose()
    broker.flushdb()
    if database_url is not None:  # the seed's own PostgreSQL database, gone with it
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{database_url.rsplit("/", 1)[1]}"'))
        admin.dispose()
    return outcomes


def _outcome(runtime: Runtime, truth: Truth, pipeline_id: int) -> Outcome:
    with runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        assert pipeline.state == "done", f"pipeline {pipeline_id} ({truth.name}) is still {pipeline.state}"
        rows = session.execute(select(TestVerdict.test_path, TestVerdict.verdict)
                               .where(TestVerdict.pipeline_id == pipeline_id)).all()  # fmt: skip
        verdicts = tuple(verdict for _, verdict in rows)
        subject = next((verdict for path, verdict in rows if path == truth.subject), None)
        extra = sum(1 for job in pipeline.jobs if isinstance(job.spec.get("triage"), dict))
        result = pipeline.result
    reproducer = True
    if any(v in FAILING for v in verdicts):
        summary = pipeline_summary(runtime, pipeline_id)
        shown = summary_markdown(summary) if summary is not None else ""
        reproducer = "labgate reproduce" in shown
    return Outcome(truth, pipeline_id, result, verdicts, subject, extra, reproducer)


def _database(store: str, seed: int) -> str | None:
    if store == "sqlite":
        return None
    name = f"labgate_campaign_{seed}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def confusion(outcomes: list[Outcome]) -> str:
    """Rows: the truth; columns: the worst verdict labgate reported."""
    columns = ["new", "regression", "unconfirmed", "pre-existing", "known-issue", "flaky", "fixed", "pass",
               "incomplete", "error"]  # fmt: skip
    rows: dict[str, Counter[str]] = {}
    for outcome in outcomes:
        rows.setdefault(outcome.truth.kind, Counter())[outcome.shown] += 1
    width = max(len(kind) for kind in rows) + 2
    lines = [" " * width + " ".join(f"{c[:11]:>11}" for c in columns)]
    for kind, counts in rows.items():
        lines.append(f"{kind:<{width}}" + " ".join(f"{counts.get(c, 0):>11}" for c in columns))
    return "\n".join(lines)


def figures_of(outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "changes": len(outcomes),
        "missed_regressions": sum(1 for o in outcomes if o.truth.is_regression and not o.called_new),
        "false_new": sum(1 for o in outcomes if not o.truth.is_regression and o.called_new),
        "reports_without_reproducer": sum(1 for o in outcomes if o.called_new and not o.reproducer),
        "median_extra_runs_per_change": statistics.median(o.extra_runs for o in outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--redis-db", type=int, default=13, help="a Redis database this run may flush")
    args = parser.parse_args(argv)
    per_seed = {}
    started = time.monotonic()
    for seed in args.seeds:
        outcomes = run_seed(seed, args.store, args.redis_db)
        per_seed[seed] = figures_of(outcomes)
        print(f"seed {seed}: {json.dumps(per_seed[seed])}")
        print(confusion(outcomes))
        for outcome in outcomes:
            print(f"  {outcome.truth.kind:<10} {outcome.shown:<12} extra runs {outcome.extra_runs:>2}  "
                  f"{outcome.truth.name}")  # fmt: skip
    figures: dict[str, Any] = {
        "seeds": args.seeds, "store": args.store, "seconds": round(time.monotonic() - started, 1),
        **{key: sum(f[key] for f in per_seed.values()) for key in ("missed_regressions", "false_new",
                                                                 "reports_without_reproducer")},
        "median_extra_runs_per_change": statistics.median(f["median_extra_runs_per_change"] for f in per_seed.values()),
        "per_seed": per_seed,
    }  # fmt: skip
    print(json.dumps({"bench": "campaign", "figures": figures, "targets": TARGETS}))
    return 0 if all(figures[key] <= target for key, target in TARGETS.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
