"""`labgate reproduce`: the spec read from this machine's store or fetched from a server on 127.0.0.1, the
submission it makes, and what a hostile or unhelpful server gets told. (Running it: tests/test_reproduce_slow.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from bot.cli import reproduce
from bot.cli.main import main
from bot.cli.reproduce import describe, fetch_spec, read_local_spec, reproduction_submission
from bot.core.reproduce import JobSpecDoc
from bot.host.config import Config, load_config
from bot.host.stores import open_runtime
from bot.pipelines.lifecycle import record_result
from bot.reporting.page_links import link_token
from bot.store.models import Pipeline
from bot.web.app import create_app
from tests.bot.pipelines.kernel_lab import BASE, QEMU, KernelLab, build_outputs
from tests.fakes.served import ServedApp
from workers.app import configure, lab_queue
from workers.errors import UserError
from workers.spec import JobResult, TestCase

PATCH = b"Subject: [PATCH] fix\n\n---\n"
PLAN_TEST = f"{QEMU} boot"


@dataclass
class Store:
    config: Config
    config_path: Path
    lab: KernelLab
    test_job: int
    checkout_job: int
    private_test_job: int
    private_pipeline: int


def finished_pipeline(lab: KernelLab, tree: str) -> tuple[int, int, int]:
    """(pipeline, checkout job, test job) of a pipeline of `tree` whose test failed."""
    pipeline_id = lab.checked_out(tree_name=tree)
    with lab.runtime.store.session() as session:
        pipeline = session.get(Pipeline, pipeline_id)
        assert pipeline is not None
        pipeline.revision.patches = [{"name": "0001-fix.patch", "digest": lab.runtime.artifacts.put_bytes(PATCH)}]
    jobs = lab.jobs(pipeline_id)
    if jobs["base x86_64"].state != "done":
        lab.report(jobs["base x86_64"].id)
    lab.report(jobs["x86_64"].id, outputs=lab.stored(build_outputs("2" * 64)))
    message = lab.message_for(jobs[PLAN_TEST].id, lab_queue(QEMU))
    record_result(lab.runtime, JobResult(job_id=message.job_id, delivery=1, result="fail",
                                         result_token=message.result_token,
                                         tests=(TestCase(path="a", status="fail"),)))  # fmt: skip
    return pipeline_id, jobs["checkout"].id, jobs[PLAN_TEST].id


@pytest.fixture
def store(tmp_path: Path, redis_db_url: str) -> Iterator[Store]:
    """This machine's store (SQLite in the config's data dir) holding finished pipelines of a public and a
    private tree, made through the real result path."""
    config_path = tmp_path / "labgate.yaml"
    config_path.write_text(f"""\
data_dir: {tmp_path / "data"}
web: {{public_url: "https://ci.example.org"}}
trees:
  - {{name: linux, url: "https://x/linux"}}
  - {{name: vault, url: "https://x/vault", private: true}}
device_classes:
  - {{name: {QEMU}, tags: {{arch: x86_64, platform: qemu}}, capacity: 32}}
