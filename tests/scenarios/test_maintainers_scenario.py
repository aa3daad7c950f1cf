"""MAINTAINERS at a series' base, the whole way: the poll grades an unsigned series on the allowlist (it waits), the
checkout worker reads MAINTAINERS at the base over the checkout queue, its answer comes back on the results queue,
and the control worker's regrade lets an M: of every touched path run at `mail.unverified_tier` (qemu) to final
checks; someone who is M: only of another path keeps waiting."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
import yaml

from bot.host.bring_up import open_services, start_all_workers
from bot.host.config import load_config
from bot.intake.base_maintainers import request_id
from bot.store.models import Pipeline
from bot.store.once import once_done
from tests.conftest import EXAMPLES, make_git_repo
from tests.fakes.patchwork_api import FakePatchwork
from tests.scenarios.running import git
from tests.scenarios.test_patchwork_scenarios import PIPELINE_CONTEXTS, PROJECT, World

MAINTAINERS = """MATHX LIBRARY
M:\tMaint Ainer <maint@example.org>
F:\tinclude/mathx.h
F:\tsrc/mathx*
F:\tREADME.md

DOCUMENTATION
M:\tDoc Writer <docs@example.org>
F:\tdocs/
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("maintainers")
    plain = root / "hello-src"
    shutil.copytree(EXAMPLES / "hello", plain)
    shutil.move(plain / ".labgate" / "plan.yaml", root / "hello-plan.yaml")
    shutil.rmtree(plain / ".labgate")
    (plain / "MAINTAINERS").write_text(MAINTAINERS)
    origin = make_git_repo(plain, root / "origin")
    with FakePatchwork() as pw:
        pw.add_project(PROJECT)
        pw.add_user("labgate-bot")
        pw.add_maintainer(PROJECT, "labgate-bot")
        (root / "pw-token").write_text(pw.add_token("labgate-bot"))
        tree = {"name": "hello", "url": str(origin), "plan_file": str(root / "hello-plan.yaml"),
                "mail": {"maintainers_file": "MAINTAINERS", "unverified_tier": "qemu"}}  # fmt: skip
        patchwork = {"url": pw.base_url, "token_file": str(root / "pw-token"),
                     "projects": [{"project": PROJECT, "tree": "hello"}]}  # fmt: skip
        config = {"data_dir": str(root / "data"), "patchwork": patchwork, "trees": [tree]}
        (root / "labgate.yaml").write_text(yaml.safe_dump(config))
        services = open_services(load_config(root / "labgate.yaml"), root / "labgate.yaml")
        try:
            start_all_workers(services)
            yield World(pw, services, root / "labgate.yaml", git(origin, "rev-parse", "HEAD"), None, origin)  # type: ignore[arg-type]
        finally:
            services.stop()


def answered(world: World, series_id: int) -> bool:
    with world.services.runtime.store.session() as session:
        return once_done(session, f"maintainers-answer:{request_id(world.pw.base_url, series_id)}") is not None


def test_an_unsigned_maintainer_of_the_touched_paths_runs_at_qemu_once_maintainers_is_read(world: World) -> None:
    series_id = world.send(world.series(1, sender="Maint Ainer <maint@example.org>"))
    world.poll()
    # Graded on the allowlist (empty) first: it waits, and says so, while the checkout worker reads MAINTAINERS.
    world.wait(lambda: any(c["context"] == "labgate" for p in world.pw.series_patches(series_id)
                           for c in world.pw.checks(p)), "the first word on the series")  # fmt: skip
    world.wait(lambda: len(world.pipelines()) == 1, "the regrade to start the series")
    with world.services.runtime.store.session() as session:
        (pipeline,) = session.query(Pipeline).all()
        assert pipeline.tier == "qemu" and pipeline.revision.change.approvals == []
    shown = world.wait_final(series_id)
    for patch_id, checks in shown.items():
        assert {checks[c]["state"] for c in PIPELINE_CONTEXTS} == {"success"}, patch_id
        assert checks["labgate"]["state"] == "success" and "MAINTAINERS at the base" in checks["labgate"]["description"]


def test_a_maintainer_of_another_path_keeps_waiting(world: World) -> None:
    before = world.pipelines()
    series_id = world.send(world.series(1, sender="Doc Writer <docs@example.org>", change_id="20260302-docs-1"))
    world.poll()
    world.wait(lambda: any(c["context"] == "labgate" for p in world.pw.series_patches(series_id)
                           for c in world.pw.checks(p)), "the first word on the series")  # fmt: skip
    world.wait(lambda: answered(world, series_id), "MAINTAINERS' answer")
    time.sleep(2)  # the regrade it queued has run by now, were it to start anything
    for patch_id in world.pw.series_patches(series_id):
        assert world.latest(patch_id)["labgate"]["state"] == "pending"
    assert world.pipelines() == before