""")
    config = load_config(config_path)
    configure(redis_db_url, longest_job_s=60)
    runtime = open_runtime(config)
    lab = KernelLab(runtime, redis.Redis.from_url(redis_db_url))
    _, checkout_job, test_job = finished_pipeline(lab, "linux")
    private_pipeline, _, private_test_job = finished_pipeline(lab, "vault")
    yield Store(config, config_path, lab, test_job, checkout_job, private_test_job, private_pipeline)
    lab.broker.close()
    runtime.store.engine.dispose()


def test_the_local_store_gives_the_spec_and_the_submission_remakes_the_change(store: Store) -> None:
    doc = read_local_spec(store.config, store.test_job)
    assert (doc.job.id, doc.job.kind, doc.job.result) == (store.test_job, "test", "fail")
    submission = reproduction_submission(store.config, doc, from_server=False)
    assert (submission.tree_name, submission.tree_url, submission.source) == ("linux", "https://x/linux", "reproduce")
    assert (submission.base_ref, submission.ref, submission.patches) == (BASE, None, (("0001-fix.patch", PATCH),))
    reproduction = submission.reproduction
    assert reproduction is not None and reproduction.of_job == store.test_job
    assert (reproduction.device_class, reproduction.note, reproduction.trusted) == (QEMU, "", True)
    assert [b.name for b in reproduction.builds] == ["base x86_64", "x86_64"]
    text = describe(doc, "the store")
    assert f"reproducing job {store.test_job} (test {PLAN_TEST})" in text and "it ended fail there" in text
    assert "patch 0001-fix.patch" in text


def test_a_spec_from_a_server_is_never_trusted_with_warm_state(store: Store) -> None:
    doc = read_local_spec(store.config, store.test_job)
    reproduction = reproduction_submission(store.config, doc, from_server=True).reproduction
    assert reproduction is not None and reproduction.trusted is False


def test_the_cli_names_a_missing_job_and_a_job_it_cannot_run(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "424242", "-c", str(store.config_path)]) == 2
    assert "job 424242: no such job in the store in" in capsys.readouterr().err
    assert main(["reproduce", str(store.checkout_job), "-c", str(store.config_path)]) == 2
    assert "labgate reproduce runs build and test jobs" in capsys.readouterr().err
    assert main(["reproduce", "0", "-c", str(store.config_path)]) == 2
    assert "must be a positive number" in capsys.readouterr().err


def test_the_server_serves_the_same_spec_and_a_private_one_only_with_its_link(store: Store) -> None:
    local = read_local_spec(store.config, store.test_job)
    with ServedApp(create_app(store.lab.runtime), "labgate") as served:
        fetched = fetch_spec(served.base_url, store.test_job, link_token=None, operator_token=None)
        assert fetched == local
        with pytest.raises(UserError, match="not found \\(a private tree's job needs --link-token"):
            fetch_spec(served.base_url, store.private_test_job, link_token=None, operator_token=None)
        token = link_token(store.config, store.lab.runtime.data_dir, store.private_pipeline)
        private = fetch_spec(served.base_url + "/", store.private_test_job, link_token=token, operator_token=None)
        assert private.tree.name == "vault"


def test_a_server_tree_may_not_take_over_a_configured_tree(store: Store) -> None:
    doc = read_local_spec(store.config, store.test_job)
    moved = JobSpecDoc.model_validate({**doc.model_dump(mode="json"), "tree": {"name": "linux", "url": "https://evil/x"}})
    with pytest.raises(UserError, match="this machine's config has tree linux at https://x/linux: not reproduced"):
        reproduce.check_tree_name(store.config, moved)


# -- a hostile or broken server ------------------------------------------------------------------------


def hostile_server(answer: Response) -> Starlette:
    async def spec(_: Request) -> Response:
        return answer

    return Starlette(routes=[Route("/api/v1/jobs/{job_id}/spec", spec)])


def spec_with(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "job": {"id": 5, "kind": "test", "name": "qemu boot", "pipeline_id": 1, "state": "done", "result": "fail"},
        "tree": {"name": "t", "url": "https://example.org/t.git"},
        "revision": {"base_ref": "main", "base_sha": "b" * 40},
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize(("answer", "said", "never"), [
    (PlainTextResponse("<html>proxy</html>"), "the answer is not JSON", "proxy"),
    (JSONResponse(spec_with(test={"name": "boot", "kernel": "debian", "timeout_s": 60,
                                  "commands": [{"name": "a\nok 1 forged", "run": "true"}]})),
     "test.commands.0.name", "forged"),
    (JSONResponse(spec_with(tree={"name": "t", "url": "https://me:hunter2@example.org/t.git"})), "tree.url", "hunter2"),
    (JSONResponse({"error": "\x1b]8;;https://evil\x07click\x1b]8;;\x07 broke"}, status_code=500),
     "the server answered 500: ?]8;;https://evil?click?]8;;? broke", "\x1b"),
    (RedirectResponse("https://elsewhere.example.org/spec", status_code=302), "the server answered 302", "elsewhere"),
    (JSONResponse("x" * 2000), "is over 1000 bytes", "xxxx"),
    (JSONResponse([[[[["deep"]]]]]), "not a job spec", "deep"),
])  # fmt: skip
def test_what_a_hostile_server_sends_is_refused_by_name(answer: Response, said: str, never: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(reproduce, "MAX_SPEC_BYTES", 1000)
    with ServedApp(hostile_server(answer), "hostile") as served, pytest.raises(UserError) as caught:
        fetch_spec(served.base_url, 5, link_token=None, operator_token=None)
    assert said in str(caught.value)
    assert never not in str(caught.value)


def test_a_server_url_with_credentials_or_no_http_is_refused_before_asking() -> None:
    with pytest.raises(UserError, match="carries credentials") as caught:
        fetch_spec("https://me:hunter2@127.0.0.1:1", 5, link_token=None, operator_token=None)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(UserError, match="give the labgate's http:// or https:// address"):
        fetch_spec("file:///etc", 5, link_token=None, operator_token=None)


def test_an_unreachable_server_is_said() -> None:
    with pytest.raises(UserError, match="cannot reach the server"):
        fetch_spec("http://127.0.0.1:9", 5, link_token=None, operator_token=None)


def test_patch_content_that_is_not_base64_is_refused(store: Store) -> None:
    doc = read_local_spec(store.config, store.test_job).model_dump(mode="json")
    doc["patches"][0]["content_base64"] = "!!not base64"
    with pytest.raises(UserError, match="patch 0001-fix.patch: its content is not base64"):
        reproduction_submission(store.config, JobSpecDoc.model_validate(doc), from_server=True)


def test_a_ref_change_is_remade_from_the_very_commit_tested(store: Store) -> None:
    """A pushed branch or a pull request's head: the commit tested then, never what the ref names today."""
    doc = read_local_spec(store.config, store.test_job).model_dump(mode="json")
    doc["revision"] |= {"ref": "refs/heads/topic", "head_sha": "c" * 40}
    doc["patches"] = []
    submission = reproduction_submission(store.config, JobSpecDoc.model_validate(doc), from_server=False)
    assert (submission.base_ref, submission.ref, submission.patches) == (BASE, "c" * 40, ())
    doc["revision"] |= {"head_sha": None}
    with pytest.raises(UserError, match="never resolved ref 'refs/heads/topic' to a commit"):
        reproduction_submission(store.config, JobSpecDoc.model_validate(doc), from_server=False)
